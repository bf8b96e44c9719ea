-- Prices a deployment's litellm_params give (input_cost_per_token, output_cost_per_token,
-- cache_read_input_token_cost, cache_creation_input_token_cost,
-- output_cost_per_reasoning_token): a JSON object of US dollars per token, NULL for none.
-- The pricing a filter gets is resolved from these, model_info, the config and the price
-- tables when the snapshot is built, so a table that changes with a release reprices
-- stored deployments too.
ALTER TABLE deployments ADD COLUMN pricing TEXT;
