//! Default request parameters of a deployment: LiteLLM's `litellm_params` `temperature`,
//! `max_tokens`, `stop`, ... are sent with every request to the deployment that does not
//! give them itself (the client's value always wins, as in LiteLLM's router).
//!
//! They are merged into the OpenAI request before translation, so every translator reads
//! them as if the client had sent them. A request that lacks none of them is not touched;
//! one that does is copied once, with the missing parameters written at the start of its
//! object.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::request::object_insert_point;

/// A request parameter a deployment may give a default for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `temperature`.
    Temperature,
    /// `top_p`.
    TopP,
    /// `max_tokens`.
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
    /// `stop`.
    Stop,
    /// `seed`.
    Seed,
    /// `frequency_penalty`.
    FrequencyPenalty,
    /// `presence_penalty`.
    PresencePenalty,
    /// `response_format`.
    ResponseFormat,
    /// `reasoning_effort`.
    ReasoningEffort,
}

impl Param {
    /// Every parameter, in the order defaults are written.
    pub const ALL: [Param; 10] = [
        Param::Temperature,
        Param::TopP,
        Param::MaxTokens,
        Param::MaxCompletionTokens,
        Param::Stop,
        Param::Seed,
        Param::FrequencyPenalty,
        Param::PresencePenalty,
        Param::ResponseFormat,
        Param::ReasoningEffort,
    ];

    /// The request member's name.
    pub const fn name(self) -> &'static str {
        match self {
            Param::Temperature => "temperature",
            Param::TopP => "top_p",
            Param::MaxTokens => "max_tokens",
            Param::MaxCompletionTokens => "max_completion_tokens",
            Param::Stop => "stop",
            Param::Seed => "seed",
            Param::FrequencyPenalty => "frequency_penalty",
            Param::PresencePenalty => "presence_penalty",
            Param::ResponseFormat => "response_format",
            Param::ReasoningEffort => "reasoning_effort",
        }
    }

    /// The parameter a member name names.
    pub fn from_name(name: &str) -> Option<Param> {
        Param::ALL.into_iter().find(|param| param.name() == name)
    }

    /// Whether the client gave this parameter, or one that stands for it: `max_tokens` and
    /// `max_completion_tokens` are one limit (OpenAI refuses both in one request).
    fn given_in(self, given: &GivenParams) -> bool {
        match self {
            Param::Temperature => given.temperature,
            Param::TopP => given.top_p,
            Param::MaxTokens | Param::MaxCompletionTokens => {
                given.max_tokens || given.max_completion_tokens
            }
            Param::Stop => given.stop,
            Param::Seed => given.seed,
            Param::FrequencyPenalty => given.frequency_penalty,
            Param::PresencePenalty => given.presence_penalty,
            Param::ResponseFormat => given.response_format,
            Param::ReasoningEffort => given.reasoning_effort,
        }
    }
}

/// Which parameters a request has, `null` included (a member sent as `null` is the client's
/// choice, and writing ours beside it would make a duplicate member).
#[derive(Deserialize, Default)]
#[serde(default)]
struct GivenParams {
    #[serde(deserialize_with = "present")]
    temperature: bool,
    #[serde(deserialize_with = "present")]
    top_p: bool,
    #[serde(deserialize_with = "present")]
    max_tokens: bool,
    #[serde(deserialize_with = "present")]
    max_completion_tokens: bool,
    #[serde(deserialize_with = "present")]
    stop: bool,
    #[serde(deserialize_with = "present")]
    seed: bool,
    #[serde(deserialize_with = "present")]
    frequency_penalty: bool,
    #[serde(deserialize_with = "present")]
    presence_penalty: bool,
    #[serde(deserialize_with = "present")]
    response_format: bool,
    #[serde(deserialize_with = "present")]
    reasoning_effort: bool,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// The defaults of one deployment, each kept as the member text it is written as.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefaultParams {
    /// `(param, "\"name\":value,")`, in [`Param::ALL`] order.
    members: Vec<(Param, String)>,
}

impl DefaultParams {
    /// The defaults of the control plane's JSON object (`""`: none). Members this filter
    /// does not know (a newer control plane's) are left out rather than refusing the
    /// deployment; the control plane reports at load what no Tollgate supports.
    pub fn parse(json: &str) -> Result<DefaultParams, String> {
        if json.is_empty() {
            return Ok(DefaultParams::default());
        }
        let object: std::collections::BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(json).map_err(|error| format!("default params: {error}"))?;
        let mut members: Vec<(Param, String)> = object
            .iter()
            .filter_map(|(name, value)| {
                let param = Param::from_name(name)?;
                Some((param, format!("\"{}\":{},", param.name(), value.get())))
            })
            .collect();
        members.sort_by_key(|(param, _)| Param::ALL.iter().position(|known| known == param));
        Ok(DefaultParams { members })
    }

    /// Whether the deployment has none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The request with the defaults it lacks, or `None` when it lacks none (the body is then
    /// sent as it is). `body` is a JSON object (the request was summarized).
    pub fn apply(&self, body: &[u8]) -> Result<Option<Vec<u8>>, GatewayError> {
        if self.members.is_empty() {
            return Ok(None);
        }
        let given: GivenParams =
            serde_json::from_slice(body).map_err(|error| GatewayError::InvalidRequest {
                message: format!("invalid request body: {error}"),
                param: None,
            })?;
        let missing: Vec<&str> = self
            .members
            .iter()
            .filter(|(param, _)| !param.given_in(&given))
            .map(|(_, member)| member.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let at = object_insert_point(body);
        let added: usize = missing.iter().map(|member| member.len()).sum();
        let mut merged = Vec::with_capacity(body.len() + added);
        merged.extend_from_slice(body.get(..at).unwrap_or_default());
        for member in missing {
            merged.extend_from_slice(member.as_bytes());
        }
        merged.extend_from_slice(body.get(at..).unwrap_or_default());
        Ok(Some(merged))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn merged(defaults: &str, body: &str) -> Option<String> {
        DefaultParams::parse(defaults)
            .unwrap()
            .apply(body.as_bytes())
            .unwrap()
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn missing_defaults_are_written_in_a_fixed_order() {
        assert_eq!(
            merged(
                r#"{"stop":["x"],"temperature":0.7,"max_tokens":4096}"#,
                BODY
            )
            .as_deref(),
            Some(
                r#"{"temperature":0.7,"max_tokens":4096,"stop":["x"],"model":"m","messages":[{"role":"user","content":"hi"}]}"#
            )
        );
    }

    #[test]
    fn the_clients_values_win_null_included() {
        let body = r#"{"model":"m","temperature":null,"max_completion_tokens":5,"messages":[]}"#;
        assert_eq!(
            merged(r#"{"temperature":0.7,"max_tokens":4096}"#, body),
            None
        );
        assert_eq!(
            merged(r#"{"temperature":0.7,"seed":1}"#, body).as_deref(),
            Some(
                r#"{"seed":1,"model":"m","temperature":null,"max_completion_tokens":5,"messages":[]}"#
            )
        );
    }

    #[test]
    fn no_defaults_leave_the_request_alone() {
        assert_eq!(merged("", BODY), None);
        assert_eq!(merged("{}", BODY), None);
        assert!(DefaultParams::parse("").unwrap().is_empty());
    }

    #[test]
    fn unknown_members_are_left_out_and_bad_json_is_an_error() {
        assert_eq!(
            merged(r#"{"temperature":1,"frobnicate":true}"#, BODY).as_deref(),
            Some(r#"{"temperature":1,"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        );
        assert!(DefaultParams::parse("[1]").is_err());
        assert!(DefaultParams::parse("{").is_err());
    }

    #[test]
    fn a_duplicate_member_is_a_clear_error() {
        let body = r#"{"model":"m","seed":1,"seed":2,"messages":[]}"#;
        let error = DefaultParams::parse(r#"{"seed":3}"#)
            .unwrap()
            .apply(body.as_bytes())
            .unwrap_err();
        assert_eq!(error.status(), 400);
    }
}
