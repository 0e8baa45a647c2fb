-- mailsvc outbox on SQLite, version 8: the trace context of the request that queued a message (issue 16).
-- A W3C traceparent, written only when OpenTelemetry tracing is on; the delivery span links to it, in whichever
-- process delivers. NULL for everything else.
ALTER TABLE messages ADD COLUMN traceparent TEXT;
