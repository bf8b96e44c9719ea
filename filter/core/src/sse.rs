//! Incremental Server-Sent Events parser (the WHATWG event-stream format).
//!
//! Provider streams arrive in arbitrary chunks: an event, a line, even a CRLF pair may be
//! split anywhere. The parser keeps only the unfinished line and the event being built, so
//! memory per stream is bounded by `max_event_bytes`, not by the stream's length.
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
            skip_next_lf: false,
            max_event_bytes,
        }
    }

    /// Feeds one chunk and calls `on_event` for every event it completes, in order. An
    /// error from `on_event` stops the feed and is returned.
    pub fn feed<E: From<SseError>>(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut at = 0;
        if self.skip_next_lf && !chunk.is_empty() {
            self.skip_next_lf = false;
            if chunk[0] == b'\n' {
                at = 1;
            }
        }
        while let Some(found) = memchr::memchr2(b'\n', b'\r', &chunk[at..]) {
            let line_end = at + found;
            let mut next = line_end + 1;
            if chunk[line_end] == b'\r' {
                if next == chunk.len() {
                    self.skip_next_lf = true;
                } else if chunk[next] == b'\n' {
                    next += 1;
                }
            }
            if self.partial_line.is_empty() {
                self.process_line(&chunk[at..line_end], Some(at), chunk, next, &mut on_event)?;
            } else {
                let mut line = std::mem::take(&mut self.partial_line);
                line.extend_from_slice(&chunk[at..line_end]);
                let result = self.process_line(&line, None, chunk, next, &mut on_event);
                line.clear();
                self.partial_line = line;
                result?;
            }
            at = next;
        }
        // The chunk is gone after this call: keep what the unfinished event lent from it.
        if let Some(range) = self.data_in_chunk.take() {
            push_utf8_lossy(&mut self.data, &chunk[range]);
        }
        self.partial_line.extend_from_slice(&chunk[at..]);
        if self.partial_line.len() + self.data.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes).into());
        }
        Ok(())
    }

    /// Whether bytes of an undispatched event are pending (a stream that ends here was cut).
    pub fn has_pending(&self) -> bool {
        !self.partial_line.is_empty() || self.has_data || !self.event.is_empty()
    }

    /// Handles one line; `line_at` is its offset in `chunk` when it is a slice of it (not
    /// joined with bytes of an earlier chunk), and `end` the offset just past its terminator.
    fn process_line<E>(
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
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value_start) = match memchr::memchr(b':', line) {
            Some(colon) if line.get(colon + 1) == Some(&b' ') => (&line[..colon], colon + 2),
            Some(colon) => (&line[..colon], colon + 1),
            None => (line, line.len()),
        };
        let value = &line[value_start..];
        match field {
            b"data" => {
                match line_at {
                    Some(line_at) if !self.has_data => {
                        self.data_in_chunk = Some(line_at + value_start..line_at + line.len());
                    }
                    _ => {
                        if let Some(range) = self.data_in_chunk.take() {
                            push_utf8_lossy(&mut self.data, &chunk[range]);
                        }
                        if self.has_data {
                            self.data.push('\n');
                        }
                        push_utf8_lossy(&mut self.data, value);
                    }
                }
                self.has_data = true;
            }
            b"event" => {
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
        if !self.has_data {
            self.event.clear();
            return Ok(());
        }
        let lent = self
            .data_in_chunk
            .take()
            .map(|range| &chunk[range])
            .map(|bytes| std::str::from_utf8(bytes).map_err(|_| bytes));
        let result = match lent {
            Some(Ok(data)) => on_event(SseEventRef {
                event: &self.event,
                data,
                end,
            }),
            other => {
                if let Some(Err(invalid)) = other {
                    push_utf8_lossy(&mut self.data, invalid);
                }
                on_event(SseEventRef {
                    event: &self.event,
                    data: &self.data,
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
