-- The append functions no longer NOTIFY: the service sends the wake-up itself, after
-- the append's commit and outside its transaction (service/store/postgres.py, Notifier).
--
-- Why: a transaction that NOTIFYs takes a lock at commit that every other notifying
-- transaction waits for, and holds it until its commit is flushed (so that
-- notifications queue in commit order). With a NOTIFY in every append, appends
-- committed one at a time and group commit never formed: 16 writers of one-row
-- transactions made 4,400-4,700 commits/s with a NOTIFY in each, 10,100-15,500
-- without, and under load the appends' most frequent wait was that lock ("Lock:
-- object" in pg_stat_activity). Readers LISTEN as before and poll as well, so a
-- wake-up that never comes costs a poll interval, never an event.
--
-- Same bodies as 0001 (append_to_stream) and 0037 (append_new_streams) without the
-- NOTIFY; CREATE OR REPLACE resets a function's settings, so those of 0033 and 0038
-- are set again (its owner and grants stay).

CREATE OR REPLACE FUNCTION append_to_stream(
    p_stream_id text, p_expected_version integer, p_event_ids uuid[],
    p_event_types text[], p_schema_versions smallint[], p_data jsonb[], p_metadata jsonb[]
) RETURNS TABLE (first_position bigint, last_position bigint, stream_version integer,
                 duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_count    integer := cardinality(p_event_ids);
    v_version  integer;
    v_prev     bytea;
    v_now      timestamptz := now();
    v_hashes   bytea[] := '{}';
    v_prevs    bytea[] := '{}';
    i          integer;
BEGIN
    IF v_count IS NULL OR v_count = 0 THEN
        RAISE EXCEPTION 'append_to_stream: no events' USING ERRCODE = 'FL400';
    END IF;

    -- Idempotent retry: the first event id is already stored.
    RETURN QUERY SELECT * FROM append_to_stream_original(p_stream_id, p_event_ids);
    IF FOUND THEN RETURN; END IF;

    -- Take the stream's row lock: appends to one stream are serialised here, and
    -- every check below sees the committed state of the winner.
    SELECT s.version, s.last_hash INTO v_version, v_prev
        FROM streams s WHERE s.stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_expected_version > 0 THEN
            RAISE EXCEPTION 'wrong expected version for %: expected %, stream does not exist',
                p_stream_id, p_expected_version
                USING ERRCODE = 'FL409', DETAIL = 'actual=none';
        END IF;
        INSERT INTO streams (stream_id, category, version, last_hash)
            VALUES (p_stream_id, split_part(p_stream_id, '-', 1), 0,
                    stream_genesis_hash(p_stream_id))
            ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING;
        IF NOT FOUND THEN
            -- A concurrent append created the stream first; it may be our own retry.
            RETURN QUERY SELECT * FROM append_to_stream_original(p_stream_id, p_event_ids);
            IF FOUND THEN RETURN; END IF;
            IF p_expected_version = 0 THEN
                RAISE EXCEPTION 'wrong expected version for %: expected no stream, it exists',
                    p_stream_id USING ERRCODE = 'FL409', DETAIL = 'actual=exists';
            END IF;
            SELECT s.version, s.last_hash INTO v_version, v_prev
                FROM streams s WHERE s.stream_id = p_stream_id FOR UPDATE;
        ELSE
            v_version := 0;
            v_prev := stream_genesis_hash(p_stream_id);
        END IF;
    ELSE
        -- We may have waited for the lock behind our own earlier attempt.
        RETURN QUERY SELECT * FROM append_to_stream_original(p_stream_id, p_event_ids);
        IF FOUND THEN RETURN; END IF;
        IF p_expected_version = 0 OR (p_expected_version > 0 AND v_version <> p_expected_version) THEN
            RAISE EXCEPTION 'wrong expected version for %: expected %, actual %',
                p_stream_id,
                CASE WHEN p_expected_version = 0 THEN 'no stream' ELSE p_expected_version::text END,
                v_version
                USING ERRCODE = 'FL409', DETAIL = 'actual=' || v_version;
        END IF;
    END IF;

    FOR i IN 1 .. v_count LOOP
        v_prevs := v_prevs || v_prev;
        v_prev := sha256(v_prev || event_canonical_bytes(
            p_event_ids[i], p_event_types[i], p_schema_versions[i], v_now,
            p_data[i], p_metadata[i]));
        v_hashes := v_hashes || v_prev;
    END LOOP;

    INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                        data, metadata, recorded_at, prev_hash, hash)
        SELECT p_stream_id, v_version + n, p_event_ids[n], p_event_types[n],
               p_schema_versions[n], p_data[n], p_metadata[n], v_now, v_prevs[n], v_hashes[n]
        FROM generate_series(1, v_count) AS n;

    UPDATE streams SET version = v_version + v_count, last_hash = v_prev
        WHERE streams.stream_id = p_stream_id;

    RETURN QUERY
        SELECT min(e.global_position), max(e.global_position), v_version + v_count, false
        FROM events e WHERE e.stream_id = p_stream_id AND e.stream_version > v_version;
END $$;

CREATE OR REPLACE FUNCTION append_new_streams(
    p_stream_ids text[], p_event_ids uuid[], p_event_types text[],
    p_schema_versions smallint[], p_data jsonb[], p_metadata jsonb[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now       timestamptz := now();
    v_count     integer := cardinality(p_event_ids);
    v_canonical bytea[];
    v_versions  integer[];
    v_prevs     bytea[];
    v_hashes    bytea[];
    v_heads     integer[] := '{}';  -- the index of each stream's last event
    v_prev      bytea;
    v_version   integer;
    v_created   integer;
    v_created_ids text[];
    v_existing  text;
    i           integer;
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

    SELECT array_agg(event_canonical_bytes(u.event_id, u.event_type, u.schema_version, v_now,
                                           u.data, u.metadata) ORDER BY u.ord)
        INTO v_canonical
        FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_data, p_metadata)
             WITH ORDINALITY AS u(event_id, event_type, schema_version, data, metadata, ord);

    v_versions := array_fill(0, ARRAY[v_count]);
    v_prevs := array_fill(NULL::bytea, ARRAY[v_count]);
    v_hashes := array_fill(NULL::bytea, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        IF i = 1 OR p_stream_ids[i] <> p_stream_ids[i - 1] THEN
            IF i > 1 THEN
                v_heads := v_heads || (i - 1);
            END IF;
            v_prev := stream_genesis_hash(p_stream_ids[i]);
            v_version := 0;
        END IF;
        v_version := v_version + 1;
        v_versions[i] := v_version;
        v_prevs[i] := v_prev;
        v_prev := sha256(v_prev || v_canonical[i]);
        v_hashes[i] := v_prev;
    END LOOP;
    v_heads := v_heads || v_count;

    IF cardinality(v_heads) <> (SELECT count(DISTINCT s) FROM unnest(p_stream_ids) AS s) THEN
        RAISE EXCEPTION 'append_new_streams: a stream''s events must be adjacent'
            USING ERRCODE = 'FL400';
    END IF;

    -- The expected-version check: a stream that exists, or that a concurrent writer is
    -- creating (this waits for it), is not inserted here. In stream id order, so that
    -- two bulk writers take these rows' locks in the same order and cannot deadlock.
    WITH created AS (
        INSERT INTO streams (stream_id, category, version, last_hash)
        SELECT p_stream_ids[h], split_part(p_stream_ids[h], '-', 1), v_versions[h], v_hashes[h]
        FROM unnest(v_heads) AS h
        ORDER BY p_stream_ids[h]
        ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING
        RETURNING stream_id
    )
    SELECT coalesce(array_agg(stream_id), '{}') INTO v_created_ids FROM created;
    v_created := cardinality(v_created_ids);

    IF v_created <> cardinality(v_heads) THEN
        -- Raising rolls back the whole call, the streams created above included.
        SELECT min(p_stream_ids[h]) INTO v_existing
            FROM unnest(v_heads) AS h WHERE p_stream_ids[h] <> ALL (v_created_ids);
        RAISE EXCEPTION 'wrong expected version for %: expected no stream, it exists '
                        '(% of % streams exist already)',
            v_existing, cardinality(v_heads) - v_created, cardinality(v_heads)
            USING ERRCODE = 'FL409', DETAIL = 'stream=' || v_existing;
    END IF;

    INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                        data, metadata, recorded_at, prev_hash, hash)
    SELECT u.stream_id, u.version, u.event_id, u.event_type, u.schema_version, u.data,
           u.metadata, v_now, u.prev_hash, u.hash
    FROM unnest(p_stream_ids, v_versions, p_event_ids, p_event_types, p_schema_versions,
                p_data, p_metadata, v_prevs, v_hashes)
         WITH ORDINALITY AS u(stream_id, version, event_id, event_type, schema_version, data,
                              metadata, prev_hash, hash, ord)
    ORDER BY u.ord;

    RETURN v_created;
END $$;

DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[],'
        ' jsonb[]) SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
    EXECUTE format(
        'ALTER FUNCTION append_new_streams(text[], uuid[], text[], smallint[], jsonb[], jsonb[])'
        ' SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END $$;
ALTER FUNCTION append_to_stream(text, integer, uuid[], text[], smallint[], jsonb[], jsonb[])
    SET plan_cache_mode = force_generic_plan;
