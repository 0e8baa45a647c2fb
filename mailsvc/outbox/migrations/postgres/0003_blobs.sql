-- mailsvc outbox on PostgreSQL, version 3: bulk attachments stored once per batch (issue 13).
-- A blob is bytes many messages of a batch contain verbatim (an attachment's base64 body), stored once
-- under its sha256 (hex). Such a message's body is stored without them; each of its splices puts one back
-- at the offset recorded when its own bytes were cut (never by searching at delivery). A message's
-- splices go when it is final, and a blob when no splice names it. Rows written before have no splices:
-- their data is whole, and nothing needs a value. (Two new tables: nothing existing is rewritten.)
CREATE TABLE mailsvc_blob (
    digest text  PRIMARY KEY,
    data   bytea NOT NULL
);

CREATE TABLE mailsvc_splice (
    message_pk text    NOT NULL REFERENCES mailsvc_message (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    at         bigint  NOT NULL,
    digest     text    NOT NULL REFERENCES mailsvc_blob (digest),
    PRIMARY KEY (message_pk, position)
);
-- "Does any message still need this blob?" from the index alone.
CREATE INDEX mailsvc_splice_digest ON mailsvc_splice (digest);
