-- Tollgate's initial schema (SQLite). Timestamps are unix milliseconds in BIGINT columns so
-- the SQLite and PostgreSQL schemas, and the queries over them, stay the same.

CREATE TABLE deployments (
    id TEXT PRIMARY KEY NOT NULL,
    model_name TEXT NOT NULL,
    provider_name TEXT NOT NULL,
    provider_kind TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    api_base TEXT NOT NULL,
    api_key TEXT,
    api_version TEXT,
    default_max_tokens BIGINT,
    model_info TEXT,
    source TEXT NOT NULL CHECK (source IN ('config', 'api')),
    -- Order of the entry in model_list (routing may depend on it); 0 for API rows.
    position BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deployments_model_name ON deployments (model_name);

CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE usage_records (
    id TEXT PRIMARY KEY NOT NULL,
    model_name TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    status BIGINT NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cached_prompt_tokens BIGINT,
    started_unix_ms BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    stream BOOLEAN NOT NULL,
    key_hash TEXT NOT NULL,
    received_unix_ms BIGINT NOT NULL
);
-- Spend queries filter by time, key and model; without these they scan the whole ledger.
CREATE INDEX usage_records_started ON usage_records (started_unix_ms);
CREATE INDEX usage_records_key_started ON usage_records (key_hash, started_unix_ms);
CREATE INDEX usage_records_model_started ON usage_records (model_name, started_unix_ms);
