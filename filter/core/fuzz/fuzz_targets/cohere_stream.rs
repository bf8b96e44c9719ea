//! The Cohere -> OpenAI stream translation (`ResponseHandler::on_stream_chunk` of a plan for
//! a Cohere deployment) on arbitrary provider bytes cut at arbitrary points.
//!
//! Input: see `StreamInput` (options byte, chunking byte, stream). Checks:
//! - cut or whole, the client gets the same bytes and the same usage is recorded;
//! - the client gets well-formed OpenAI events only: `data: <JSON object>\n\n` chunks of
//!   `chat.completion.chunk` (with `"usage"` exactly when the client asked for it), at most
//!   one finish reason, at most one usage-only chunk, tool calls numbered 0, 1, ... in order,
//!   and the stream always ends, once, with `[DONE]` or an error object;
//! - the text the client reads is the text and the tool plan of the stream's events up to its
//!   message-end (thinking aside), when the stream parses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::proto::ProviderKind;
use tollgate_core::sse::{SseError, SseParser};
use tollgate_core_fuzz::{data_events, json_object, run_whole_and_cut, StreamInput};

/// The answer text of the events up to message-end, read with a generic JSON parser; `None`
/// when an event before the end is not JSON.
fn reference_text(stream: &[u8]) -> Option<String> {
    let mut text = String::new();
    let (mut ended, mut parses) = (false, true);
    let mut parser = SseParser::new(usize::MAX);
    parser
        .feed(stream, |event| {
            if ended || !parses || event.data.trim() == "[DONE]" {
                return Ok(());
            }
            let Ok(value) = serde_json::from_str::<Value>(event.data) else {
                parses = false;
                return Ok(());
            };
            let kind = value["type"].as_str().unwrap_or(event.event);
            let message = &value["delta"]["message"];
            match kind {
                "content-start" | "content-delta" => {
                    text.push_str(message["content"]["text"].as_str().unwrap_or_default());
                }
                "tool-plan-delta" => {
                    text.push_str(message["tool_plan"].as_str().unwrap_or_default());
                }
                "message-end" => ended = true,
                _ => {}
            }
            Ok::<(), SseError>(())
        })
        .unwrap_or_else(|error| panic!("unbounded parser: {error}"));
    parses.then_some(text)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let (whole, _) = run_whole_and_cut(ProviderKind::Cohere, &input);

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
            assert!(chunk["usage"].is_object(), "{payload}");
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
    if let Some(expected) = reference_text(input.stream).filter(|_| !bad_upstream) {
        assert_eq!(text, expected);
    }
});
