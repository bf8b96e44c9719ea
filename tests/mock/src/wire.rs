//! Typed wire objects, serialized with their fields in the order the providers send them
//! (`"id"` first for OpenAI, `"type"` first for Anthropic). serde_json's `Value` would sort keys
//! alphabetically, and building `Value` trees per chunk would also be slower.

use bytes::Bytes;
use serde::{Serialize, Serializer};

/// A JSON field that can be absent, `null`, or a value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Value(v) => v.serialize(s),
            Field::Absent | Field::Null => s.serialize_none(),
        }
    }
}

pub(crate) fn to_json_bytes<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()))
}

/// `data: <json>\n\n`
pub(crate) fn sse_data<T: Serialize>(v: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut out, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_event<T: Serialize>(name: &str, v: &T) -> Bytes {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    if serde_json::to_writer(&mut out, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(crate) mod openai {
    use super::Field;
    use serde::Serialize;

    #[derive(Serialize)]
    pub(crate) struct ErrorBody<'a> {
        pub error: ErrorObject<'a>,
    }

    #[derive(Serialize)]
    pub(crate) struct ErrorObject<'a> {
        pub message: &'a str,
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub param: Option<&'a str>,
        pub code: Option<&'a str>,
    }

    #[derive(Serialize, Clone, Copy)]
    pub(crate) struct PromptDetails {
        pub cached_tokens: u64,
        pub audio_tokens: u64,
    }

    #[derive(Serialize, Clone, Copy)]
    pub(crate) struct CompletionDetails {
        pub reasoning_tokens: u64,
        pub audio_tokens: u64,
        pub accepted_prediction_tokens: u64,
        pub rejected_prediction_tokens: u64,
    }

    #[derive(Serialize, Clone, Copy)]
    pub(crate) struct Usage {
        pub prompt_tokens: u64,
        pub completion_tokens: u64,
        pub total_tokens: u64,
        pub prompt_tokens_details: PromptDetails,
        pub completion_tokens_details: CompletionDetails,
    }

    impl Usage {
        pub(crate) fn new(prompt: u64, completion: u64) -> Self {
            Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                prompt_tokens_details: PromptDetails {
                    cached_tokens: 0,
                    audio_tokens: 0,
                },
                completion_tokens_details: CompletionDetails {
                    reasoning_tokens: 0,
                    audio_tokens: 0,
                    accepted_prediction_tokens: 0,
                    rejected_prediction_tokens: 0,
                },
            }
        }
    }

    #[derive(Serialize)]
    pub(crate) struct Function<'a> {
        pub name: &'a str,
        pub arguments: &'a str,
    }

    #[derive(Serialize)]
    pub(crate) struct ToolCall<'a> {
        pub id: &'a str,
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub function: Function<'a>,
    }

    #[derive(Serialize)]
    pub(crate) struct Message<'a> {
        pub role: &'a str,
        pub content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tool_calls: Option<[ToolCall<'a>; 1]>,
        pub refusal: Option<&'a str>,
        pub annotations: [(); 0],
    }

    #[derive(Serialize)]
    pub(crate) struct Choice<'a> {
        pub index: u32,
        pub message: Message<'a>,
        pub logprobs: Option<()>,
        pub finish_reason: &'a str,
    }

    #[derive(Serialize)]
    pub(crate) struct Completion<'a> {
        pub id: &'a str,
        pub object: &'a str,
        pub created: u64,
        pub model: &'a str,
        pub choices: [Choice<'a>; 1],
        pub usage: Usage,
        pub service_tier: &'a str,
        pub system_fingerprint: &'a str,
    }

    #[derive(Serialize, Default)]
    pub(crate) struct DeltaFunction<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub name: Option<&'a str>,
        pub arguments: &'a str,
    }

    #[derive(Serialize)]
    pub(crate) struct DeltaToolCall<'a> {
        pub index: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<&'a str>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        pub kind: Option<&'a str>,
        pub function: DeltaFunction<'a>,
    }

    #[derive(Serialize, Default)]
    pub(crate) struct Delta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub role: Option<&'a str>,
        #[serde(skip_serializing_if = "Field::is_absent")]
        pub content: Field<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tool_calls: Option<[DeltaToolCall<'a>; 1]>,
        #[serde(skip_serializing_if = "Field::is_absent")]
        pub refusal: Field<&'a str>,
    }

    #[derive(Serialize)]
    pub(crate) struct ChunkChoice<'a> {
        pub index: u32,
        pub delta: Delta<'a>,
        pub logprobs: Option<()>,
        pub finish_reason: Option<&'a str>,
    }

    #[derive(Serialize)]
    pub(crate) struct Chunk<'a> {
        pub id: &'a str,
        pub object: &'a str,
        pub created: u64,
        pub model: &'a str,
        pub service_tier: &'a str,
        pub system_fingerprint: &'a str,
        pub choices: Vec<ChunkChoice<'a>>,
        #[serde(skip_serializing_if = "Field::is_absent")]
        pub usage: Field<Usage>,
    }
}

pub(crate) mod anthropic {
    use serde::Serialize;
    use serde_json::Value;

    #[derive(Serialize)]
    pub(crate) struct ErrorObject<'a> {
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub message: &'a str,
    }

    #[derive(Serialize)]
    pub(crate) struct ErrorBody<'a> {
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub error: ErrorObject<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub request_id: Option<&'a str>,
    }

    #[derive(Serialize, Clone, Copy)]
    pub(crate) struct Usage {
        pub input_tokens: u64,
        pub cache_creation_input_tokens: u64,
        pub cache_read_input_tokens: u64,
        pub output_tokens: u64,
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum Block<'a> {
        Text {
            text: &'a str,
        },
        ToolUse {
            id: &'a str,
            name: &'a str,
            input: &'a Value,
        },
    }

    #[derive(Serialize)]
    pub(crate) struct Message<'a> {
        pub id: &'a str,
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub role: &'a str,
        pub model: &'a str,
        pub content: Vec<Block<'a>>,
        pub stop_reason: Option<&'a str>,
        pub stop_sequence: Option<&'a str>,
        pub usage: Usage,
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum Delta<'a> {
        TextDelta { text: &'a str },
        InputJsonDelta { partial_json: &'a str },
    }

    #[derive(Serialize)]
    pub(crate) struct MessageDeltaBody<'a> {
        pub stop_reason: Option<&'a str>,
        pub stop_sequence: Option<&'a str>,
    }

    #[derive(Serialize)]
    pub(crate) struct OutputUsage {
        pub output_tokens: u64,
    }

    /// The data of every streaming event; serde puts `"type"` first.
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(crate) enum Event<'a> {
        MessageStart {
            message: Message<'a>,
        },
        ContentBlockStart {
            index: usize,
            content_block: Block<'a>,
        },
        Ping,
        ContentBlockDelta {
            index: usize,
            delta: Delta<'a>,
        },
        ContentBlockStop {
            index: usize,
        },
        MessageDelta {
            delta: MessageDeltaBody<'a>,
            usage: OutputUsage,
        },
        MessageStop,
        Error {
            error: ErrorObject<'a>,
        },
    }

    impl Event<'_> {
        pub(crate) fn name(&self) -> &'static str {
            match self {
                Event::MessageStart { .. } => "message_start",
                Event::ContentBlockStart { .. } => "content_block_start",
                Event::Ping => "ping",
                Event::ContentBlockDelta { .. } => "content_block_delta",
                Event::ContentBlockStop { .. } => "content_block_stop",
                Event::MessageDelta { .. } => "message_delta",
                Event::MessageStop => "message_stop",
                Event::Error { .. } => "error",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_and_tristate() {
        let d = openai::Delta {
            role: Some("assistant"),
            content: Field::Value(""),
            refusal: Field::Null,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"role":"assistant","content":"","refusal":null}"#
        );
        assert_eq!(
            serde_json::to_string(&openai::Delta::default()).unwrap(),
            "{}"
        );
        let e = anthropic::Event::ContentBlockStop { index: 2 };
        assert_eq!(
            &sse_event(e.name(), &e)[..],
            b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n"
        );
        let p = anthropic::Event::Ping;
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"type":"ping"}"#);
    }
}
