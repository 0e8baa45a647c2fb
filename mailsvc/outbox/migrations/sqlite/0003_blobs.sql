-- mailsvc outbox on SQLite, version 3: bulk attachments stored once per batch (issue 13).
-- A blob is bytes many messages of a batch contain verbatim (an attachment's base64 body), stored once
-- under its sha256 (hex). Such a message's data is stored without them; each of its splices puts one back
-- at the offset recorded when its own bytes were cut (never by searching at delivery). A message's
-- splices go when it is final, and a blob when no splice names it. Rows written before have no splices:
-- their data is whole, and nothing needs a value.
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    data   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS splices (
    msg      INTEGER NOT NULL REFERENCES messages (pk) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    digest   TEXT    NOT NULL REFERENCES blobs (digest),
    PRIMARY KEY (msg, position)
) WITHOUT ROWID;
-- "Does any message still need this blob?" from the index alone.
CREATE INDEX IF NOT EXISTS splices_digest ON splices (digest);
