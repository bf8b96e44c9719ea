-- Spend: every usage record carries its cost and who it is charged to; spend_totals holds
-- the spend of each scope (key, user, team, end user, global, key x model) in its current
-- budget window, added to in the transaction that stores the records, so budgets are read
-- from one row instead of reseeded by a scan of the ledger.
ALTER TABLE usage_records ADD COLUMN reasoning_tokens BIGINT;
ALTER TABLE usage_records ADD COLUMN cache_creation_tokens BIGINT;
-- US dollars; NULL when unknown (not priced, or no usage reported), which is not 0.
ALTER TABLE usage_records ADD COLUMN cost REAL;
ALTER TABLE usage_records ADD COLUMN key_alias TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_records ADD COLUMN user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_records ADD COLUMN team_id TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_records ADD COLUMN end_user TEXT NOT NULL DEFAULT '';
-- JSON array of the record's tags, for display; usage_tags is what queries by tag read.
ALTER TABLE usage_records ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE usage_records ADD COLUMN first_byte_ms BIGINT;
ALTER TABLE usage_records ADD COLUMN answered_by_gateway BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE usage_records ADD COLUMN error_type TEXT NOT NULL DEFAULT '';

CREATE TABLE usage_tags (
    record_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    started_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (record_id, tag)
);
CREATE INDEX usage_tags_tag_started ON usage_tags (tag, started_unix_ms);

CREATE TABLE spend_totals (
    -- key, user, team, end_user, global, key_model (as the filter protocol's BudgetScope).
    scope TEXT NOT NULL,
    -- key: token; user: user_id; team: team_id; end_user: the request's user; global: '';
    -- key_model: '<token>/<model>'.
    scope_id TEXT NOT NULL,
    spend REAL NOT NULL DEFAULT 0,
    -- When the window ends and spend goes back to 0 (unix ms); 0: never.
    reset_at BIGINT NOT NULL DEFAULT 0,
    -- Unix ms of the last change, so replicas send on only what changed.
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id)
);
CREATE INDEX spend_totals_updated ON spend_totals (updated_ms);
CREATE INDEX spend_totals_reset ON spend_totals (reset_at);

-- Budgets (LiteLLM's fields). budget_duration as written ("30s", "1h", "1d", "30d").
ALTER TABLE virtual_keys ADD COLUMN max_budget REAL;
ALTER TABLE virtual_keys ADD COLUMN soft_budget REAL;
ALTER TABLE virtual_keys ADD COLUMN budget_duration TEXT;
-- JSON object: public model name -> US dollars per window.
ALTER TABLE virtual_keys ADD COLUMN model_max_budget TEXT NOT NULL DEFAULT '{}';
ALTER TABLE users ADD COLUMN max_budget REAL;
ALTER TABLE users ADD COLUMN soft_budget REAL;
ALTER TABLE users ADD COLUMN budget_duration TEXT;
ALTER TABLE teams ADD COLUMN max_budget REAL;
ALTER TABLE teams ADD COLUMN soft_budget REAL;
ALTER TABLE teams ADD COLUMN budget_duration TEXT;
