-- mailsvc outbox on SQLite, version 10: a big bulk stored in steps (issue 18).
-- SQLite has one writer: a 100,000-message batch stored in one transaction held the write lock for its whole
-- store, and every single POST and lease renewal waited. Such a batch is now written a step (a chunk) per
-- transaction into a stage, and made visible by one small transaction at the end (sealed = 1).
-- A staged message carries its stage and no due time: no claim, listing, status or event sees it until the
-- seal, and a stage never sealed (the request failed, the process died) is deleted by the sweep, a step at a
-- time. After the seal, its messages are activated a step at a time (due time set, stage cleared, their
-- 'queued' events written); until then they count as pending through waiting. AUTOINCREMENT: a stage's id is
-- never reused, so rows left by a deleted stage can never be taken for a newer stage's.
CREATE TABLE IF NOT EXISTS stages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id   TEXT    NOT NULL,
    sealed     INTEGER NOT NULL DEFAULT 0,
    waiting    INTEGER NOT NULL DEFAULT 0,  -- once sealed: its messages not activated yet
    touched_at REAL    NOT NULL             -- the owner's last step: an unsealed stage untouched for long is dead
);
ALTER TABLE messages ADD COLUMN stage INTEGER;
CREATE INDEX IF NOT EXISTS messages_stage ON messages (stage, pk) WHERE stage IS NOT NULL;
-- The event triggers of version 6, now silent for staged messages (activation writes their events).
DROP TRIGGER IF EXISTS recipients_event_insert;
CREATE TRIGGER recipients_event_insert AFTER INSERT ON recipients
BEGIN
    INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)
    SELECT m.id, m.pk, m.tenant, new.address, new.state, new.last_code, new.last_reply, new.attempts,
           (julianday('now') - 2440587.5) * 86400.0
    FROM messages AS m WHERE m.pk = new.msg AND m.stage IS NULL;
END;
DROP TRIGGER IF EXISTS recipients_event_update;
CREATE TRIGGER recipients_event_update AFTER UPDATE OF state ON recipients
WHEN new.state IS NOT old.state
BEGIN
    INSERT INTO events (message, msg, tenant, address, type, code, reply, attempt, at)
    SELECT m.id, m.pk, m.tenant, new.address, new.state, new.last_code, new.last_reply, new.attempts,
           (julianday('now') - 2440587.5) * 86400.0
    FROM messages AS m WHERE m.pk = new.msg AND m.stage IS NULL;
END;
