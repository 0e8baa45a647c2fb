-- mailsvc outbox on SQLite, version 1 (the schema SQLite outboxes have carried as user_version 1).
-- messages is the queue; due_at is "when a worker may take it" (the next attempt while queued/deferred,
-- the lease expiry while sending, NULL once final), so one partial index serves every claim and a dead
-- worker's lease simply comes due again. Recipients hang off messages.pk (WITHOUT ROWID, one B-tree).
CREATE TABLE IF NOT EXISTS messages (
    pk           INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    message_id   TEXT    NOT NULL,
    batch_id     TEXT,
    state        TEXT    NOT NULL DEFAULT 'queued',
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL,
    due_at       REAL,
    lease_owner  TEXT,
    sender       TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    mail_options TEXT    NOT NULL DEFAULT '[]',
    rcpt_options TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (due_at) WHERE due_at IS NOT NULL;
-- Counts per state of a batch (GET /api/batches/<id>, polled while it is sent) from the index alone.
CREATE INDEX IF NOT EXISTS messages_batch_state ON messages (batch_id, state) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipients (
    msg             INTEGER NOT NULL REFERENCES messages (pk) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    address         TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'queued',
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_code       INTEGER,
    last_reply      TEXT    NOT NULL DEFAULT '',
    updated_at      REAL    NOT NULL,
    next_attempt_at REAL,
    PRIMARY KEY (msg, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    ids         TEXT NOT NULL,
    batch_id    TEXT,
    created_at  REAL NOT NULL
);
