-- mailsvc outbox on SQLite, version 11: a message's bytes in a table of their own (issue 18).
-- SQLite writes a whole row on every UPDATE, and a messages row was mostly its content (2 KB and up): each
-- activation, claim and record rewrote it, a page per message per commit, for a few changed columns. The
-- content is written once and read once, at the claim; the row the workers update is now ~250 bytes.
-- ON DELETE CASCADE: a message deleted (a discarded stage) takes its content with it.
CREATE TABLE IF NOT EXISTS contents (
    msg  INTEGER PRIMARY KEY REFERENCES messages (pk) ON DELETE CASCADE,
    data BLOB    NOT NULL
);
INSERT INTO contents (msg, data) SELECT pk, data FROM messages;
ALTER TABLE messages DROP COLUMN data;
-- What enqueue inserts into: the row and its bytes in one statement (one trip to the database thread, as before,
-- not two; a second INSERT per group commit cost ~10 % of single enqueues a second).
CREATE VIEW IF NOT EXISTS new_messages AS
SELECT m.pk, m.id, m.message_id, m.batch_id, m.tenant, m.created_at, m.updated_at, m.due_at, m.sender, c.data,
       m.mail_options, m.rcpt_options, m.state, m.send_at, m.tags, m.metadata, m.stream, m.traceparent,
       m.relay_route, m.stage
FROM messages AS m JOIN contents AS c ON c.msg = m.pk;
CREATE TRIGGER IF NOT EXISTS new_messages_insert INSTEAD OF INSERT ON new_messages
BEGIN
    INSERT INTO messages (pk, id, message_id, batch_id, tenant, created_at, updated_at, due_at, sender,
                          mail_options, rcpt_options, state, send_at, tags, metadata, stream, traceparent,
                          relay_route, stage)
    VALUES (new.pk, new.id, new.message_id, new.batch_id, new.tenant, new.created_at, new.updated_at, new.due_at,
            new.sender, new.mail_options, new.rcpt_options, new.state, new.send_at, new.tags, new.metadata,
            new.stream, new.traceparent, new.relay_route, new.stage);
    INSERT INTO contents (msg, data) VALUES (new.pk, new.data);
END;
