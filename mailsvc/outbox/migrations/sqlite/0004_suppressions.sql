-- mailsvc outbox on SQLite, version 4: the suppression list (issue 15, one-click unsubscribe).
-- An address a tenant must not mail again on a stream (a bulk request's "stream", "default" unless named):
-- why (reason: 'unsubscribe' here; bounces and the API add others), what recorded it (source), and when.
-- The tenant is '' for an open service's requests (no tenant); addresses are stored lower-cased.
-- A bulk enqueue marks its recipients found here 'suppressed' (a final state: never sent).
CREATE TABLE IF NOT EXISTS suppressions (
    tenant     TEXT NOT NULL,
    address    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant, stream, address)
) WITHOUT ROWID;
