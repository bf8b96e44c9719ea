//! OpenAI and every OpenAI-compatible server (vLLM, Ollama's /v1, LM Studio, Groq ...).
//!
//! The request passes through with two surgical edits and no re-serialisation: the model
//! name becomes the deployment's, and streams get `stream_options.include_usage` forced on so
//! tokens are always counted. When the client did not ask for that usage chunk, the response
//! side removes it again.

use serde::Deserialize;

use crate::providers::{openai_shaped_error, ChunkOutput, ProviderResponse, UpstreamRequest};
use crate::request::{apply_edits, object_insert_point, ChatRequestSummary, Edit};
use crate::snapshot::Deployment;
use crate::sse::{SseEvent, SseParser};
use crate::{GatewayError, Usage};

/// Builds the upstream request.
pub fn build_request(
    summary: &ChatRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
) -> Result<UpstreamRequest, GatewayError> {
    let mut edits = Vec::with_capacity(2);
    if summary.model != deployment.upstream_model {
        edits.push(Edit {
            range: summary.model_span.clone(),
            bytes: json_string(&deployment.upstream_model),
        });
    }
    if summary.stream && !summary.include_usage {
        match (&summary.stream_options_span, summary.stream_options) {
            (Some(span), Some(raw)) => {
                let mut options: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(raw.get()).map_err(|_| {
                        GatewayError::invalid("stream_options", "stream_options must be an object")
                    })?;
                options.insert("include_usage".into(), serde_json::Value::Bool(true));
                edits.push(Edit {
                    range: span.clone(),
                    bytes: serde_json::to_vec(&options).map_err(|error| {
                        GatewayError::invalid("stream_options", error.to_string())
                    })?,
                });
            }
            _ => {
                let at = object_insert_point(body);
                edits.push(Edit {
                    range: at..at,
                    bytes: br#""stream_options":{"include_usage":true},"#.to_vec(),
                });
            }
        }
    }
    let body = if edits.is_empty() {
        body.to_vec()
    } else {
        apply_edits(body, &mut edits)
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        headers.push(("authorization", format!("Bearer {}", deployment.api_key)));
    }
    Ok(UpstreamRequest {
        path: "/chat/completions".to_string(),
        headers,
        body,
    })
}

fn json_string(value: &str) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// OpenAI's usage object.
#[derive(Debug, Deserialize)]
pub struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptTokensDetails {
    cached_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(usage: OpenAiUsage) -> Self {
        Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_prompt_tokens: usage
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens),
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    usage: Option<OpenAiUsage>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// Whether a stream chunk may report usage: it has a `"usage"` key whose value is not
/// `null` (OpenAI sends `"usage":null` on every chunk when include_usage is on).
fn may_carry_usage(data: &[u8]) -> bool {
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let rest = data.get(at + 7..).unwrap_or_default().trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            return true;
        };
        !rest.trim_ascii_start().starts_with(b"null")
    })
}

/// Response side of an OpenAI-compatible request.
#[derive(Debug)]
pub struct OpenAiResponse {
    /// The gateway forced include_usage; the usage-only chunk must not reach the client.
    strip_usage_chunk: bool,
    parser: SseParser,
    events: Vec<SseEvent>,
}

impl OpenAiResponse {
    /// Response side for a request sent with `stream` and the client's `include_usage`.
    pub fn new(stream: bool, client_include_usage: bool) -> Self {
        OpenAiResponse {
            strip_usage_chunk: stream && !client_include_usage,
            parser: SseParser::default(),
            events: Vec::new(),
        }
    }
}

impl ProviderResponse for OpenAiResponse {
    fn rewrites_body(&self) -> bool {
        false
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        // A compatible server's odd body still reaches the client; only the count is lost.
        if let Ok(UsageOnly {
            usage: Some(reported),
        }) = serde_json::from_slice::<UsageOnly>(body)
        {
            usage.merge(reported.into());
        }
        Ok(None)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        openai_shaped_error(status, body)
    }

    fn translate_stream(
        &mut self,
        chunk: &[u8],
        _end_of_stream: bool,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError> {
        self.events.clear();
        self.parser
            .feed(chunk, &mut self.events)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))?;
        for event in &self.events {
            let mut usage_only_chunk = false;
            // Most chunks carry no usage (or `"usage":null`); skip the parse for them.
            if may_carry_usage(event.data.as_bytes()) {
                if let Ok(parsed) = serde_json::from_str::<ChunkUsage>(&event.data) {
                    if let Some(reported) = parsed.usage {
                        usage.merge(reported.into());
                        usage_only_chunk = parsed.choices.is_some_and(|choices| choices.is_empty());
                    }
                }
            }
            if self.strip_usage_chunk && !usage_only_chunk {
                if !event.event.is_empty() {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(event.event.as_bytes());
                    out.push(b'\n');
                }
                crate::sse::write_data_event(out, event.data.as_bytes());
            }
        }
        Ok(if self.strip_usage_chunk {
            ChunkOutput::Replaced
        } else {
            ChunkOutput::Unchanged
        })
    }
}

#[cfg(test)]
mod tests {
    use super::may_carry_usage;

    #[test]
    fn usage_null_chunks_skip_the_parse() {
        assert!(!may_carry_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!may_carry_usage(br#"{"choices":[], "usage" : null }"#));
        assert!(!may_carry_usage(br#"{"choices":[]}"#));
        assert!(may_carry_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        // Text that mentions "usage" and a real usage object later.
        assert!(may_carry_usage(
            br#"{"choices":[{"delta":{"content":"\"usage\":null"}}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(may_carry_usage(br#"{"usage""#));
    }
}
