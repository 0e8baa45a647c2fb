-- mailsvc outbox on PostgreSQL, version 1.
-- The hot queue table (mailsvc_message) stays narrow so claims scan little; bodies live apart.
-- due_at is "when a worker may take this message": the next attempt for queued/deferred mail,
-- the lease expiry for mail being sent, NULL once final. One partial index serves every claim.

CREATE TABLE mailsvc_message (
    id               text PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY,  -- enqueue order: FIFO among equally due
    message_id       text        NOT NULL,
    batch_id         text,
    state            text        NOT NULL DEFAULT 'queued',
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    due_at           timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz
);
CREATE INDEX mailsvc_message_due ON mailsvc_message (due_at, seq) WHERE due_at IS NOT NULL;
CREATE INDEX mailsvc_message_batch ON mailsvc_message (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX mailsvc_message_final ON mailsvc_message (updated_at) WHERE due_at IS NULL;

CREATE TABLE mailsvc_body (
    message_pk   text PRIMARY KEY REFERENCES mailsvc_message (id) ON DELETE CASCADE,
    sender       text   NOT NULL,
    data         bytea  NOT NULL,
    mail_options text[] NOT NULL DEFAULT '{}',
    rcpt_options text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE mailsvc_recipient (
    message_pk      text        NOT NULL REFERENCES mailsvc_message (id) ON DELETE CASCADE,
    position        integer     NOT NULL,
    address         text        NOT NULL,
    state           text        NOT NULL DEFAULT 'queued',
    attempts        integer     NOT NULL DEFAULT 0,
    last_code       integer,
    last_reply      text        NOT NULL DEFAULT '',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz,
    PRIMARY KEY (message_pk, position)
);

-- One row per idempotency key; the primary key makes the same key posted to two nodes at once
-- give one message (the second INSERT waits for the first commit, then sees the conflict).
CREATE TABLE mailsvc_idempotency (
    key         text PRIMARY KEY,
    fingerprint text        NOT NULL,
    ids         text[]      NOT NULL,
    batch_id    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailsvc_idempotency_created ON mailsvc_idempotency (created_at);
