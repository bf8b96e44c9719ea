//! The Bedrock ConverseStream -> OpenAI stream translation (`ResponseHandler::on_stream_chunk`
//! of a plan for a Bedrock deployment) on arbitrary provider bytes (AWS event stream frames,
//! or anything else) cut at arbitrary points.
//!
//! Input: see `StreamInput` (options byte, chunking byte, stream). Checks:
//! - cut or whole, the client gets the same bytes and the same usage is recorded;
//! - the client gets well-formed OpenAI events only: `data: <JSON object>\n\n` chunks of
//!   `chat.completion.chunk` (with `"usage"` exactly when the client asked for it), at most
//!   one finish reason, at most one usage-only chunk, and the stream always ends, once, with
//!   `[DONE]` or an error object;
//! - the text the client reads is the text of the stream's `contentBlockDelta` events up to
//!   its end, when every frame decodes (read with the fuzz crate's own reading of the frames
//!   and a generic JSON parser).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::aws::eventstream::{Decoder, MessageType};
use tollgate_core::proto::ProviderKind;
use tollgate_core_fuzz::{data_events, json_object, run_whole_and_cut, StreamInput};

/// The text of the deltas up to the stream's end (`metadata`, an exception or an error);
/// `None` when a frame does not decode or an event before the end is not a JSON object.
fn reference_text(stream: &[u8]) -> Option<String> {
    let mut decoder = Decoder::with_max_message_bytes(usize::MAX);
    decoder.push(stream);
    let mut text = String::new();
    let mut stopped = false;
    loop {
        let message = decoder.next_message().ok()?;
        let Some(message) = message else {
            break;
        };
        match message.message_type() {
            Some(MessageType::Event) => {}
            Some(MessageType::Exception | MessageType::Error) => return Some(text),
            _ => continue,
        }
        let Some(event_type) = message.event_type() else {
            continue;
        };
        let value: Value = serde_json::from_slice(message.payload()).ok()?;
        value.as_object()?;
        match event_type {
            "contentBlockDelta" => {
                if let Some(piece) = value["delta"]["text"].as_str() {
                    text.push_str(piece);
                }
            }
            "messageStop" => stopped = true,
            "metadata" if stopped => return Some(text),
            "metadata" => {}
            _ => {}
        }
    }
    decoder.finish().ok()?;
    Some(text)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let (whole, _) = run_whole_and_cut(ProviderKind::Bedrock, &input);

    let events = data_events(&whole);
    let (last, chunks) = events
        .split_last()
        .expect("the stream always ends with an event");
    let mut text = String::new();
    let (mut finish_reasons, mut usage_chunks) = (0, 0);
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
    }
    let bad_upstream = failed && last.contains("\"bad_upstream_response\"");
    if let Some(expected) = reference_text(input.stream).filter(|_| !bad_upstream) {
        assert_eq!(text, expected);
    }
});
