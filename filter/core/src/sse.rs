//! Incremental Server-Sent Events parser (the WHATWG event-stream format).
//!
//! Provider streams arrive in arbitrary chunks: an event, a line, even a CRLF pair may be
//! split anywhere. The parser keeps only the unfinished line and the event being built, so
//! memory per stream is bounded by `max_event_bytes`, not by the stream's length. Every
//! event counts against that bound, comment-only events and unknown fields included.
//!
//! Events are lent to a callback rather than returned: an event whose single data line lies
//! in the chunk being fed (nearly every event of a provider stream) is handed over as a
//! slice of that chunk, without being copied.

use std::ops::Range;

/// One dispatched event, borrowed from the chunk being fed or from the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEventRef<'a> {
    /// The `event:` field; empty when the event had none (the spec's "message").
    pub event: &'a str,
    /// The `data:` lines joined with `\n`.
    pub data: &'a str,
    /// Offset in the chunk being fed where the event's first line starts; `None` when it
    /// started in an earlier chunk.
    pub start: Option<usize>,
    /// Offset in the chunk being fed just past the blank line that ended the event, so a
    /// caller can forward or drop the event's raw bytes.
    pub end: usize,
}

/// The stream broke the parser's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A single event grew over the limit without being dispatched.
    #[error("a server-sent event exceeded {0} bytes")]
    EventTooLarge(usize),
}

/// Default bound for one event: generous for tool-call arguments, small enough to cap memory.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Parser state carried between chunks.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a line whose terminator has not arrived yet.
    partial_line: Vec<u8>,
    event: String,
    /// Data of the event being built when it cannot be lent from the chunk: it spans
    /// chunks, has several data lines, or is not valid UTF-8.
    data: String,
    /// The event's only data line so far, as a range of the chunk being fed.
    data_in_chunk: Option<Range<usize>>,
    has_data: bool,
    /// Raw bytes of the lines of the event being built (comments and unknown fields
    /// included, terminators not): what the bound is checked against.
    event_bytes: usize,
    /// Whether a line of the event being built has been seen (so a blank line ends one).
    in_event: bool,
    /// Where the event being built starts in the chunk being fed (`None`: an earlier one).
    event_start: Option<usize>,
    /// Offset just past the last blank line of the chunk being fed that ended an event, with
    /// or without data.
    last_event_end: Option<usize>,
    /// The last chunk ended in `\r`; a `\n` starting the next chunk belongs to it.
    skip_next_lf: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that refuses events over `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            partial_line: Vec::new(),
            event: String::new(),
            data: String::new(),
            data_in_chunk: None,
            has_data: false,
            event_bytes: 0,
            in_event: false,
            event_start: None,
            last_event_end: None,
            skip_next_lf: false,
            max_event_bytes,
        }
    }

    /// Feeds one chunk and calls `on_event` for every event with data it completes, in
    /// order. An error from `on_event` stops the feed and is returned.
    pub fn feed<E: From<SseError>>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut at = 0;
        self.last_event_end = None;
        self.event_start = None;
        if self.skip_next_lf && !chunk.is_empty() {
            self.skip_next_lf = false;
            if chunk.first() == Some(&b'\n') {
                at = 1;
            }
        }
        while let Some(found) = chunk
            .get(at..)
            .and_then(|rest| memchr::memchr2(b'\n', b'\r', rest))
        {
            let line_end = at + found;
            let mut next = line_end + 1;
            if chunk.get(line_end) == Some(&b'\r') {
                if next == chunk.len() {
                    self.skip_next_lf = true;
                } else if chunk.get(next) == Some(&b'\n') {
                    next += 1;
                }
            }
            let line = chunk.get(at..line_end).unwrap_or_default();
            if self.partial_line.is_empty() {
                self.process_line(line, Some(at), chunk, next, &mut on_event)?;
            } else {
                let mut joined = std::mem::take(&mut self.partial_line);
                joined.extend_from_slice(line);
                let result = self.process_line(&joined, None, chunk, next, &mut on_event);
                joined.clear();
                self.partial_line = joined;
                result?;
            }
            at = next;
        }
        // The chunk is gone after this call: keep what the unfinished event lent from it.
        if let Some(range) = self.data_in_chunk.take() {
            push_utf8_lossy(&mut self.data, chunk.get(range).unwrap_or_default());
        }
        self.partial_line
            .extend_from_slice(chunk.get(at..).unwrap_or_default());
        self.check_bound()?;
        Ok(())
    }

    /// Offset just past the last blank line of the chunk fed last that ended an event (one
    /// with data, or one of comments or other fields only), if one did. The bytes before it
    /// belong to finished events.
    pub fn last_event_end(&self) -> Option<usize> {
        self.last_event_end
    }

    /// Whether bytes of an undispatched event are pending (a stream that ends here was cut).
    pub fn has_pending(&self) -> bool {
        !self.partial_line.is_empty() || self.has_data || !self.event.is_empty()
    }

    /// The event being built, with its unfinished line, must stay within the bound.
    fn check_bound(&self) -> Result<(), SseError> {
        let size = (self.event_bytes + self.partial_line.len()).max(self.data.len());
        if size > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    /// Handles one line; `line_at` is its offset in `chunk` when it is a slice of it (not
    /// joined with bytes of an earlier chunk), and `end` the offset just past its terminator.
    fn process_line<E: From<SseError>>(
        &mut self,
        line: &[u8],
        line_at: Option<usize>,
        chunk: &[u8],
        end: usize,
        on_event: &mut impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if line.is_empty() {
            return self.dispatch(chunk, end, on_event);
        }
        if !self.in_event {
            self.in_event = true;
            self.event_start = line_at;
        }
        self.event_bytes += line.len();
        self.check_bound()?;
        if line.first() == Some(&b':') {
            return Ok(());
        }
        let (field, value_start) = match memchr::memchr(b':', line) {
            Some(colon) if line.get(colon + 1) == Some(&b' ') => (line.get(..colon), colon + 2),
            Some(colon) => (line.get(..colon), colon + 1),
            None => (Some(line), line.len()),
        };
        let value = line.get(value_start..).unwrap_or_default();
        match field {
            Some(b"data") => {
                match line_at {
                    Some(line_at) if !self.has_data => {
                        self.data_in_chunk = Some(line_at + value_start..line_at + line.len());
                    }
                    _ => {
                        if let Some(range) = self.data_in_chunk.take() {
                            push_utf8_lossy(&mut self.data, chunk.get(range).unwrap_or_default());
                        }
                        if self.has_data {
                            self.data.push('\n');
                        }
                        push_utf8_lossy(&mut self.data, value);
                    }
                }
                self.has_data = true;
            }
            Some(b"event") => {
                self.event.clear();
                push_utf8_lossy(&mut self.event, value);
            }
            // id and retry matter to browsers reconnecting, not to a gateway relaying.
            _ => {}
        }
        Ok(())
    }

    fn dispatch<E>(
        &mut self,
        chunk: &[u8],
        end: usize,
        on_event: &mut impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.in_event {
            // A blank line between events ends nothing.
            return Ok(());
        }
        let start = self.event_start.take();
        self.in_event = false;
        self.event_bytes = 0;
        self.last_event_end = Some(end);
        if !self.has_data {
            self.event.clear();
            return Ok(());
        }
        let lent = self
            .data_in_chunk
            .take()
            .map(|range| chunk.get(range).unwrap_or_default())
            .map(|bytes| std::str::from_utf8(bytes).map_err(|_| bytes));
        let result = match lent {
            Some(Ok(data)) => on_event(SseEventRef {
                event: &self.event,
                data,
                start,
                end,
            }),
            other => {
                if let Some(Err(invalid)) = other {
                    push_utf8_lossy(&mut self.data, invalid);
                }
                on_event(SseEventRef {
                    event: &self.event,
                    data: &self.data,
                    start,
                    end,
                })
            }
        };
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        result
    }
}

/// Appends `bytes` to `out`, replacing invalid UTF-8 as `String::from_utf8_lossy` does;
/// valid input (the normal case) takes the fast validator instead of the lossy iterator.
fn push_utf8_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Appends `data: <json>\n\n` to `out`.
pub fn write_data_event(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// The terminator OpenAI streams end with.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the tests compare it, owned.
    #[derive(Debug, PartialEq)]
    struct Event {
        event: String,
        data: String,
    }

    fn feed(parser: &mut SseParser, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        parser.feed(chunk, |event| {
            // The event ends with a line terminator of this chunk.
            let terminator = chunk[event.end - 1];
            assert!(
                terminator == b'\n' || terminator == b'\r',
                "end {}",
                event.end
            );
            out.push(Event {
                event: event.event.to_string(),
                data: event.data.to_string(),
            });
            Ok::<(), SseError>(())
        })
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            feed(&mut parser, chunk, &mut out).unwrap();
        }
        out
    }

    fn ev(event: &str, data: &str) -> Event {
        Event {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &[u8] = b": comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata: {}\n\ndata: line1\ndata: line2\n\ndata:nospace\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<Event> {
        vec![
            ev("message_start", "{\"a\":1}"),
            ev("ping", "{}"),
            ev("", "line1\nline2"),
            ev("", "nospace"),
            ev("", "[DONE]"),
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(parse_all(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for split in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(split);
            assert_eq!(parse_all(&[a, b]), expected(), "split at {split}");
        }
    }

    #[test]
    fn split_at_every_pair_of_boundaries() {
        for first in 0..=STREAM.len() {
            for second in first..=STREAM.len() {
                let chunks = [&STREAM[..first], &STREAM[first..second], &STREAM[second..]];
                assert_eq!(parse_all(&chunks), expected(), "split at {first},{second}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_all(&chunks), expected());
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_does_not_leak_its_name() {
        let events = parse_all(&[b"event: x\n\ndata: y\n\n"]);
        assert_eq!(events, vec![ev("", "y")]);
    }

    #[test]
    fn unterminated_event_is_pending() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        feed(&mut parser, b"data: half", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parser.has_pending());
        feed(&mut parser, b"\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("", "half")]);
        assert!(!parser.has_pending());
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        assert_eq!(
            feed(&mut parser, b"data: 0123456789abcdefghij", &mut out),
            Err(SseError::EventTooLarge(16))
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse_all(&[b"data: \xff\n\n"]);
        assert_eq!(events, vec![ev("", "\u{fffd}")]);
    }

    #[test]
    fn events_within_a_chunk_are_lent_with_their_end_offsets() {
        let chunk = b"event: a\ndata: 1\n\ndata: 2\r\n\r\ndata: 3";
        let mut parser = SseParser::default();
        let mut seen = Vec::new();
        parser
            .feed(chunk, |event| {
                // Lent from the chunk itself: the data points into it.
                let inside = chunk.as_ptr_range().contains(&event.data.as_ptr());
                seen.push((
                    event.event.to_string(),
                    event.data.to_string(),
                    event.end,
                    inside,
                ));
                Ok::<(), SseError>(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![
                ("a".to_string(), "1".to_string(), 18, true),
                (String::new(), "2".to_string(), 29, true),
            ]
        );
        assert!(parser.has_pending());
    }

    #[test]
    fn comment_only_events_are_bounded_like_data_events() {
        // One endless event of comment lines, each line well within the bound.
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..100 {
            result = feed(&mut parser, b": keep-alive padding\n", &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge(64)));
        assert!(out.is_empty());
        // Unknown fields count too, even inside one chunk.
        let mut parser = SseParser::new(64);
        let lines = b"id: 1\n".repeat(20);
        assert_eq!(
            feed(&mut parser, &lines, &mut out),
            Err(SseError::EventTooLarge(64))
        );
    }

    #[test]
    fn comment_only_events_that_end_reset_the_bound_and_mark_their_end() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        for _ in 0..100 {
            feed(&mut parser, b": keep-alive padding\n\n", &mut out).unwrap();
            assert_eq!(parser.last_event_end(), Some(22));
        }
        feed(&mut parser, b": half", &mut out).unwrap();
        assert_eq!(parser.last_event_end(), None);
        assert!(out.is_empty());
    }

    #[test]
    fn events_say_where_they_start_in_the_chunk() {
        let chunk = b": c\n\ndata: 1\n\n\ndata: 2";
        let mut parser = SseParser::default();
        let mut starts = Vec::new();
        parser
            .feed(chunk, |event| {
                starts.push((event.start, event.end));
                Ok::<(), SseError>(())
            })
            .unwrap();
        assert_eq!(starts, vec![(Some(5), 14)]);
        assert_eq!(parser.last_event_end(), Some(14));
        parser
            .feed(b"\n\n", |event| {
                starts.push((event.start, event.end));
                Ok::<(), SseError>(())
            })
            .unwrap();
        assert_eq!(starts[1], (None, 2), "started in the chunk before");
    }

    #[test]
    fn an_error_from_the_callback_stops_the_feed() {
        let mut parser = SseParser::default();
        let mut calls = 0;
        let result = parser.feed(b"data: 1\n\ndata: 2\n\n", |_| {
            calls += 1;
            Err(SseError::EventTooLarge(0))
        });
        assert_eq!(result, Err(SseError::EventTooLarge(0)));
        assert_eq!(calls, 1);
    }
}
