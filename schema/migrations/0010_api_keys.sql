-- API keys: only a hash of the secret is stored. A key belongs to one tenant and
-- carries scopes (fuse, read, label, admin). Revocation sets revoked_at; rows are
-- never deleted, so who could do what stays auditable.
CREATE TABLE api_keys (
    key_id          text        PRIMARY KEY,
    tenant          text        NOT NULL,
    name            text        NOT NULL DEFAULT '',
    scopes          text[]      NOT NULL,
    secret_sha256   bytea       NOT NULL,
    rate_per_minute integer     NOT NULL DEFAULT 600 CHECK (rate_per_minute > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CHECK (scopes <@ ARRAY['fuse', 'read', 'label', 'admin']::text[])
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fusion_ledger_app') THEN
        GRANT SELECT ON api_keys TO fusion_ledger_app;
    END IF;
END $$;
