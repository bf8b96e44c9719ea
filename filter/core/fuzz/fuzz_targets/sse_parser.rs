//! `SseParser::feed` on arbitrary bytes cut at arbitrary points, with a small event bound.
//!
//! Input: one byte for the bound (`4 * byte` bytes; 255: none), one for the chunking, then
//! the stream. Checked against a plain reference parser of the whole stream (the WHATWG
//! event-stream rules the parser implements, without the byte-order mark):
//! - the events, their names, data and end offsets are the reference's, however the stream is
//!   cut (an event whose `\r\n` is cut between its two bytes ends after the `\r`);
//! - a feed fails exactly when the undispatched bytes it leaves (the unfinished line and the
//!   data lines of the unfinished event) exceed the bound, and then with `EventTooLarge`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::sse::{SseError, SseParser};
use tollgate_core_fuzz::chunks;

/// One event as the reference and the checks compare it: name, data, and the offset in the
/// whole stream just past the blank line that ended it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event: String,
    data: String,
    end: usize,
}

/// What the reference makes of a stream: its events, and how many bytes a parser must still
/// hold for the unfinished event (its unfinished line, raw, and its data lines, decoded and
/// joined with `\n`).
#[derive(Debug)]
struct Reference {
    events: Vec<Event>,
    pending: usize,
}

fn reference(stream: &[u8]) -> Reference {
    let mut events = Vec::new();
    let (mut event, mut data, mut has_data) = (String::new(), String::new(), false);
    let mut at = 0;
    while let Some(found) = stream[at..].iter().position(|b| *b == b'\n' || *b == b'\r') {
        let line = &stream[at..at + found];
        let mut next = at + found + 1;
        if stream[at + found] == b'\r' && stream.get(next) == Some(&b'\n') {
            next += 1;
        }
        if line.is_empty() {
            if has_data {
                events.push(Event {
                    event: event.clone(),
                    data: data.clone(),
                    end: next,
                });
            }
            event.clear();
            data.clear();
            has_data = false;
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &[][..]),
            };
            match field {
                b"data" => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(&String::from_utf8_lossy(value));
                    has_data = true;
                }
                b"event" => event = String::from_utf8_lossy(value).into_owned(),
                _ => {}
            }
        }
        at = next;
    }
    Reference {
        events,
        pending: stream.len() - at + data.len(),
    }
}

/// Whether `got` is `expected`, allowing an event to end after the `\r` of a `\r\n` cut
/// between two chunks.
fn same_events(stream: &[u8], got: &[Event], expected: &[Event]) -> bool {
    got.len() == expected.len()
        && got.iter().zip(expected).all(|(got, expected)| {
            got.event == expected.event
                && got.data == expected.data
                && (got.end == expected.end
                    || (got.end + 1 == expected.end
                        && stream.get(got.end - 1..expected.end) == Some(b"\r\n")))
        })
}

/// Feeds `chunks` (which make up `stream`) to a parser bounded at `max`; returns the events
/// and the index of the chunk whose feed failed, if one did.
fn parse(stream: &[u8], chunks: &[&[u8]], max: usize) -> (Vec<Event>, Option<usize>) {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    let mut offset = 0;
    for (index, chunk) in chunks.iter().enumerate() {
        let fed = parser.feed(chunk, |event| {
            assert!(event.end >= 1 && event.end <= chunk.len(), "end {}", event.end);
            assert!(
                matches!(chunk[event.end - 1], b'\n' | b'\r'),
                "an event ends at byte {} of its chunk, not after a line terminator",
                event.end
            );
            events.push(Event {
                event: event.event.to_string(),
                data: event.data.to_string(),
                end: offset + event.end,
            });
            Ok::<(), SseError>(())
        });
        offset += chunk.len();
        match fed {
            Ok(()) => {}
            Err(SseError::EventTooLarge(bound)) => {
                assert_eq!(bound, max);
                return (events, Some(index));
            }
        }
    }
    assert_eq!(offset, stream.len());
    (events, None)
}

fuzz_target!(|data: &[u8]| {
    let [bound, chunking, stream @ ..] = data else {
        return;
    };
    let max = if *bound == u8::MAX {
        usize::MAX
    } else {
        4 * usize::from(*bound)
    };
    let whole = reference(stream);

    // Fed whole: every event, and an error only for an unfinished event over the bound.
    let (events, failed) = parse(stream, &[stream], max);
    assert!(same_events(stream, &events, &whole.events), "whole feed: {events:?} != {:?}", whole.events);
    assert_eq!(failed.is_some(), whole.pending > max, "whole feed, pending {}", whole.pending);

    // Cut: the same events; a failure exactly where the bytes held first exceed the bound.
    let chunks = chunks(*chunking, stream);
    let (events, failed) = parse(stream, &chunks, max);
    let fed = match failed {
        Some(index) => chunks[..=index].iter().map(|chunk| chunk.len()).sum(),
        None => stream.len(),
    };
    let prefix = reference(&stream[..fed]);
    assert!(same_events(stream, &events, &prefix.events), "cut feed: {events:?} != {:?}", prefix.events);
    assert_eq!(failed.is_some(), prefix.pending > max, "cut feed, pending {}", prefix.pending);
    // Earlier feeds did not fail, so they held no more than the bound (checked for a bounded
    // number of cuts: each check parses the prefix again).
    if chunks.len() <= 64 {
        let mut offset = 0;
        for chunk in &chunks[..failed.unwrap_or(chunks.len())] {
            offset += chunk.len();
            let pending = reference(&stream[..offset]).pending;
            assert!(pending <= max, "a feed held {pending} bytes over the bound {max}");
        }
    }
});
