-- A deployment's routing fields (litellm_params weight, order, tags, timeout, stream_timeout,
-- num_retries / max_retries; see src/config/router.rs), a JSON object with timeouts in
-- milliseconds ({"weight":2.0,"tags":["eu"],"timeout_ms":30000}); NULL: none.
ALTER TABLE deployments ADD COLUMN routing TEXT;
