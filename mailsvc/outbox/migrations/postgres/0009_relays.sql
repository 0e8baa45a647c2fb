-- mailsvc outbox on PostgreSQL, version 9: several relays (issue 17).
-- relay_route: the route a message is sent by (MAILSVC_RELAYS_FILE's "routes"; NULL: rows written before,
-- sent by the 'default' route). relay: the relay that gave a recipient its last reply (NULL: none yet).
ALTER TABLE mailsvc_message ADD COLUMN relay_route text;
ALTER TABLE mailsvc_recipient ADD COLUMN relay text;
-- Rate limits shared by every worker machine: messages sent through a relay in a window ('s': one second,
-- 'd': one UTC day) that starts at window_start; taken atomically (INSERT .. ON CONFLICT DO UPDATE .. WHERE
-- used + n <= limit). Old windows are deleted by the worker that opens a new day.
CREATE TABLE IF NOT EXISTS mailsvc_relay_usage (
    relay text NOT NULL,
    win text NOT NULL,
    window_start timestamptz NOT NULL,
    used bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (relay, win, window_start)
);
