//! The provider catalogue: every provider prefix Tollgate serves (as written in LiteLLM's
//! `litellm_params.model`, `"<provider>/<model>"`), the wire protocol the filter speaks to
//! it, and its defaults. The control plane reads configs and stores deployments with it;
//! the filter picks its translator with it. One table, so adding a provider is one row here
//! (and, for a new wire protocol, one translator in the filter).
//!
//! It also holds the error classes of a failed provider attempt ([`ErrorClass`], with
//! LiteLLM's per-class policy names, [`PolicyClass`]): the filter retries, falls back and
//! cools deployments down by them, and the control plane judges cooldowns across filters
//! by the same table.
//!
//! No dependencies: the filter builds it for wasm32 and the control plane for its host.

mod errors;

pub use errors::{ErrorClass, PolicyClass};

/// The wire protocol a provider speaks; the filter translates per wire, not per provider.
/// Its [`Wire::name`] is what the control plane stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// OpenAI's chat completions, and every OpenAI-compatible server.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google's Gemini API (`generateContent` / `streamGenerateContent`).
    Gemini,
    /// AWS Bedrock's Converse API (`/model/<id>/converse` and `/converse-stream`), signed
    /// with SigV4.
    Bedrock,
    /// Cohere's v2 Chat API (`POST /v2/chat`), bearer key.
    Cohere,
    /// Ollama's native chat API (`POST /api/chat`, newline-delimited JSON streams); a bearer
    /// key only when the deployment has one (Ollama behind a proxy, ollama.com).
    Ollama,
}

impl Wire {
    /// Every wire protocol.
    pub const ALL: [Wire; 6] = [
        Wire::OpenAi,
        Wire::Anthropic,
        Wire::Gemini,
        Wire::Bedrock,
        Wire::Cohere,
        Wire::Ollama,
    ];

    /// The stored name.
    pub const fn name(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
            Wire::Bedrock => "bedrock",
            Wire::Cohere => "cohere",
            Wire::Ollama => "ollama",
        }
    }

    /// The wire a stored name names.
    pub fn from_name(name: &str) -> Option<Wire> {
        Wire::ALL.into_iter().find(|wire| wire.name() == name)
    }

    /// `max_tokens` sent when neither the client nor the deployment gives one, for wires
    /// whose API requires it (Anthropic's Messages API does).
    pub const fn required_max_tokens(self) -> Option<u32> {
        match self {
            // Converse's inferenceConfig.maxTokens is optional: the model's maximum.
            // Cohere's max_tokens is optional too: the model's output limit.
            // Ollama's options.num_predict is optional: the model's default.
            Wire::OpenAi | Wire::Gemini | Wire::Bedrock | Wire::Cohere | Wire::Ollama => None,
            Wire::Anthropic => Some(DEFAULT_ANTHROPIC_MAX_TOKENS),
        }
    }
}

/// `max_tokens` sent to Anthropic when neither the client nor the config gives one.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// How a provider of the OpenAI or Gemini wire takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `authorization: Bearer <key>`.
    Bearer,
    /// The key as the value of this header (Azure OpenAI's `api-key`, Gemini's
    /// `x-goog-api-key`).
    Header(&'static str),
}

/// Where a provider of the OpenAI wire serves chat completions, below its `api_base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatPath {
    /// `/chat/completions`.
    OpenAi,
    /// Azure OpenAI: `/openai/deployments/<deployment>/chat/completions?api-version=<v>`,
    /// the deployment being the model name after the prefix and `v` the deployment's
    /// `api_version`.
    AzureDeployment,
}

/// One provider prefix Tollgate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    /// The prefix ("openai", "hosted_vllm", ...).
    pub name: &'static str,
    /// How the filter talks to it.
    pub wire: Wire,
    /// Used when a deployment has no `api_base`; `None`: `api_base` is required (the
    /// provider runs wherever its operator put it).
    pub default_api_base: Option<&'static str>,
    /// How the key is sent (OpenAI and Gemini wires; Anthropic's translator sends `x-api-key`).
    pub auth: Auth,
    /// Where chat completions are (OpenAI wire).
    pub chat_path: ChatPath,
    /// The typed settings its deployments carry beyond `api_base` and `api_key`.
    pub settings: Settings,
    /// Models of another wire than [`Provider::wire`], by the start of their name (Vertex
    /// AI serves Anthropic's `claude-*` models with Anthropic's body): see
    /// [`Provider::wire_for`].
    pub model_wires: &'static [(&'static str, Wire)],
    /// How the model after the prefix becomes the model the provider is asked for.
    pub naming: ModelNaming,
}

/// How a provider names the model of a deployment (see [`Provider::upstream_model`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelNaming {
    /// As written after the prefix.
    AsIs,
    /// Hugging Face's router (`https://router.huggingface.co/v1`): LiteLLM's
    /// `huggingface/<inference provider>/<org>/<model>` asks the router for
    /// `<org>/<model>:<inference provider>`; `<org>/<model>` lets the router pick. A deployment
    /// with its own `api_base` (a TGI server, an Inference Endpoint) gets the name as written.
    HuggingFaceRouter,
}

impl Provider {
    /// The model to ask the provider for, given the name after the prefix, when the
    /// deployment uses the provider's default base (`default_base`) or its own.
    pub fn upstream_model(&self, model: &str, default_base: bool) -> String {
        match self.naming {
            ModelNaming::HuggingFaceRouter if default_base => {
                let mut parts = model.splitn(3, '/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(inference), Some(org), Some(name))
                        if !inference.is_empty() && !name.contains(':') =>
                    {
                        format!("{org}/{name}:{inference}")
                    }
                    _ => model.to_string(),
                }
            }
            _ => model.to_string(),
        }
    }

    /// The wire a deployment of `model` (the name after the prefix) speaks.
    pub fn wire_for(&self, model: &str) -> Wire {
        self.model_wires
            .iter()
            .find(|(start, _)| model.starts_with(start))
            .map_or(self.wire, |(_, wire)| *wire)
    }
}

/// Which typed settings a provider's deployments carry (the control plane reads them from
/// `litellm_params` and pushes them in the deployment's `provider_settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settings {
    /// None beyond `api_base` and `api_key`.
    None,
    /// Azure OpenAI: `api_version` is required (Azure answers 404 without one).
    Azure,
    /// AWS Bedrock: region and AWS credentials (`aws_region_name`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token`); requests are signed with SigV4.
    Bedrock,
    /// Google Vertex AI: project, location and a service account (`vertex_project`,
    /// `vertex_location`, `vertex_credentials`) the control plane turns into access tokens.
    Vertex,
}

const fn provider(name: &'static str, wire: Wire, base: Option<&'static str>) -> Provider {
    Provider {
        name,
        wire,
        default_api_base: base,
        auth: Auth::Bearer,
        chat_path: ChatPath::OpenAi,
        settings: Settings::None,
        model_wires: &[],
        naming: ModelNaming::AsIs,
    }
}

/// The behaviour of a provider of the OpenAI wire whose name the catalogue does not know
/// (a control plane newer than the filter): OpenAI's own.
pub const OPENAI_COMPATIBLE: Provider = provider("openai", Wire::OpenAi, None);

/// Every provider Tollgate serves. Base URLs are the providers' documented OpenAI-compatible
/// endpoints.
#[rustfmt::skip]
pub const PROVIDERS: &[Provider] = &[
    provider("openai", Wire::OpenAi, Some("https://api.openai.com/v1")),
    provider("hosted_vllm", Wire::OpenAi, None),
    provider("lm_studio", Wire::OpenAi, Some("http://localhost:1234/v1")),
    provider("openai_like", Wire::OpenAi, None),
    provider("custom_openai", Wire::OpenAi, None),
    provider("groq", Wire::OpenAi, Some("https://api.groq.com/openai/v1")),
    provider("deepseek", Wire::OpenAi, Some("https://api.deepseek.com/v1")),
    provider("mistral", Wire::OpenAi, Some("https://api.mistral.ai/v1")),
    provider("together_ai", Wire::OpenAi, Some("https://api.together.xyz/v1")),
    provider("fireworks_ai", Wire::OpenAi, Some("https://api.fireworks.ai/inference/v1")),
    provider("xai", Wire::OpenAi, Some("https://api.x.ai/v1")),
    provider("openrouter", Wire::OpenAi, Some("https://openrouter.ai/api/v1")),
    provider("perplexity", Wire::OpenAi, Some("https://api.perplexity.ai")),
    provider("nvidia_nim", Wire::OpenAi, Some("https://integrate.api.nvidia.com/v1")),
    provider("cerebras", Wire::OpenAi, Some("https://api.cerebras.ai/v1")),
    // Hugging Face's Inference Providers router by default; a TGI server or an Inference
    // Endpoint as `api_base` (both serve OpenAI's chat completions under /v1).
    Provider {
        naming: ModelNaming::HuggingFaceRouter,
        ..provider("huggingface", Wire::OpenAi, Some("https://router.huggingface.co/v1"))
    },
    provider("anthropic", Wire::Anthropic, Some("https://api.anthropic.com")),
    // Google AI Studio; requests go to `<api_base>/v1beta/models/<model>:generateContent`.
    Provider {
        auth: Auth::Header("x-goog-api-key"),
        ..provider("gemini", Wire::Gemini, Some("https://generativelanguage.googleapis.com"))
    },
    // `https://<resource>.openai.azure.com`; the deployment is the model after `azure/`.
    Provider {
        auth: Auth::Header("api-key"),
        chat_path: ChatPath::AzureDeployment,
        settings: Settings::Azure,
        ..provider("azure", Wire::OpenAi, None)
    },
    // AWS Bedrock's Converse API; the model after `bedrock/` is a model id or inference
    // profile (`anthropic.claude-3-5-sonnet-20240620-v1:0`, `us.amazon.nova-pro-v1:0`). No
    // default base: the control plane derives `https://bedrock-runtime.<region>.amazonaws.com`
    // from the deployment's region. Requests are signed with SigV4, so no key header.
    Provider {
        settings: Settings::Bedrock,
        ..provider("bedrock", Wire::Bedrock, None)
    },
    // Google Vertex AI: Gemini models with Gemini's body, Anthropic's Claude models with
    // Anthropic's, at Vertex's paths and with access tokens the control plane mints from the
    // service account. No default base: the control plane derives
    // `https://<location>-aiplatform.googleapis.com` from the deployment's location.
    Provider {
        settings: Settings::Vertex,
        model_wires: &[("claude", Wire::Anthropic)],
        ..provider("vertex_ai", Wire::Gemini, None)
    },
    // Cohere's v2 Chat API, `<api_base>/v2/chat`; LiteLLM's `cohere/` and `cohere_chat/`
    // both name it.
    provider("cohere", Wire::Cohere, Some("https://api.cohere.com")),
    provider("cohere_chat", Wire::Cohere, Some("https://api.cohere.com")),
    // Ollama's native API, `<api_base>/api/chat`, for both of LiteLLM's prefixes (LiteLLM
    // sends `ollama/` to /api/generate; Tollgate speaks chat to both).
    provider("ollama", Wire::Ollama, Some("http://localhost:11434")),
    provider("ollama_chat", Wire::Ollama, Some("http://localhost:11434")),
];

/// The provider a prefix names.
pub fn find(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|provider| provider.name == name)
}

/// LiteLLM providers Tollgate does not serve yet. Only words the config warning: a prefix in
/// neither list is most likely a typo.
#[rustfmt::skip]
pub const KNOWN_UNSUPPORTED: &[&str] = &[
    "vertex_ai_beta", "sagemaker", "sagemaker_chat",
    "azure_ai", "azure_text",
    "replicate", "watsonx", "watsonx_text", "databricks", "cloudflare", "voyage",
    "sambanova", "ai21", "ai21_chat", "nlp_cloud", "aleph_alpha", "palm",
    "text-completion-openai", "text-completion-codestral", "codestral", "friendliai", "deepinfra",
    "anyscale", "predibase", "triton", "clarifai", "github", "github_copilot", "litellm_proxy",
    "dashscope", "moonshot", "nebius", "novita", "lambda_ai", "hyperbolic", "featherless_ai",
    "snowflake", "oci", "baseten", "infinity", "jina_ai", "llamafile", "volcengine", "nscale",
    "meta_llama", "v0", "vllm", "xinference", "petals", "empower", "galadriel", "topaz",
    "assemblyai", "elevenlabs", "deepgram",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_not_also_unsupported() {
        for (at, provider) in PROVIDERS.iter().enumerate() {
            assert_eq!(find(provider.name), Some(provider));
            assert!(
                PROVIDERS[at + 1..]
                    .iter()
                    .all(|other| other.name != provider.name),
                "{} twice",
                provider.name
            );
            assert!(
                !KNOWN_UNSUPPORTED.contains(&provider.name),
                "{}",
                provider.name
            );
        }
        let gemini = find("gemini").unwrap();
        assert_eq!(gemini.wire, Wire::Gemini);
        assert_eq!(gemini.auth, Auth::Header("x-goog-api-key"));
        assert_eq!(
            gemini.default_api_base,
            Some("https://generativelanguage.googleapis.com")
        );
        let azure = find("azure").unwrap();
        assert_eq!(azure.auth, Auth::Header("api-key"));
        assert_eq!(azure.chat_path, ChatPath::AzureDeployment);
        assert_eq!(azure.settings, Settings::Azure);
        assert_eq!(find("groq").unwrap().auth, Auth::Bearer);
        let bedrock = find("bedrock").unwrap();
        assert_eq!(bedrock.wire, Wire::Bedrock);
        assert_eq!(bedrock.settings, Settings::Bedrock);
        assert_eq!(bedrock.default_api_base, None);
        let hf = find("huggingface").unwrap();
        assert_eq!(
            hf.upstream_model("together/deepseek-ai/DeepSeek-R1", true),
            "deepseek-ai/DeepSeek-R1:together"
        );
        assert_eq!(
            hf.upstream_model("meta-llama/Llama-3.1-8B", true),
            "meta-llama/Llama-3.1-8B"
        );
        assert_eq!(
            hf.upstream_model("novita/moonshotai/Kimi-K2:fastest", true),
            "novita/moonshotai/Kimi-K2:fastest"
        );
        // Its own server: the name as written.
        assert_eq!(
            hf.upstream_model("together/deepseek-ai/DeepSeek-R1", false),
            "together/deepseek-ai/DeepSeek-R1"
        );
        assert_eq!(find("groq").unwrap().upstream_model("a/b/c", true), "a/b/c");
        let vertex = find("vertex_ai").unwrap();
        assert_eq!(vertex.settings, Settings::Vertex);
        assert_eq!(vertex.wire_for("gemini-2.5-flash"), Wire::Gemini);
        assert_eq!(vertex.wire_for("claude-sonnet-4@20250514"), Wire::Anthropic);
        assert_eq!(bedrock.wire_for("anthropic.claude-3-haiku"), Wire::Bedrock);
        for name in ["cohere", "cohere_chat"] {
            let cohere = find(name).unwrap();
            assert_eq!(cohere.wire, Wire::Cohere, "{name}");
            assert_eq!(cohere.auth, Auth::Bearer, "{name}");
            assert_eq!(cohere.settings, Settings::None, "{name}");
            assert_eq!(cohere.default_api_base, Some("https://api.cohere.com"));
        }
        for name in ["ollama", "ollama_chat"] {
            let ollama = find(name).unwrap();
            assert_eq!(ollama.wire, Wire::Ollama, "{name}");
            assert_eq!(ollama.auth, Auth::Bearer, "{name}");
            assert_eq!(ollama.settings, Settings::None, "{name}");
            assert_eq!(ollama.default_api_base, Some("http://localhost:11434"));
            assert!(!KNOWN_UNSUPPORTED.contains(&name));
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for wire in Wire::ALL {
            assert_eq!(Wire::from_name(wire.name()), Some(wire));
        }
        assert_eq!(Wire::from_name("bedrock"), Some(Wire::Bedrock));
        assert_eq!(Wire::from_name("vertex_ai"), None);
        assert_eq!(Wire::Anthropic.required_max_tokens(), Some(4096));
        assert_eq!(Wire::OpenAi.required_max_tokens(), None);
        assert_eq!(Wire::Gemini.required_max_tokens(), None);
        assert_eq!(Wire::Bedrock.required_max_tokens(), None);
        assert_eq!(Wire::from_name("cohere"), Some(Wire::Cohere));
        assert_eq!(Wire::Cohere.required_max_tokens(), None);
        assert_eq!(Wire::from_name("ollama"), Some(Wire::Ollama));
        assert_eq!(Wire::Ollama.required_max_tokens(), None);
    }

    #[test]
    fn default_bases_are_https_but_for_local_servers() {
        for provider in PROVIDERS {
            if let Some(base) = provider.default_api_base {
                assert!(
                    base.starts_with("https://") || base.starts_with("http://localhost:"),
                    "{}: {base}",
                    provider.name
                );
                assert!(!base.ends_with('/'), "{}: {base}", provider.name);
            }
        }
    }
}
