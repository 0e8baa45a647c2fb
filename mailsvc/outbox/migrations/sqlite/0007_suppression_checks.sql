-- mailsvc outbox on SQLite, version 7: the suppression list checked for every message, again at claim.
-- A message remembers its stream (NULL: none, i.e. written before this version), so a worker can check
-- the recipients it claims against what was suppressed after the message was queued.
-- A suppression's stream '*' applies to every stream of the tenant (hard bounces, complaints, manual).
-- The indexes serve the lookups by address (enqueue, claim, the API's filter) and the claim's
-- claim's "newest entry of this tenant" read with each due message.
ALTER TABLE messages ADD COLUMN stream TEXT;
CREATE INDEX IF NOT EXISTS suppressions_by_address ON suppressions (tenant, address);
CREATE INDEX IF NOT EXISTS suppressions_by_time ON suppressions (tenant, created_at);
