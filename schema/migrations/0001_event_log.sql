-- The event log: one append-only table, a bookkeeping row per stream, and the
-- function that appends. Read this file top to bottom; it is the whole write path.

CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Commit-order key for readers: sequence values are taken before commit, so
    -- "position > N" can skip a late committer; (transaction_id, global_position)
    -- filtered by the snapshot xmin cannot (see read_all in service/store/postgres.py).
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text        NOT NULL,
    stream_version  integer     NOT NULL CHECK (stream_version >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  smallint    NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL,
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_commit_order ON events (transaction_id, global_position);
CREATE INDEX events_type ON events (event_type);

CREATE TABLE streams (
    stream_id   text        PRIMARY KEY,
    category    text        NOT NULL,
    version     integer     NOT NULL,
    last_hash   bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Immutability: the log rejects every change. ENABLE ALWAYS keeps the triggers on
-- under session_replication_role = replica; only an explicit DISABLE TRIGGER (a
-- superuser act that verify and digests exist to catch) turns them off.
CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % is not allowed', TG_OP
        USING ERRCODE = 'FL403';
END $$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_update_delete;
ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Canonical bytes of an event, defined once. The JSON parts are Postgres's jsonb
-- text form (keys de-duplicated and ordered, one spacing, numbers as stored), which
-- is what a verifier reads back; bytes made by the client before storage could not
-- be reproduced, because jsonb rewrites numbers (1e16 becomes 10000000000000000).
-- NUL separators are unambiguous: jsonb text and event types cannot contain NUL.
-- stream_id is bound by the genesis hash, stream_version by the chain position.
CREATE FUNCTION event_canonical_bytes(
    p_event_id uuid, p_event_type text, p_schema_version smallint,
    p_recorded_at timestamptz, p_data jsonb, p_metadata jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT uuid_send(p_event_id)
        || convert_to(p_event_type, 'UTF8') || '\x00'::bytea
        || int2send(p_schema_version)
        || int8send((extract(epoch FROM p_recorded_at) * 1000000)::bigint)
        || convert_to(p_data::text, 'UTF8') || '\x00'::bytea
        || convert_to(p_metadata::text, 'UTF8')
$$;

CREATE FUNCTION stream_genesis_hash(p_stream_id text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to('fusion-ledger/stream/' || p_stream_id, 'UTF8'))
$$;

-- Append events to one stream in one statement (one round trip, one transaction).
-- p_expected_version: -1 = any, 0 = the stream must not exist, n = the stream must be
-- at exactly version n. A mismatch raises FL409 and writes nothing (no sequence value
-- is taken either: the check runs before the insert). Re-sending the same event ids
-- returns the original result and writes nothing.
CREATE FUNCTION append_to_stream(
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

    PERFORM pg_notify('fusion_ledger_events', p_stream_id);

    RETURN QUERY
        SELECT min(e.global_position), max(e.global_position), v_version + v_count, false
        FROM events e WHERE e.stream_id = p_stream_id AND e.stream_version > v_version;
END $$;

-- The result an earlier append of these event ids returned, or no row.
CREATE FUNCTION append_to_stream_original(p_stream_id text, p_event_ids uuid[])
RETURNS TABLE (first_position bigint, last_position bigint, stream_version integer,
               duplicate boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_found integer;
    v_other text;
BEGIN
    SELECT e.stream_id INTO v_other FROM events e WHERE e.event_id = p_event_ids[1];
    IF NOT FOUND THEN RETURN; END IF;
    SELECT count(*) INTO v_found FROM events e
        WHERE e.event_id = ANY (p_event_ids) AND e.stream_id = p_stream_id;
    IF v_other <> p_stream_id OR v_found <> cardinality(p_event_ids) THEN
        RAISE EXCEPTION 'event ids already used by a different append (stream %)', v_other
            USING ERRCODE = 'FL422';
    END IF;
    RETURN QUERY
        SELECT min(e.global_position), max(e.global_position), max(e.stream_version), true
        FROM events e WHERE e.event_id = ANY (p_event_ids);
END $$;
