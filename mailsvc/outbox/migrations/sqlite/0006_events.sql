-- mailsvc outbox on SQLite, version 6: delivery events and webhook deliveries (issue 16).
-- One event per recipient state change, written by the triggers below inside the transaction that makes the
-- change: an event commits with its change or not at all (never lost, never invented), whichever code path
-- changed the state. seq is the read cursor: SQLite has one writer at a time, so seq grows in commit order.
-- msg/address/message are copied, not joined, so an event outlives its message's retention. ``at`` is the clock
-- when the change is written (a claim's UPDATE does not touch updated_at).
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    message  TEXT,                -- messages.id; NULL for an address-level event (an unsubscribe)
    msg      INTEGER,             -- messages.pk, to read the message's tags and metadata while it exists
    tenant   TEXT,
    address  TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    code     INTEGER,
    reply    TEXT    NOT NULL DEFAULT '',
    attempt  INTEGER NOT NULL DEFAULT 0,
    at       REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, seq);
CREATE INDEX IF NOT EXISTS events_message ON events (message, seq);
CREATE TRIGGER IF NOT EXISTS recipients_event_insert AFTER INSERT ON recipients
BEGIN
    INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)
    SELECT m.id, m.pk, m.tenant, new.address, new.state, new.last_code, new.last_reply, new.attempts,
           (julianday('now') - 2440587.5) * 86400.0
    FROM messages AS m WHERE m.pk = new.msg;
END;
CREATE TRIGGER IF NOT EXISTS recipients_event_update AFTER UPDATE OF state ON recipients
WHEN new.state IS NOT old.state
BEGIN
    INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)
    SELECT m.id, m.pk, m.tenant, new.address, new.state, new.last_code, new.last_reply, new.attempts,
           (julianday('now') - 2440587.5) * 86400.0
    FROM messages AS m WHERE m.pk = new.msg;
END;
-- A one-click unsubscribe is an event of its address (no message): its own type, from the suppression row.
CREATE TRIGGER IF NOT EXISTS suppressions_event_unsubscribe AFTER INSERT ON suppressions
WHEN new.reason = 'unsubscribe'
BEGIN
    INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)
    VALUES (NULL, NULL, new.tenant, new.address, 'unsubscribed', NULL, new.stream, 0, new.created_at);
END;

-- Webhooks: each endpoint (named in MAILSVC_WEBHOOKS) reads the events after its cursor and fans them out
-- into deliveries, in one transaction with the cursor's move, so none is skipped or doubled.
CREATE TABLE IF NOT EXISTS webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    cursor   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,   -- the event
    message     TEXT    NOT NULL,   -- ordering key: a message's events go out one after the other
    status      TEXT    NOT NULL DEFAULT 'pending',  -- pending | delivered | failing | failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    due_at      REAL,               -- next attempt (or lease expiry while being sent); NULL once final
    last_error  TEXT    NOT NULL DEFAULT '',
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    UNIQUE (endpoint, seq)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_open ON webhook_deliveries (endpoint, message, id) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhook_deliveries_status ON webhook_deliveries (status, id);
