//! What a deployment's tokens cost: the price tables and the one resolution of a
//! deployment's [`proto::Pricing`], which the filter multiplies by the usage it sees.
//!
//! Tables are in LiteLLM's `model_prices_and_context_window.json` format: one JSON object,
//! keyed by model name (`gpt-4o`, `claude-3-5-haiku-20241022`, `groq/llama3-8b-8192`), each
//! entry an object of which Tollgate reads the five prices ([`PRICE_FIELDS`], US dollars per
//! token) and `litellm_provider`; every other field is accepted and ignored, so LiteLLM's own
//! file loads as it is. The built-in table (`control-plane/data/model_prices.json`) holds the
//! OpenAI and Anthropic models, with the providers' published prices.
//!
//! # Precedence
//!
//! [`resolve`] takes each of the five prices from the first of these that has it, so that
//! an override of one price keeps the others (an input price set in `litellm_params` keeps
//! the table's output and cache prices):
//!
//! 1. the deployment's `litellm_params` (`input_cost_per_token`, ...);
//! 2. its `model_info` (the same keys);
//! 3. `general_settings.cost_per_token[model_name]`: one price for input and output;
//! 4. the operator's price file (`general_settings.model_prices_file`, `--model-prices-file`);
//! 5. the built-in table.
//!
//! In a table (4 and 5 alike) a deployment's entry is the first of these names found:
//! `model_info.base_model` (as written, then without its `provider/` prefix),
//! `<provider>/<upstream model>` (how LiteLLM keys most non-OpenAI providers), and the bare
//! upstream model name, but that one only when the entry's `litellm_provider` is the
//! deployment's provider or is not given (so `hosted_vllm/gpt-4o`, a model of one's own
//! server, does not get OpenAI's price). A price no layer gives stays absent: the filter
//! then reports the cost as unknown, never as 0.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::Value;

use crate::proto;
use crate::store::DeploymentRecord;

/// The built-in table, embedded at build time.
pub const BUILTIN_PRICES_JSON: &str = include_str!("../data/model_prices.json");

/// The five prices, as LiteLLM names them (in `litellm_params`, `model_info` and tables).
pub const PRICE_FIELDS: [&str; 5] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
];

/// Top-level keys of LiteLLM's file that document the format rather than name a model.
const RESERVED_KEYS: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// Checks one price: a finite number of US dollars per token, not negative.
pub fn check_price(value: f64) -> Result<f64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err("must be a non-negative number (US dollars per token)".to_string())
    }
}

/// US dollars per token; `None` is unknown (not 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prices {
    /// Input tokens not read from or written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token: Option<f64>,
    /// Output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token: Option<f64>,
    /// Input tokens read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    /// Input tokens written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<f64>,
    /// Reasoning tokens (a part of the output tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_reasoning_token: Option<f64>,
}

impl Prices {
    /// The price named `field` (one of [`PRICE_FIELDS`]).
    pub fn get(&self, field: &str) -> Option<f64> {
        match field {
            "input_cost_per_token" => self.input_cost_per_token,
            "output_cost_per_token" => self.output_cost_per_token,
            "cache_read_input_token_cost" => self.cache_read_input_token_cost,
            "cache_creation_input_token_cost" => self.cache_creation_input_token_cost,
            "output_cost_per_reasoning_token" => self.output_cost_per_reasoning_token,
            _ => None,
        }
    }

    /// Sets the price named `field`; false when `field` is not one of [`PRICE_FIELDS`].
    pub fn set(&mut self, field: &str, value: Option<f64>) -> bool {
        let slot = match field {
            "input_cost_per_token" => &mut self.input_cost_per_token,
            "output_cost_per_token" => &mut self.output_cost_per_token,
            "cache_read_input_token_cost" => &mut self.cache_read_input_token_cost,
            "cache_creation_input_token_cost" => &mut self.cache_creation_input_token_cost,
            "output_cost_per_reasoning_token" => &mut self.output_cost_per_reasoning_token,
            _ => return false,
        };
        *slot = value;
        true
    }

    /// True when no price is known.
    pub fn is_empty(&self) -> bool {
        PRICE_FIELDS.iter().all(|field| self.get(field).is_none())
    }

    /// Each price of `self`, else `fallback`'s.
    pub fn or(self, fallback: Prices) -> Prices {
        Prices {
            input_cost_per_token: self.input_cost_per_token.or(fallback.input_cost_per_token),
            output_cost_per_token: self
                .output_cost_per_token
                .or(fallback.output_cost_per_token),
            cache_read_input_token_cost: self
                .cache_read_input_token_cost
                .or(fallback.cache_read_input_token_cost),
            cache_creation_input_token_cost: self
                .cache_creation_input_token_cost
                .or(fallback.cache_creation_input_token_cost),
            output_cost_per_reasoning_token: self
                .output_cost_per_reasoning_token
                .or(fallback.output_cost_per_reasoning_token),
        }
    }

    /// The prices of a JSON object's price fields that are valid prices (numbers, or
    /// numeric strings); others are left out. For `model_info` as stored, which was checked
    /// when written (rows stored before prices were read may hold anything there).
    pub fn from_json_lenient(object: &Value) -> Prices {
        let mut prices = Prices::default();
        for field in PRICE_FIELDS {
            let value = match object.get(field) {
                Some(Value::Number(number)) => number.as_f64(),
                Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
                _ => None,
            };
            prices.set(field, value.and_then(|value| check_price(value).ok()));
        }
        prices
    }

    /// The protocol message; `None` when no price is known (the deployment is unpriced).
    pub fn to_proto(self) -> Option<proto::Pricing> {
        (!self.is_empty()).then_some(proto::Pricing {
            input_cost_per_token: self.input_cost_per_token,
            output_cost_per_token: self.output_cost_per_token,
            cache_read_input_token_cost: self.cache_read_input_token_cost,
            cache_creation_input_token_cost: self.cache_creation_input_token_cost,
            output_cost_per_reasoning_token: self.output_cost_per_reasoning_token,
        })
    }

    /// From the protocol message (the management API's gRPC form).
    pub fn from_proto(pricing: &proto::Pricing) -> Prices {
        Prices {
            input_cost_per_token: pricing.input_cost_per_token,
            output_cost_per_token: pricing.output_cost_per_token,
            cache_read_input_token_cost: pricing.cache_read_input_token_cost,
            cache_creation_input_token_cost: pricing.cache_creation_input_token_cost,
            output_cost_per_reasoning_token: pricing.output_cost_per_reasoning_token,
        }
    }
}

/// One model of a price table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPrices {
    /// `litellm_provider`, when the entry names one.
    pub provider: Option<String>,
    /// Its prices.
    pub prices: Prices,
}

/// Why a price table could not be loaded; names the file and, for a bad entry, the model
/// and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceFileError {
    /// The file could not be read.
    #[error("cannot read price file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The text is not JSON.
    #[error("{origin}: invalid JSON: {message}")]
    Json {
        /// File name (or `<built-in>`).
        origin: String,
        /// Parser error, with line and column.
        message: String,
    },
    /// The document or an entry has the wrong shape or a bad price.
    #[error("{origin}: {path}: {message}")]
    Invalid {
        /// File name (or `<built-in>`).
        origin: String,
        /// `<root>`, the model's name, or `"<model>".<field>`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A price table in LiteLLM's format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    models: HashMap<String, ModelPrices>,
}

/// The JSON type of `value`, for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl PriceTable {
    /// Parses a table; `origin` names it in errors. The first bad entry is the error.
    pub fn parse(text: &str, origin: &str) -> Result<PriceTable, PriceFileError> {
        let document: Value = serde_json::from_str(text).map_err(|error| PriceFileError::Json {
            origin: origin.to_string(),
            message: error.to_string(),
        })?;
        let invalid = |path: String, message: String| PriceFileError::Invalid {
            origin: origin.to_string(),
            path,
            message,
        };
        let Value::Object(entries) = document else {
            return Err(invalid(
                "<root>".into(),
                format!(
                    "expected an object of models by name, got {}",
                    json_type(&document)
                ),
            ));
        };
        let mut models = HashMap::with_capacity(entries.len());
        for (name, entry) in &entries {
            if RESERVED_KEYS.contains(&name.as_str()) {
                continue;
            }
            let Value::Object(fields) = entry else {
                return Err(invalid(
                    format!("{name:?}"),
                    format!("expected an object, got {}", json_type(entry)),
                ));
            };
            let mut prices = Prices::default();
            for field in PRICE_FIELDS {
                let value = match fields.get(field) {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(number)) => number.as_f64(),
                    Some(other) => {
                        return Err(invalid(
                            format!("{name:?}.{field}"),
                            format!("must be a number, got {}", json_type(other)),
                        ))
                    }
                };
                let value = value
                    .map(check_price)
                    .transpose()
                    .map_err(|message| invalid(format!("{name:?}.{field}"), message))?;
                prices.set(field, value);
            }
            let provider = match fields.get("litellm_provider") {
                None | Some(Value::Null) => None,
                Some(Value::String(provider)) => Some(provider.clone()),
                Some(other) => {
                    return Err(invalid(
                        format!("{name:?}.litellm_provider"),
                        format!("must be a string, got {}", json_type(other)),
                    ))
                }
            };
            models.insert(name.clone(), ModelPrices { provider, prices });
        }
        Ok(PriceTable { models })
    }

    /// Reads and parses the table at `path`.
    pub fn load_file(path: &Path) -> Result<PriceTable, PriceFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| PriceFileError::Read {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in table (parsed once). Its file is checked by a unit test, so the empty
    /// table of a broken build is only a defence: it would leave every model unpriced.
    pub fn builtin() -> &'static PriceTable {
        static BUILTIN: LazyLock<PriceTable> = LazyLock::new(|| {
            PriceTable::parse(BUILTIN_PRICES_JSON, "<built-in>").unwrap_or_else(|error| {
                tracing::error!(%error, "the built-in price table is invalid; no model is priced");
                PriceTable::default()
            })
        });
        &BUILTIN
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when the table has no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The entry of model `name`, exactly.
    pub fn get(&self, name: &str) -> Option<&ModelPrices> {
        self.models.get(name)
    }

    /// The entry of a deployment (see the module documentation for the names tried).
    pub fn lookup(&self, deployment: &PricedDeployment<'_>) -> Option<&ModelPrices> {
        if let Some(base) = deployment.base_model() {
            let unprefixed = base.split_once('/').map(|(_, rest)| rest);
            if let Some(found) = [Some(base), unprefixed]
                .into_iter()
                .flatten()
                .find_map(|name| self.models.get(name))
            {
                return Some(found);
            }
        }
        let prefixed = format!("{}/{}", deployment.provider_name, deployment.upstream_model);
        if let Some(found) = self.models.get(&prefixed) {
            return Some(found);
        }
        self.models
            .get(deployment.upstream_model)
            .filter(|entry| match &entry.provider {
                Some(provider) => provider == deployment.provider_name,
                None => true,
            })
    }
}

/// The tables a control plane prices with: the built-in one and the operator's file.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceCatalog {
    user: Option<PriceTable>,
    builtin: &'static PriceTable,
}

impl Default for PriceCatalog {
    /// The built-in table alone.
    fn default() -> Self {
        PriceCatalog {
            user: None,
            builtin: PriceTable::builtin(),
        }
    }
}

impl PriceCatalog {
    /// The built-in table and, over it, `user` (the operator's file).
    pub fn with_user_table(user: PriceTable) -> PriceCatalog {
        PriceCatalog {
            user: Some(user),
            ..PriceCatalog::default()
        }
    }

    /// The built-in table and, when given, the file at `user_file` over it.
    pub fn load(user_file: Option<&Path>) -> Result<PriceCatalog, PriceFileError> {
        match user_file {
            Some(path) => Ok(Self::with_user_table(PriceTable::load_file(path)?)),
            None => Ok(PriceCatalog::default()),
        }
    }

    /// The operator's table, if one was loaded.
    pub fn user_table(&self) -> Option<&PriceTable> {
        self.user.as_ref()
    }
}

/// What [`resolve`] reads of a deployment.
#[derive(Debug, Clone, Copy)]
pub struct PricedDeployment<'a> {
    /// Public model name (the key of `general_settings.cost_per_token`).
    pub model_name: &'a str,
    /// Provider prefix as configured (`openai`, `anthropic`, `groq`, ...).
    pub provider_name: &'a str,
    /// The model name the provider expects.
    pub upstream_model: &'a str,
    /// Prices given in `litellm_params`.
    pub litellm_params: Prices,
    /// `model_info` as stored (its prices and `base_model` are read).
    pub model_info: Option<&'a Value>,
}

impl<'a> PricedDeployment<'a> {
    /// The view of a stored deployment.
    pub fn of(record: &'a DeploymentRecord) -> PricedDeployment<'a> {
        PricedDeployment {
            model_name: &record.model_name,
            provider_name: &record.provider_name,
            upstream_model: &record.upstream_model,
            litellm_params: record.pricing,
            model_info: record.model_info.as_ref(),
        }
    }

    /// `model_info.base_model`, when a non-empty string.
    fn base_model(&self) -> Option<&'a str> {
        self.model_info?
            .get("base_model")?
            .as_str()
            .filter(|name| !name.trim().is_empty())
    }
}

/// The prices of a deployment, each from the first layer that has it (see the module
/// documentation): `litellm_params`, `model_info`, `cost_per_token` (public model name ->
/// one price for input and output), the operator's table, the built-in table. `None` when
/// no layer prices it.
pub fn resolve(
    deployment: &PricedDeployment<'_>,
    cost_per_token: &BTreeMap<String, f64>,
    catalog: &PriceCatalog,
) -> Option<proto::Pricing> {
    let model_info = deployment
        .model_info
        .map(Prices::from_json_lenient)
        .unwrap_or_default();
    let general = cost_per_token
        .get(deployment.model_name)
        .map(|&price| Prices {
            input_cost_per_token: Some(price),
            output_cost_per_token: Some(price),
            ..Prices::default()
        })
        .unwrap_or_default();
    let table = |table: Option<&PriceTable>| {
        table
            .and_then(|table| table.lookup(deployment))
            .map(|entry| entry.prices)
            .unwrap_or_default()
    };
    deployment
        .litellm_params
        .or(model_info)
        .or(general)
        .or(table(catalog.user.as_ref()))
        .or(table(Some(catalog.builtin)))
        .to_proto()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment<'a>(
        model_name: &'a str,
        provider_name: &'a str,
        upstream_model: &'a str,
    ) -> PricedDeployment<'a> {
        PricedDeployment {
            model_name,
            provider_name,
            upstream_model,
            litellm_params: Prices::default(),
            model_info: None,
        }
    }

    fn pricing(
        input: Option<f64>,
        output: Option<f64>,
        cache_read: Option<f64>,
        cache_creation: Option<f64>,
        reasoning: Option<f64>,
    ) -> Option<proto::Pricing> {
        Some(proto::Pricing {
            input_cost_per_token: input,
            output_cost_per_token: output,
            cache_read_input_token_cost: cache_read,
            cache_creation_input_token_cost: cache_creation,
            output_cost_per_reasoning_token: reasoning,
        })
    }

    fn no_general() -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    #[test]
    fn the_builtin_table_parses_and_holds_the_providers_prices() {
        let table = PriceTable::parse(BUILTIN_PRICES_JSON, "<built-in>").unwrap();
        assert_eq!(&table, PriceTable::builtin());
        assert_eq!(table.len(), 62);
        let prices = |name: &str| table.get(name).unwrap().prices;
        // OpenAI: no cache-write price (writes are billed as input).
        assert_eq!(
            prices("gpt-4o").to_proto(),
            pricing(Some(2.5e-6), Some(1e-5), Some(1.25e-6), None, None)
        );
        assert_eq!(
            prices("gpt-4o-mini-2024-07-18").to_proto(),
            pricing(Some(1.5e-7), Some(6e-7), Some(7.5e-8), None, None)
        );
        assert_eq!(
            prices("gpt-4.1-nano").to_proto(),
            pricing(Some(1e-7), Some(4e-7), Some(2.5e-8), None, None)
        );
        assert_eq!(
            prices("o4-mini-2025-04-16").to_proto(),
            pricing(Some(1.1e-6), Some(4.4e-6), Some(2.75e-7), None, None)
        );
        assert_eq!(
            prices("o1-mini-2024-09-12").to_proto(),
            pricing(Some(1.1e-6), Some(4.4e-6), Some(5.5e-7), None, None)
        );
        assert_eq!(
            prices("gpt-4").to_proto(),
            pricing(Some(3e-5), Some(6e-5), None, None, None)
        );
        assert_eq!(
            prices("text-embedding-3-large").to_proto(),
            pricing(Some(1.3e-7), Some(0.0), None, None, None)
        );
        // Anthropic: 5-minute cache writes and cache hits.
        assert_eq!(
            prices("claude-3-5-haiku-latest").to_proto(),
            pricing(Some(8e-7), Some(4e-6), Some(8e-8), Some(1e-6), None)
        );
        assert_eq!(
            prices("claude-opus-4-1-20250805").to_proto(),
            pricing(
                Some(1.5e-5),
                Some(7.5e-5),
                Some(1.5e-6),
                Some(1.875e-5),
                None
            )
        );
        assert_eq!(
            prices("claude-haiku-4-5").to_proto(),
            pricing(Some(1e-6), Some(5e-6), Some(1e-7), Some(1.25e-6), None)
        );
        assert_eq!(
            table.get("claude-sonnet-4-5").unwrap().provider.as_deref(),
            Some("anthropic")
        );
        for name in [
            "gpt-4o-2024-11-20",
            "gpt-4.1-2025-04-14",
            "o1",
            "o3-mini-2025-01-31",
            "gpt-4-turbo-2024-04-09",
            "gpt-3.5-turbo-0125",
            "text-embedding-3-small",
            "claude-3-haiku-20240307",
            "claude-3-opus-20240229",
            "claude-3-5-sonnet-20241022",
            "claude-3-7-sonnet-20250219",
            "claude-sonnet-4-20250514",
            "claude-opus-4-20250514",
            "claude-haiku-4-5-20251001",
        ] {
            assert!(table.get(name).is_some(), "{name} is not in the table");
        }
    }

    #[test]
    fn litellms_own_file_shape_loads() {
        // The documentation entry has strings where prices of models have numbers.
        let text = r#"{
            "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens",
                            "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
            "fallback_generalizations": {"rules": []},
            "groq/llama3-8b-8192": {"input_cost_per_token": 5e-08, "output_cost_per_token": 8e-08,
                "litellm_provider": "groq", "mode": "chat", "max_input_tokens": 8192,
                "supports_function_calling": true, "search_context_cost_per_query": {"low": 0.0}},
            "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation",
                "output_cost_per_image": 0.04, "input_cost_per_token": null}
        }"#;
        let table = PriceTable::parse(text, "litellm.json").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.get("groq/llama3-8b-8192"),
            Some(&ModelPrices {
                provider: Some("groq".into()),
                prices: Prices {
                    input_cost_per_token: Some(5e-8),
                    output_cost_per_token: Some(8e-8),
                    ..Prices::default()
                },
            })
        );
        assert!(table.get("dall-e-3").unwrap().prices.is_empty());
        assert!(table.get("sample_spec").is_none());
    }

    #[test]
    fn bad_tables_name_the_entry_and_the_field() {
        let error = |text: &str| {
            PriceTable::parse(text, "prices.json")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(
                r#"{"a": {"input_cost_per_token": 1e-6}, "b": {"output_cost_per_token": "2e-6"}}"#
            ),
            r#"prices.json: "b".output_cost_per_token: must be a number, got a string"#
        );
        assert_eq!(
            error(r#"{"m": {"cache_read_input_token_cost": -1e-7}}"#),
            r#"prices.json: "m".cache_read_input_token_cost: must be a non-negative number (US dollars per token)"#
        );
        assert_eq!(
            error(r#"{"m": {"litellm_provider": 3}}"#),
            r#"prices.json: "m".litellm_provider: must be a string, got a number"#
        );
        assert_eq!(
            error(r#"{"m": [1]}"#),
            r#"prices.json: "m": expected an object, got a list"#
        );
        assert_eq!(
            error("[]"),
            "prices.json: <root>: expected an object of models by name, got a list"
        );
        assert!(error("{\"m\": ").starts_with("prices.json: invalid JSON: EOF while parsing"));
    }

    #[test]
    fn a_missing_file_is_an_error_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let error = PriceCatalog::load(Some(&path)).unwrap_err();
        assert!(
            matches!(&error, PriceFileError::Read { path: at, .. } if at == &path),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .starts_with(&format!("cannot read price file {}: ", path.display())));
        let good = dir.path().join("prices.json");
        std::fs::write(&good, r#"{"my-model": {"input_cost_per_token": 1e-6}}"#).unwrap();
        let catalog = PriceCatalog::load(Some(&good)).unwrap();
        assert_eq!(catalog.user_table().map(PriceTable::len), Some(1));
        assert_eq!(PriceCatalog::load(None).unwrap().user_table(), None);
    }

    #[test]
    fn table_lookup_by_upstream_name_provider_prefix_and_base_model() {
        let builtin = PriceCatalog::default();
        let general = no_general();
        // Bare upstream name, provider matching the entry's.
        assert_eq!(
            resolve(
                &deployment("gpt", "openai", "gpt-4o-mini"),
                &general,
                &builtin
            ),
            pricing(Some(1.5e-7), Some(6e-7), Some(7.5e-8), None, None)
        );
        assert_eq!(
            resolve(
                &deployment("c", "anthropic", "claude-3-7-sonnet-20250219"),
                &general,
                &builtin
            ),
            pricing(Some(3e-6), Some(1.5e-5), Some(3e-7), Some(3.75e-6), None)
        );
        // Another provider's server serving a model of the same name is not OpenAI.
        assert_eq!(
            resolve(
                &deployment("m", "hosted_vllm", "gpt-4o"),
                &general,
                &builtin
            ),
            None
        );
        assert_eq!(
            resolve(
                &deployment("m", "openai", "my-finetune"),
                &general,
                &builtin
            ),
            None
        );
        // model_info.base_model names the entry, with or without a provider prefix.
        let info = serde_json::json!({"base_model": "openai/gpt-4.1-mini"});
        let mut based = deployment("m", "hosted_vllm", "my-proxy-name");
        based.model_info = Some(&info);
        assert_eq!(
            resolve(&based, &general, &builtin),
            pricing(Some(4e-7), Some(1.6e-6), Some(1e-7), None, None)
        );
        // provider/model keys, and entries that name no provider.
        let user = PriceTable::parse(
            r#"{"groq/llama3-8b-8192": {"input_cost_per_token": 5e-8, "litellm_provider": "groq"},
                "llama3-8b-8192": {"input_cost_per_token": 9e-8, "litellm_provider": "together_ai"},
                "local-llama": {"output_cost_per_token": 1e-9}}"#,
            "user.json",
        )
        .unwrap();
        let catalog = PriceCatalog::with_user_table(user);
        assert_eq!(
            resolve(
                &deployment("l", "groq", "llama3-8b-8192"),
                &general,
                &catalog
            ),
            pricing(Some(5e-8), None, None, None, None)
        );
        assert_eq!(
            resolve(
                &deployment("l", "deepseek", "llama3-8b-8192"),
                &general,
                &catalog
            ),
            None
        );
        assert_eq!(
            resolve(
                &deployment("l", "hosted_vllm", "local-llama"),
                &general,
                &catalog
            ),
            pricing(None, Some(1e-9), None, None, None)
        );
    }

    #[test]
    fn each_price_comes_from_the_first_layer_that_has_it() {
        let user = PriceTable::parse(
            r#"{"gpt-4o": {"input_cost_per_token": 2e-6, "output_cost_per_reasoning_token": 3e-5}}"#,
            "user.json",
        )
        .unwrap();
        let catalog = PriceCatalog::with_user_table(user);
        let gpt4o = deployment("gpt", "openai", "gpt-4o");
        let none = no_general();
        // The user file over the built-in table, per field.
        assert_eq!(
            resolve(&gpt4o, &none, &catalog),
            pricing(Some(2e-6), Some(1e-5), Some(1.25e-6), None, Some(3e-5))
        );
        // cost_per_token over the file: input and output.
        let general: BTreeMap<String, f64> = [("gpt".to_string(), 5e-5)].into();
        assert_eq!(
            resolve(&gpt4o, &general, &catalog),
            pricing(Some(5e-5), Some(5e-5), Some(1.25e-6), None, Some(3e-5))
        );
        // ...and only for its own public name.
        let other: BTreeMap<String, f64> = [("gpt-4o".to_string(), 5e-5)].into();
        assert_eq!(
            resolve(&gpt4o, &other, &catalog),
            pricing(Some(2e-6), Some(1e-5), Some(1.25e-6), None, Some(3e-5))
        );
        // model_info over cost_per_token; stored junk there is ignored.
        let info = serde_json::json!({"output_cost_per_token": 7e-6,
            "cache_creation_input_token_cost": "4e-6", "cache_read_input_token_cost": "lots",
            "input_cost_per_token": -1.0});
        let mut with_info = gpt4o;
        with_info.model_info = Some(&info);
        assert_eq!(
            resolve(&with_info, &general, &catalog),
            pricing(
                Some(5e-5),
                Some(7e-6),
                Some(1.25e-6),
                Some(4e-6),
                Some(3e-5)
            )
        );
        // litellm_params over everything.
        let mut with_params = with_info;
        with_params.litellm_params = Prices {
            output_cost_per_token: Some(9e-6),
            cache_read_input_token_cost: Some(0.0),
            ..Prices::default()
        };
        assert_eq!(
            resolve(&with_params, &general, &catalog),
            pricing(Some(5e-5), Some(9e-6), Some(0.0), Some(4e-6), Some(3e-5))
        );
        // A model no layer prices is unpriced (unknown), not free.
        assert_eq!(
            resolve(&deployment("x", "openai", "unknown-model"), &none, &catalog),
            None
        );
        let free: BTreeMap<String, f64> = [("x".to_string(), 0.0)].into();
        assert_eq!(
            resolve(&deployment("x", "openai", "unknown-model"), &free, &catalog),
            pricing(Some(0.0), Some(0.0), None, None, None)
        );
    }

    #[test]
    fn prices_serialize_only_what_is_set() {
        let prices = Prices {
            input_cost_per_token: Some(1e-6),
            ..Prices::default()
        };
        let text = serde_json::to_string(&prices).unwrap();
        assert_eq!(text, r#"{"input_cost_per_token":1e-6}"#);
        assert_eq!(serde_json::from_str::<Prices>(&text).unwrap(), prices);
        assert_eq!(serde_json::to_string(&Prices::default()).unwrap(), "{}");
        assert_eq!(Prices::default().to_proto(), None);
        assert!(check_price(f64::NAN).is_err() && check_price(f64::INFINITY).is_err());
        assert_eq!(check_price(0.0), Ok(0.0));
    }
}
