-- mailsvc outbox on PostgreSQL, version 7: the suppression list checked for every message, again at claim.
-- A message remembers its stream (NULL: none, i.e. written before this version), so a worker can check
-- the recipients it claims against what was suppressed after the message was queued.
-- A suppression's stream '*' applies to every stream of the tenant (hard bounces, complaints, manual).
-- The indexes serve the lookups by address (enqueue, claim, the API's filter) and the claim's
-- claim's "newest entry of this tenant" read with each due message.
ALTER TABLE mailsvc_message ADD COLUMN stream text;
CREATE INDEX mailsvc_suppression_by_address ON mailsvc_suppression (tenant, address);
CREATE INDEX mailsvc_suppression_by_time ON mailsvc_suppression (tenant, created_at);
