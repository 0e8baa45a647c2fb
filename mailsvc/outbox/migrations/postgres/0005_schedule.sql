-- mailsvc outbox on PostgreSQL, version 5: tags, metadata, scheduling, listing (issue 16).
-- tags: short strings; metadata: a flat object of strings (both capped by the API); send_at: when the
-- request asked for it (NULL: at once). A message queued with a future send_at is 'scheduled' with
-- due_at = send_at, so the claim's partial index on (due_at, seq) keeps it out until then.
-- Columns with constant defaults are added without rewriting the table (PostgreSQL 11+).
ALTER TABLE mailsvc_message ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE mailsvc_message ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE mailsvc_message ADD COLUMN send_at timestamptz;
-- GET /api/messages: a tenant's messages newest first, keyset on (created_at, id); an admin's across tenants;
-- GET /api/batches/<id>/messages: a batch's, in the same order. (On a large existing table, create these
-- CONCURRENTLY by hand before upgrading: the runner's IF NOT EXISTS then finds them.)
CREATE INDEX IF NOT EXISTS mailsvc_message_tenant_created ON mailsvc_message (tenant, created_at, id);
CREATE INDEX IF NOT EXISTS mailsvc_message_created ON mailsvc_message (created_at, id);
CREATE INDEX IF NOT EXISTS mailsvc_message_batch_created ON mailsvc_message (batch_id, created_at, id)
    WHERE batch_id IS NOT NULL;
