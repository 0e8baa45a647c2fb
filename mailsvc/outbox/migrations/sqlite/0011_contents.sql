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
