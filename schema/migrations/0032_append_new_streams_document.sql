-- The bulk append of new streams (0020) takes its events as ONE jsonb document instead
-- of six parallel arrays: an array of [stream_id, event_id, event_type,
-- schema_version, data, metadata] rows, in order. Measured on a batch replay's
-- writes (10,000 streams of 3 events, in calls of 64 streams): the client encodes one
-- document in a single call instead of two JSON texts per event plus six arrays
-- (0.26 s -> 0.05 s of client CPU), and Postgres parses one jsonb value instead of six
-- arrays of 192 elements each, 384 of them jsonb (the calls' round trips 0.47 s ->
-- 0.21 s). The rules, the canonical bytes and the hash chains are 0020's, unchanged: a
-- row's data and metadata are jsonb values either way, and jsonb's text form does not
-- depend on how a value arrived.
--
-- 0020's six-array overload stays, so that processes of the previous release keep
-- writing during a rolling deploy; a later migration drops it.

CREATE FUNCTION append_new_streams(p_events jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    v_wanted   integer;
    v_created  integer;
    v_existing text;
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' OR jsonb_array_length(p_events) = 0 THEN
        RAISE EXCEPTION 'append_new_streams: no events' USING ERRCODE = 'FL400';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_events) AS r(item)
               WHERE jsonb_typeof(r.item) IS DISTINCT FROM 'array'
                  OR jsonb_array_length(r.item) <> 6) THEN
        RAISE EXCEPTION 'append_new_streams: every row is [stream_id, event_id, '
                        'event_type, schema_version, data, metadata]'
            USING ERRCODE = 'FL400';
    END IF;

    -- Version n of every stream is chained in the n-th step of the recursion.
    WITH RECURSIVE rows AS (
        SELECT r.item->>0 AS stream_id, (r.item->>1)::uuid AS event_id,
               r.item->>2 AS event_type, (r.item->>3)::smallint AS schema_version,
               r.item->4 AS data, r.item->5 AS metadata, r.ord
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS r(item, ord)
    ), input AS MATERIALIZED (
        SELECT u.*,
               row_number() OVER (PARTITION BY u.stream_id ORDER BY u.ord)::integer AS version,
               event_canonical_bytes(u.event_id, u.event_type, u.schema_version, v_now,
                                     u.data, u.metadata) AS canonical
        FROM rows u
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

    PERFORM pg_notify('fusion_ledger_events', p_events->0->>0);
    RETURN v_created;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT EXECUTE ON FUNCTION append_new_streams(jsonb) TO fusion_ledger_app;
    END IF;
END $$;
