-- Typed provider settings (src/provider_settings.rs): the plain part as JSON
-- ({"bedrock":{"region":"us-east-1"}}) and the credentials as JSON sealed with the credential
-- key, like api_key. Both NULL for providers that take none.
ALTER TABLE deployments ADD COLUMN provider_settings TEXT;
ALTER TABLE deployments ADD COLUMN provider_secret TEXT;
-- Request parameters sent when the client gives none (litellm_params temperature, stop, ...),
-- a JSON object; NULL: none.
ALTER TABLE deployments ADD COLUMN default_params TEXT;
