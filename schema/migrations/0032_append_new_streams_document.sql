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
-- The document is the wire format only: this unpacks it into 0020's six arrays, so the
-- rules live in one place (0020), and processes of the previous release, which call
-- the six-array form, keep writing during a rolling deploy.
CREATE FUNCTION append_new_streams(p_events jsonb) RETURNS integer
LANGUAGE sql AS $$
    SELECT append_new_streams(
        array_agg(r.item->>0 ORDER BY r.ord), array_agg((r.item->>1)::uuid ORDER BY r.ord),
        array_agg(r.item->>2 ORDER BY r.ord), array_agg((r.item->>3)::smallint ORDER BY r.ord),
        array_agg(r.item->4 ORDER BY r.ord), array_agg(r.item->5 ORDER BY r.ord))
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS r(item, ord)
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT EXECUTE ON FUNCTION append_new_streams(jsonb) TO fusion_ledger_app;
    END IF;
END $$;
