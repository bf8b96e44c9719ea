-- The client's x-request-id, kept apart from the record's own id (which is random, so no
-- client can make two requests share one).
ALTER TABLE usage_records ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
