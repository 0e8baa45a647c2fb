-- mailsvc outbox on SQLite, version 2: tenants (issue 13).
-- Each message carries the tenant that created it; status lookups by a tenant see only its own.
-- Rows written before tenants keep NULL: created before any tenant existed, visible to admin keys only.
ALTER TABLE messages ADD COLUMN tenant TEXT;
-- Signed-out form sessions: a cookie saved before sign-out carries one of these ids and is refused.
-- A row is kept until every cookie of that session has expired anyway (expires_at), then deleted.
CREATE TABLE IF NOT EXISTS revoked_sessions (
    sid        TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_sessions_expiry ON revoked_sessions (expires_at);
