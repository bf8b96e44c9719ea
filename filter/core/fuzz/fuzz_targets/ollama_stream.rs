//! The Ollama -> OpenAI stream translation (`ResponseHandler::on_stream_chunk` of a plan for
//! an Ollama deployment) on arbitrary newline-delimited JSON cut at arbitrary points.
//!
//! Input: see `StreamInput` (options byte, chunking byte, stream). Checks:
//! - cut or whole, the client gets the same bytes and the same usage is recorded;
//! - the client gets well-formed OpenAI events only: `data: <JSON object>\n\n` chunks of
//!   `chat.completion.chunk` (with `"usage"` exactly when the client asked for it), at most
//!   one finish reason, at most one usage-only chunk, tool calls numbered 0, 1, ... in order,
//!   and the stream always ends, once, with `[DONE]` or an error object;
//! - the text the client reads is the `message.content` of the lines up to the one with
//!   `done: true` or an `error`, when every such line parses, and the usage recorded is the
//!   counts of the `done` line (a count left out is not reported).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::proto::ProviderKind;
use tollgate_core::Usage;
use tollgate_core_fuzz::{data_events, json_object, run_whole_and_cut, StreamInput};

/// The answer text and the usage of the lines up to the stream's end, read with a generic
/// JSON parser; `None` when a line before the end is not an answer object.
fn reference(stream: &[u8]) -> Option<(String, Usage)> {
    let mut text = String::new();
    for line in stream.split(|byte| *byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(line).ok()?;
        if !value.is_object() {
            return None;
        }
        if value.get("error").is_some_and(|error| !error.is_null()) {
            return Some((text, Usage::default()));
        }
        let content = &value["message"]["content"];
        match content {
            Value::String(piece) => text.push_str(piece),
            Value::Null => {}
            _ => return None,
        }
        if value["done"] == true {
            let usage = Usage {
                prompt_tokens: value["prompt_eval_count"].as_u64(),
                completion_tokens: value["eval_count"].as_u64(),
                ..Usage::default()
            };
            return Some((text, usage));
        }
    }
    Some((text, Usage::default()))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let (whole, usage) = run_whole_and_cut(ProviderKind::Ollama, &input);

    let events = data_events(&whole);
    let (last, chunks) = events
        .split_last()
        .expect("the stream always ends with an event");
    let mut text = String::new();
    let (mut finish_reasons, mut usage_chunks, mut tool_calls) = (0, 0, 0);
    for (index, payload) in chunks.iter().enumerate() {
        let chunk = json_object(payload.as_bytes());
        assert_eq!(
            chunk["object"], "chat.completion.chunk",
            "event {index}: {payload}"
        );
        assert_eq!(
            chunk.contains_key("usage"),
            input.include_usage,
            "event {index}: {payload}"
        );
        let choices = chunk["choices"].as_array().expect("choices is an array");
        if choices.is_empty() {
            usage_chunks += 1;
            assert!(
                input.include_usage && index + 2 == events.len(),
                "usage chunk at {index}"
            );
            let told = &chunk["usage"];
            assert_eq!(told["prompt_tokens"], usage.prompt_tokens.unwrap_or(0));
            assert_eq!(
                told["completion_tokens"],
                usage.completion_tokens.unwrap_or(0)
            );
            continue;
        }
        assert_eq!(choices.len(), 1, "{payload}");
        let choice = &choices[0];
        if !choice["finish_reason"].is_null() {
            finish_reasons += 1;
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if call.get("id").is_some() {
                assert_eq!(call["index"], tool_calls, "{payload}");
                tool_calls += 1;
            }
        }
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
    }
    assert!(
        finish_reasons <= 1 && usage_chunks <= 1,
        "{finish_reasons} finish reasons, {usage_chunks} usage chunks"
    );
    let failed = *last != "[DONE]";
    if failed {
        assert!(
            json_object(last.as_bytes())["error"].is_object(),
            "the last event: {last}"
        );
    } else {
        assert_eq!(
            finish_reasons, 1,
            "a stream that ends well has its finish reason"
        );
    }
    let bad_upstream = failed && last.contains("\"bad_upstream_response\"");
    if let Some((expected_text, expected_usage)) = reference(input.stream).filter(|_| !bad_upstream)
    {
        assert_eq!(text, expected_text);
        assert_eq!(usage, expected_usage);
    }
});
