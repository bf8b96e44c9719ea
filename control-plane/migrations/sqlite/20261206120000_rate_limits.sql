-- Rate limits (LiteLLM's fields): requests per minute, tokens per minute, requests in
-- flight. NULL: no limit; 0 refuses every request.
ALTER TABLE virtual_keys ADD COLUMN rpm_limit BIGINT;
ALTER TABLE virtual_keys ADD COLUMN tpm_limit BIGINT;
ALTER TABLE virtual_keys ADD COLUMN max_parallel_requests BIGINT;
-- JSON objects: public model name -> requests (tokens) per minute.
ALTER TABLE virtual_keys ADD COLUMN model_rpm_limit TEXT NOT NULL DEFAULT '{}';
ALTER TABLE virtual_keys ADD COLUMN model_tpm_limit TEXT NOT NULL DEFAULT '{}';
ALTER TABLE users ADD COLUMN rpm_limit BIGINT;
ALTER TABLE users ADD COLUMN tpm_limit BIGINT;
ALTER TABLE users ADD COLUMN max_parallel_requests BIGINT;
ALTER TABLE teams ADD COLUMN rpm_limit BIGINT;
ALTER TABLE teams ADD COLUMN tpm_limit BIGINT;
ALTER TABLE teams ADD COLUMN max_parallel_requests BIGINT;
-- A deployment's litellm_params rpm / tpm / max_parallel_requests: a JSON object, NULL for
-- none (deployments keep parsed fields, not their litellm_params as written).
ALTER TABLE deployments ADD COLUMN rate_limits TEXT;
