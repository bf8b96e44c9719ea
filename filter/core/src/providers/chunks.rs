//! The OpenAI chat completion stream every translator whose provider is not OpenAI writes:
//! one role chunk first, then text and tool-call deltas (tool calls numbered 0, 1, ... in
//! the order the provider started them), one chunk with the finish reason, the usage chunk
//! when the client asked for it (`stream_options.include_usage`), and `data: [DONE]`.
//! A translator reads its provider's events and calls [`ChunkWriter`]; the order and the
//! shape of what the client gets are kept here, once.

use crate::openai_types::{self as oa, ChunkFrame};
use crate::sse::{write_data_event, DONE_EVENT};
use crate::GatewayError;

/// Writes one OpenAI chat completion stream.
#[derive(Debug)]
pub struct ChunkWriter {
    created: u64,
    include_usage: bool,
    /// The completion id and model every chunk carries (the provider's, once it says).
    id: String,
    model: String,
    /// What every chunk shares; built from id and model when the first chunk is written.
    frame: Option<ChunkFrame>,
    /// The role chunk was sent.
    started: bool,
    /// The chunk with `finish_reason` was sent.
    finished: bool,
    /// The stream is over ([DONE] or an error event was sent): nothing more is written.
    done: bool,
    /// The provider's key of each tool call started (a content block index, say) and the
    /// OpenAI tool call index it got.
    tool_calls: Vec<(u64, u32)>,
}

impl ChunkWriter {
    /// A stream created at `created` (unix s), with the usage chunk if `include_usage`.
    pub fn new(created: u64, include_usage: bool) -> Self {
        ChunkWriter {
            created,
            include_usage,
            id: String::new(),
            model: String::new(),
            frame: None,
            started: false,
            finished: false,
            done: false,
            tool_calls: Vec::new(),
        }
    }

    /// Sets the completion id of the chunks written from now on.
    pub fn set_id(&mut self, id: String) {
        self.id = id;
        self.frame = None;
    }

    /// Sets the model of the chunks written from now on.
    pub fn set_model(&mut self, model: String) {
        self.model = model;
        self.frame = None;
    }

    /// Whether the stream is over: the translator drops what the provider still sends.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn frame(&mut self) -> &ChunkFrame {
        self.frame.get_or_insert_with(|| {
            ChunkFrame::new(&self.id, self.created, &self.model, self.include_usage)
        })
    }

    fn write(
        &mut self,
        out: &mut Vec<u8>,
        delta: oa::Delta<'_>,
        finish_reason: Option<&str>,
    ) -> Result<(), GatewayError> {
        self.frame()
            .write(out, &delta, finish_reason)
            .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))
    }

    /// Sends the role chunk (`role: assistant`, empty content) if it has not gone out yet.
    pub fn start(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let delta = oa::Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        };
        self.write(out, delta, None)
    }

    /// A piece of the answer's text (nothing for an empty one).
    pub fn text(&mut self, out: &mut Vec<u8>, text: &str) -> Result<(), GatewayError> {
        if text.is_empty() {
            return Ok(());
        }
        self.start(out)?;
        let delta = oa::Delta {
            content: Some(text),
            ..oa::Delta::default()
        };
        self.write(out, delta, None)
    }

    /// [`Self::text`] for text that is already the body of a JSON string (see
    /// [`oa::is_json_string_body`]): copied, not escaped again.
    pub fn escaped_text(
        &mut self,
        out: &mut Vec<u8>,
        escaped_text: &str,
    ) -> Result<(), GatewayError> {
        if escaped_text.is_empty() {
            return Ok(());
        }
        self.start(out)?;
        self.frame().write_escaped_content(out, escaped_text);
        Ok(())
    }

    /// A tool call starts: it gets the next OpenAI index, and its id and name go out (with
    /// empty arguments). `key` is how the provider names it in later deltas.
    pub fn tool_call_start(
        &mut self,
        out: &mut Vec<u8>,
        key: u64,
        id: &str,
        name: &str,
    ) -> Result<(), GatewayError> {
        let index = u32::try_from(self.tool_calls.len()).unwrap_or(u32::MAX);
        self.tool_calls.push((key, index));
        self.tool_delta(
            out,
            oa::ToolCallDelta {
                index,
                id: Some(id),
                kind: Some("function"),
                function: oa::FunctionDelta {
                    name: Some(name),
                    arguments: Some(""),
                },
            },
        )
    }

    /// A piece of the arguments of the tool call the provider calls `key`. A piece for a
    /// call that was never started, or an empty one, is dropped.
    pub fn tool_call_arguments(
        &mut self,
        out: &mut Vec<u8>,
        key: u64,
        arguments: &str,
    ) -> Result<(), GatewayError> {
        let index = self
            .tool_calls
            .iter()
            .find(|(started, _)| *started == key)
            .map(|(_, index)| *index);
        match index {
            Some(index) if !arguments.is_empty() => self.tool_delta(
                out,
                oa::ToolCallDelta {
                    index,
                    id: None,
                    kind: None,
                    function: oa::FunctionDelta {
                        name: None,
                        arguments: Some(arguments),
                    },
                },
            ),
            _ => Ok(()),
        }
    }

    fn tool_delta(
        &mut self,
        out: &mut Vec<u8>,
        call: oa::ToolCallDelta<'_>,
    ) -> Result<(), GatewayError> {
        self.start(out)?;
        let delta = oa::Delta {
            tool_calls: Some(std::slice::from_ref(&call)),
            ..oa::Delta::default()
        };
        self.write(out, delta, None)
    }

    /// The chunk with the finish reason, once (a second call writes nothing).
    pub fn finish(&mut self, out: &mut Vec<u8>, reason: &'static str) -> Result<(), GatewayError> {
        if self.finished {
            return Ok(());
        }
        self.start(out)?;
        self.finished = true;
        self.write(out, oa::Delta::default(), Some(reason))
    }

    /// Ends the stream: the finish chunk if none went out (`stop`), the usage chunk with
    /// `usage` if the client asked for it, and `[DONE]`.
    pub fn end(
        &mut self,
        out: &mut Vec<u8>,
        usage: oa::CompletionUsage,
    ) -> Result<(), GatewayError> {
        self.finish(out, "stop")?;
        if self.include_usage {
            let chunk = oa::ChatCompletionChunk {
                id: &self.id,
                object: oa::CHAT_COMPLETION_CHUNK,
                created: self.created,
                model: &self.model,
                choices: &[],
                usage: Some(Some(usage)),
            };
            out.extend_from_slice(b"data: ");
            serde_json::to_writer(&mut *out, &chunk)
                .map_err(|error| GatewayError::BadUpstreamResponse(error.to_string()))?;
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(DONE_EVENT);
        self.done = true;
        Ok(())
    }

    /// Ends the stream with an OpenAI error event (`error_json`, an error body), as OpenAI
    /// does when a stream fails: no finish chunk and no `[DONE]`.
    pub fn fail(&mut self, out: &mut Vec<u8>, error_json: &[u8]) {
        write_data_event(out, error_json);
        self.done = true;
    }

    /// Ends with the `upstream_stream_cut` error event a stream gets when the provider's
    /// stream ended before the answer did.
    pub fn fail_cut(&mut self, out: &mut Vec<u8>) {
        self.fail(
            out,
            &crate::error::error_body(
                "The upstream stream ended before the response was complete.",
                "api_error",
                None,
                Some("upstream_stream_cut"),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").unwrap().to_string())
            .collect()
    }

    #[test]
    fn writes_role_text_tools_finish_usage_and_done_in_order() {
        let mut writer = ChunkWriter::new(7, true);
        writer.set_id("msg_1".into());
        writer.set_model("m".into());
        let mut out = Vec::new();
        writer.text(&mut out, "").unwrap();
        assert!(
            out.is_empty(),
            "an empty text writes nothing, not even the role"
        );
        writer.text(&mut out, "Hi \"you\"").unwrap();
        writer.escaped_text(&mut out, "\\n").unwrap();
        writer.tool_call_start(&mut out, 5, "call_a", "f").unwrap();
        writer.tool_call_arguments(&mut out, 5, "{\"x\":").unwrap();
        writer.tool_call_arguments(&mut out, 9, "dropped").unwrap();
        writer.tool_call_arguments(&mut out, 5, "").unwrap();
        writer.tool_call_start(&mut out, 6, "call_b", "g").unwrap();
        writer.finish(&mut out, "tool_calls").unwrap();
        writer.finish(&mut out, "stop").unwrap();
        writer
            .end(
                &mut out,
                oa::CompletionUsage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7,
                    prompt_tokens_details: oa::PromptTokensDetails { cached_tokens: 0 },
                    completion_tokens_details: None,
                    cost: None,
                },
            )
            .unwrap();
        assert!(writer.is_done());
        let head = r#"{"id":"msg_1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":"#;
        let tail = r#","logprobs":null,"finish_reason":null}],"usage":null}"#;
        let events = events(&out);
        let expected = [
            format!(r#"{head}{{"role":"assistant","content":""}}{tail}"#),
            format!(r#"{head}{{"content":"Hi \"you\""}}{tail}"#),
            format!(r#"{head}{{"content":"\n"}}{tail}"#),
            format!(
                r#"{head}{{"tool_calls":[{{"index":0,"id":"call_a","type":"function","function":{{"name":"f","arguments":""}}}}]}}{tail}"#
            ),
            format!(
                r#"{head}{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\"x\":"}}}}]}}{tail}"#
            ),
            format!(
                r#"{head}{{"tool_calls":[{{"index":1,"id":"call_b","type":"function","function":{{"name":"g","arguments":""}}}}]}}{tail}"#
            ),
            format!(r#"{head}{{}},"logprobs":null,"finish_reason":"tool_calls"}}],"usage":null}}"#),
        ];
        assert_eq!(events[..expected.len()], expected);
        let usage: serde_json::Value = serde_json::from_str(&events[expected.len()]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
        assert_eq!(events[expected.len() + 1], "[DONE]");
        assert_eq!(events.len(), expected.len() + 2);
    }

    #[test]
    fn a_failed_stream_ends_with_the_error_alone() {
        let mut writer = ChunkWriter::new(1, false);
        let mut out = Vec::new();
        writer.text(&mut out, "partial").unwrap();
        writer.fail(&mut out, br#"{"error":{"message":"x"}}"#);
        assert!(writer.is_done());
        // Role, text, the error: no finish chunk, no [DONE].
        let events = events(&out);
        assert_eq!(events.len(), 3);
        assert!(
            !events[1].contains("\"usage\""),
            "no usage field unless asked"
        );
        assert_eq!(events[2], r#"{"error":{"message":"x"}}"#);
    }
}
