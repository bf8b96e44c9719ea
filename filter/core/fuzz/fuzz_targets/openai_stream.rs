//! The OpenAI pass-through stream (`ResponseHandler::on_stream_chunk` of a plan for an
//! OpenAI deployment) on arbitrary provider bytes cut at arbitrary points.
//!
//! Input: see `StreamInput` (options byte, chunking byte, stream). Checks:
//! - cut or whole, the client gets the same bytes and the same usage is recorded;
//! - when the client asked for the usage chunk, the stream passes untouched;
//! - otherwise the client gets the stream without the lines of the usage-only chunks
//!   (`"choices":[]` and a usage object) the gateway forced on, byte for byte, and nothing
//!   else is changed;
//! - the usage recorded is every usage object of the stream merged in order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use tollgate_core::proto::ProviderKind;
use tollgate_core::sse::{SseError, SseParser};
use tollgate_core::Usage;
use tollgate_core_fuzz::{run_whole_and_cut, ReferenceUsage, StreamInput};

#[derive(Deserialize)]
struct ReferenceChunk {
    usage: Option<ReferenceUsage>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// What the client must get when the usage chunk is stripped, and the usage to record.
fn reference(stream: &[u8], strip: bool) -> (Vec<u8>, Usage) {
    let mut usage = Usage::default();
    let mut client = Vec::new();
    let mut kept_from = 0;
    let mut parser = SseParser::new(usize::MAX);
    parser
        .feed(stream, |event| {
            let mut usage_only = false;
            if let Ok(chunk) = serde_json::from_str::<ReferenceChunk>(event.data) {
                if let Some(reported) = chunk.usage {
                    usage.merge(reported.into());
                    usage_only = chunk.choices.is_some_and(|choices| choices.is_empty());
                }
            }
            if strip && usage_only {
                // The event's own lines go; blank lines and comments before it stay.
                let start = event.start.expect("a whole feed lends every start");
                client.extend_from_slice(&stream[kept_from..start]);
                kept_from = event.end;
            }
            Ok::<(), SseError>(())
        })
        .unwrap_or_else(|error| panic!("unbounded parser: {error}"));
    client.extend_from_slice(&stream[kept_from..]);
    (client, usage)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = StreamInput::parse(data) else {
        return;
    };
    let (whole, recorded) = run_whole_and_cut(ProviderKind::Openai, &input);

    let (expected, usage) = reference(input.stream, !input.include_usage);
    assert!(
        whole == expected,
        "got:\n{}\nexpected:\n{}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(recorded, usage);
});
