-- Append many NEW streams in one statement: the batch path of the log, for writers
-- that create thousands of short streams (batch replays). Same rules as
-- append_to_stream with expected version "no stream": every stream must not exist
-- (else FL409 and nothing is written), the same canonical bytes and hash chains
-- (event_canonical_bytes, stream_genesis_hash: defined once, in 0001), one
-- recorded_at per call, a NOTIFY for readers. Per-stream appends pay a function call,
-- about eight statements and a commit per stream; this pays them once per call.
--
-- p_stream_ids names the stream of each event; a stream's events must be given in
-- order (their order in the arrays is their version order). Unlike append_to_stream,
-- re-sending a call is not a no-op: its streams exist, so it raises FL409. Callers
-- whose stream ids are deterministic read that as "already written".
CREATE FUNCTION append_new_streams(
    p_stream_ids text[], p_event_ids uuid[], p_event_types text[],
    p_schema_versions smallint[], p_data jsonb[], p_metadata jsonb[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    v_count    integer := cardinality(p_event_ids);
    v_wanted   integer;
    v_created  integer;
    v_existing text;
BEGIN
    IF v_count IS NULL OR v_count = 0 THEN
        RAISE EXCEPTION 'append_new_streams: no events' USING ERRCODE = 'FL400';
    END IF;
    IF cardinality(p_stream_ids) <> v_count OR cardinality(p_event_types) <> v_count
       OR cardinality(p_schema_versions) <> v_count OR cardinality(p_data) <> v_count
       OR cardinality(p_metadata) <> v_count THEN
        RAISE EXCEPTION 'append_new_streams: arrays of different lengths'
            USING ERRCODE = 'FL400';
    END IF;

    -- Version n of every stream is chained in the n-th step of the recursion.
    WITH RECURSIVE input AS MATERIALIZED (
        SELECT u.stream_id, u.event_id, u.event_type, u.schema_version, u.data, u.metadata,
               u.ord,
               row_number() OVER (PARTITION BY u.stream_id ORDER BY u.ord)::integer AS version,
               event_canonical_bytes(u.event_id, u.event_type, u.schema_version, v_now,
                                     u.data, u.metadata) AS canonical
        FROM unnest(p_stream_ids, p_event_ids, p_event_types, p_schema_versions, p_data,
                    p_metadata)
             WITH ORDINALITY AS u(stream_id, event_id, event_type, schema_version, data,
                                  metadata, ord)
    ), chain AS (
        SELECT i.ord, i.version, i.stream_id, g.genesis AS prev_hash,
               sha256(g.genesis || i.canonical) AS hash
        FROM input i, LATERAL (SELECT stream_genesis_hash(i.stream_id) AS genesis) AS g
        WHERE i.version = 1
        UNION ALL
        SELECT i.ord, i.version, i.stream_id, c.hash, sha256(c.hash || i.canonical)
        FROM chain c JOIN input i ON i.stream_id = c.stream_id AND i.version = c.version + 1
    ), heads AS (
        SELECT DISTINCT ON (stream_id) stream_id, version, hash
        FROM chain ORDER BY stream_id, version DESC
    ), created AS (
        -- The expected-version check: a stream that exists, or that a concurrent writer
        -- is creating (this waits for it), gets no row here, and below no events. In
        -- stream id order, so that two bulk writers take these rows' locks in the same
        -- order and cannot deadlock.
        INSERT INTO streams (stream_id, category, version, last_hash)
        SELECT stream_id, split_part(stream_id, '-', 1), version, hash
        FROM heads ORDER BY stream_id
        ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING
        RETURNING stream_id
    ), written AS (
        INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                            data, metadata, recorded_at, prev_hash, hash)
        SELECT i.stream_id, i.version, i.event_id, i.event_type, i.schema_version, i.data,
               i.metadata, v_now, c.prev_hash, c.hash
        FROM chain c JOIN input i ON i.ord = c.ord
        WHERE i.stream_id IN (SELECT stream_id FROM created)
        ORDER BY i.ord
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM heads), (SELECT count(*) FROM created),
           (SELECT min(stream_id) FROM heads
            WHERE stream_id NOT IN (SELECT stream_id FROM created))
        INTO v_wanted, v_created, v_existing;

    IF v_created <> v_wanted THEN
        -- Raising rolls back the whole call: the streams created above and their events.
        RAISE EXCEPTION 'wrong expected version for %: expected no stream, it exists '
                        '(% of % streams exist already)',
            v_existing, v_wanted - v_created, v_wanted
            USING ERRCODE = 'FL409', DETAIL = 'stream=' || v_existing;
    END IF;

    PERFORM pg_notify('fusion_ledger_events', p_stream_ids[1]);
    RETURN v_created;
END $$;

-- Functions are executable by PUBLIC by default; say so explicitly for the service's
-- role, where it exists (0002 / 0011), so a hardened database that revokes PUBLIC
-- EXECUTE still lets batch replays write.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT EXECUTE ON FUNCTION append_new_streams(text[], uuid[], text[], smallint[],
                                                     jsonb[], jsonb[]) TO fusion_ledger_app;
    END IF;
END $$;
