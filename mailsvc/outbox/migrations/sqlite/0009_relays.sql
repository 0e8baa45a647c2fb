-- mailsvc outbox on SQLite, version 9: several relays (issue 17).
-- relay_route: the route a message is sent by (MAILSVC_RELAYS_FILE's "routes"; NULL: rows written before,
-- sent by the 'default' route). relay: the relay that gave a recipient its last reply (NULL: none yet).
-- SQLite paces its relays per process, so it needs no shared counters table.
ALTER TABLE messages ADD COLUMN relay_route TEXT;
ALTER TABLE recipients ADD COLUMN relay TEXT;
