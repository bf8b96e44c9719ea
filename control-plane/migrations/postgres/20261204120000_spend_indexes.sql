-- Indexes of the spend API's queries, so they stay interactive over 10 million usage rows.
-- /spend/logs filters on one column (key, user, team, model, end user) and a range of
-- started_unix_ms and pages newest first with id as the tie-break: (column,
-- started_unix_ms, id) answers the filter, the order and a page's LIMIT/OFFSET by walking the
-- index backwards, without sorting. They replace the earlier (column, started_unix_ms) ones.
DROP INDEX IF EXISTS usage_records_started;
DROP INDEX IF EXISTS usage_records_key_started;
DROP INDEX IF EXISTS usage_records_model_started;
CREATE INDEX usage_records_started_id ON usage_records (started_unix_ms, id);
CREATE INDEX usage_records_key_started_id ON usage_records (key_hash, started_unix_ms, id);
CREATE INDEX usage_records_model_started_id ON usage_records (model_name, started_unix_ms, id);
CREATE INDEX usage_records_user_started_id ON usage_records (user_id, started_unix_ms, id);
CREATE INDEX usage_records_team_started_id ON usage_records (team_id, started_unix_ms, id);
CREATE INDEX usage_records_end_user_started_id ON usage_records (end_user, started_unix_ms, id);
-- request_id filters match the record id (primary key) or the client's x-request-id.
CREATE INDEX usage_records_request_id ON usage_records (request_id);

-- The record's cost next to each of its tags, so spend per tag sums usage_tags alone
-- instead of joining every tag row to its record; NULL when the cost is unknown.
ALTER TABLE usage_tags ADD COLUMN cost DOUBLE PRECISION;
-- Retention deletes tags by record (the primary key); spend per tag over a date range reads
-- this one alone (it holds every column that query needs).
CREATE INDEX usage_tags_started ON usage_tags (started_unix_ms, tag, cost);
