-- mailsvc outbox on PostgreSQL, version 2: tenants (issue 13).
-- Each message carries the tenant that created it; status lookups by a tenant see only its own.
-- Rows written before tenants keep NULL: created before any tenant existed, visible to admin keys only.
-- (A nullable column without a default is added without rewriting the table.)
ALTER TABLE mailsvc_message ADD COLUMN tenant text;

-- Signed-out form sessions: a cookie saved before sign-out carries one of these ids and is refused on
-- every node. A row is kept until every cookie of that session has expired anyway, then deleted.
CREATE TABLE mailsvc_revoked_session (
    sid        text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX mailsvc_revoked_session_expiry ON mailsvc_revoked_session (expires_at);
