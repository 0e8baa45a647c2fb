-- mailsvc outbox on SQLite, version 5: tags, metadata, scheduling, listing (issue 16).
-- tags: a JSON array of short strings; metadata: a flat JSON object of strings (both capped by the API);
-- send_at: when the request asked for it (NULL: at once). A message queued with a future send_at is
-- 'scheduled' with due_at = send_at, so the claim's partial index on due_at keeps it out until then.
-- Rows written before keep the defaults (no tags, no metadata, sent at once).
ALTER TABLE messages ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
ALTER TABLE messages ADD COLUMN send_at REAL;
-- GET /api/messages: a tenant's messages newest first, keyset on (created_at, id); an admin's across tenants;
-- GET /api/batches/<id>/messages: a batch's, in the same order.
CREATE INDEX IF NOT EXISTS messages_tenant_created ON messages (tenant, created_at, id);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created_at, id);
CREATE INDEX IF NOT EXISTS messages_batch_created ON messages (batch_id, created_at, id) WHERE batch_id IS NOT NULL;
