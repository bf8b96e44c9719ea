//! `SseParser::feed` on arbitrary bytes cut at arbitrary points, with a small event bound.
//!
//! Input: one byte for the bound (`4 * byte` bytes; 255: none), one for the chunking, then
//! the stream, fed whole and cut. Checked against a plain reference parser of the whole
//! stream (the WHATWG event-stream rules the parser implements, without the byte-order mark):
//! - every event with data is dispatched in the chunk holding its blank line, with the
//!   reference's name, data, start and end offsets; `last_event_end` and `has_pending` say
//!   what the reference says after every chunk;
//! - the bound holds: a feed that returns has held no event (its raw lines, or its decoded
//!   data) over the bound at the end of the chunk, and no line of an event ended over it;
//! - a feed fails only with `EventTooLarge`, and only in a chunk where an event did grow over
//!   the bound.
//!
//! Events are compared as owned values, and the feed stops at the first failure.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::sse::{SseError, SseParser};
use tollgate_core_fuzz::chunks;

/// One dispatched event: the chunk it was dispatched in and what the parser lent.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    chunk: usize,
    event: String,
    data: String,
    start: Option<usize>,
    end: usize,
}

/// An event of the reference, in offsets of the whole stream.
#[derive(Debug)]
struct ReferenceEvent {
    /// Name and data; `None` for an event without data (which ends, but is not dispatched).
    dispatched: Option<(String, String)>,
    /// Where its first line starts.
    start: usize,
    /// The line terminator of its blank line, and the offset past that terminator.
    terminator: usize,
    end: usize,
}

/// What a parser holds when a chunk ends at some offset of the stream.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// The larger of the event's raw bytes (its lines, terminators left out, and its
    /// unfinished line) and its data as decoded.
    bytes: usize,
    /// Whether it holds part of an event: an unfinished line, data, or a name.
    pending: bool,
}

#[derive(Debug)]
struct Reference {
    events: Vec<ReferenceEvent>,
    /// By offset (`0..=len`): what is held when a chunk ends there.
    held: Vec<Held>,
    /// Every line of an event: its terminator and the raw bytes of the event's lines up to
    /// and with it, which the parser checks against the bound when it reads the terminator.
    lines: Vec<(usize, usize)>,
}

fn reference(stream: &[u8]) -> Reference {
    let mut events = Vec::new();
    let mut held = vec![Held::default(); stream.len() + 1];
    let mut lines = Vec::new();
    // The event being read.
    let (mut name, mut data, mut has_data) = (String::new(), String::new(), false);
    let (mut start, mut raw) = (None, 0);
    let mut at = 0;
    loop {
        let found = stream[at..].iter().position(|b| *b == b'\n' || *b == b'\r');
        let line_end = found.map_or(stream.len(), |found| at + found);
        // Cut inside the line (or before its terminator): the line so far is held raw.
        for (read, held) in held[at..=line_end].iter_mut().enumerate() {
            *held = Held {
                bytes: (raw + read).max(data.len()),
                pending: read > 0 || has_data || !name.is_empty(),
            };
        }
        if found.is_none() {
            break;
        }
        let mut next = line_end + 1;
        if stream[line_end] == b'\r' && stream.get(next) == Some(&b'\n') {
            next += 1;
        }
        let line = &stream[at..line_end];
        if line.is_empty() {
            if let Some(start) = start.take() {
                events.push(ReferenceEvent {
                    dispatched: has_data.then(|| (name.clone(), data.clone())),
                    start,
                    terminator: line_end,
                    end: next,
                });
            }
            name.clear();
            data.clear();
            has_data = false;
            raw = 0;
        } else {
            start.get_or_insert(at);
            raw += line.len();
            lines.push((line_end, raw));
            if line[0] != b':' {
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
                    b"event" => name = String::from_utf8_lossy(value).into_owned(),
                    _ => {}
                }
            }
        }
        // Cut after the terminator (or between the `\r` and `\n` of one): the line is read.
        held[line_end + 1..=next].fill(Held {
            bytes: raw.max(data.len()),
            pending: has_data || !name.is_empty(),
        });
        at = next;
    }
    Reference {
        events,
        held,
        lines,
    }
}

/// Checks a feed of `chunks` (which make up `stream`) to a parser bounded at `max` against
/// the reference.
fn check(stream: &[u8], reference: &Reference, chunks: &[&[u8]], max: usize) {
    // Chunk `index` spans `offsets[index]..offsets[index + 1]`.
    let mut offsets = vec![0];
    for chunk in chunks {
        offsets.push(offsets[offsets.len() - 1] + chunk.len());
    }
    assert_eq!(offsets[chunks.len()], stream.len());
    let chunk_of = |offset: usize| offsets.partition_point(|start| *start <= offset) - 1;

    let expected: Vec<Event> = reference
        .events
        .iter()
        .filter_map(|event| {
            let (name, data) = event.dispatched.clone()?;
            let chunk = chunk_of(event.terminator);
            let (from, to) = (offsets[chunk], offsets[chunk + 1]);
            Some(Event {
                chunk,
                event: name,
                data,
                start: (event.start >= from).then(|| event.start - from),
                end: event.end.min(to) - from,
            })
        })
        .collect();

    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let (from, to) = (offsets[index], offsets[index + 1]);
        let fed = parser.feed(chunk, |event| {
            events.push(Event {
                chunk: index,
                event: event.event.to_string(),
                data: event.data.to_string(),
                start: event.start,
                end: event.end,
            });
            Ok::<(), SseError>(())
        });
        let grew_over = reference.held[from..=to]
            .iter()
            .any(|held| held.bytes > max);
        match fed {
            Ok(()) => {
                let held = reference.held[to];
                assert!(
                    held.bytes <= max,
                    "chunk {index} returned holding {} bytes over the bound {max}",
                    held.bytes
                );
                for (terminator, raw) in &reference.lines {
                    if (from..to).contains(terminator) {
                        assert!(
                            *raw <= max,
                            "a line ending at {terminator} made its event {raw} bytes, over {max}"
                        );
                    }
                }
                assert_eq!(
                    parser.has_pending(),
                    held.pending,
                    "pending after chunk {index}"
                );
                let last_end = reference
                    .events
                    .iter()
                    .rfind(|event| (from..to).contains(&event.terminator))
                    .map(|event| event.end.min(to) - from);
                assert_eq!(
                    parser.last_event_end(),
                    last_end,
                    "last event end in chunk {index}"
                );
            }
            Err(SseError::EventTooLarge(bound)) => {
                assert_eq!(bound, max);
                assert!(
                    grew_over,
                    "chunk {index} refused, but no event grew over {max} in it"
                );
                let before = expected.iter().filter(|event| event.chunk < index).count();
                assert!(
                    events.len() >= before && expected.starts_with(&events),
                    "events before the failure: {events:?}, expected {expected:?}"
                );
                return;
            }
        }
    }
    assert!(
        events == expected,
        "events: {events:?}\nexpected: {expected:?}"
    );
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
    let reference = reference(stream);
    check(stream, &reference, &[stream], max);
    check(stream, &reference, &chunks(*chunking, stream), max);
});
