-- mailsvc outbox on PostgreSQL, version 6: delivery events and webhook deliveries (issue 16).
-- One event per recipient state change, written by triggers inside the transaction that makes the change:
-- an event commits with its change or not at all (never lost, never invented), whichever code path changed it.
-- The read cursor is (xid, seq): seq alone is not commit order when transactions overlap (a lower seq can
-- commit after a higher one was read). A reader returns only events of transactions older than every
-- transaction still running (pg_snapshot_xmin), ordered by (xid, seq): anything committed later sorts after.
CREATE TABLE mailsvc_event (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    message  text,                 -- NULL for an address-level event (an unsubscribe)
    tenant   text,
    address  text        NOT NULL,
    type     text        NOT NULL,
    code     integer,
    reply    text        NOT NULL DEFAULT '',
    attempt  integer     NOT NULL DEFAULT 0,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailsvc_event_order ON mailsvc_event (xid, seq);
CREATE INDEX mailsvc_event_tenant ON mailsvc_event (tenant, xid, seq);
CREATE INDEX mailsvc_event_message ON mailsvc_event (message, seq);

CREATE FUNCTION mailsvc_recipient_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN
        RETURN NULL;
    END IF;
    INSERT INTO mailsvc_event (message, tenant, address, type, code, reply, attempt, at)
    SELECT NEW.message_pk, m.tenant, NEW.address, NEW.state, NEW.last_code, NEW.last_reply, NEW.attempts, clock_timestamp()
    FROM mailsvc_message AS m WHERE m.id = NEW.message_pk;
    RETURN NULL;
END $$;
CREATE TRIGGER mailsvc_recipient_event_insert AFTER INSERT ON mailsvc_recipient
    FOR EACH ROW EXECUTE FUNCTION mailsvc_recipient_event();
CREATE TRIGGER mailsvc_recipient_event_update AFTER UPDATE OF state ON mailsvc_recipient
    FOR EACH ROW EXECUTE FUNCTION mailsvc_recipient_event();

CREATE FUNCTION mailsvc_unsubscribe_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mailsvc_event (message, tenant, address, type, reply, at)
    VALUES (NULL, NEW.tenant, NEW.address, 'unsubscribed', NEW.stream, NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER mailsvc_suppression_event AFTER INSERT ON mailsvc_suppression
    FOR EACH ROW WHEN (NEW.reason = 'unsubscribe') EXECUTE FUNCTION mailsvc_unsubscribe_event();

-- Webhooks: each endpoint (MAILSVC_WEBHOOKS) reads the events after its cursor and fans them out into
-- deliveries, in one transaction with the cursor's move (the cursor row is locked: one fan-out at a time).
CREATE TABLE mailsvc_webhook_cursor (
    endpoint text   PRIMARY KEY,
    xid      xid8   NOT NULL,
    seq      bigint NOT NULL
);
CREATE TABLE mailsvc_webhook_delivery (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint   text        NOT NULL,
    seq        bigint      NOT NULL,
    message    text        NOT NULL,
    status     text        NOT NULL DEFAULT 'pending',
    attempts   integer     NOT NULL DEFAULT 0,
    due_at     timestamptz,
    last_error text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint, seq)
);
CREATE INDEX mailsvc_webhook_delivery_due ON mailsvc_webhook_delivery (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX mailsvc_webhook_delivery_open ON mailsvc_webhook_delivery (endpoint, message, id) WHERE due_at IS NOT NULL;
CREATE INDEX mailsvc_webhook_delivery_status ON mailsvc_webhook_delivery (status, id);
