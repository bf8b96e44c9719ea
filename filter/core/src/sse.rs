//! Incremental Server-Sent Events parser (the WHATWG event-stream format).
//!
//! Provider streams arrive in arbitrary chunks: an event, a line, even a CRLF pair may be
//! split anywhere. The parser keeps only the unfinished line and the event being built, so
//! memory per stream is bounded by `max_event_bytes`, not by the stream's length.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty when the event had none (the spec's "message").
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
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
    data: String,
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
            has_data: false,
            skip_next_lf: false,
            max_event_bytes,
        }
    }

    /// Feeds one chunk, appending every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut rest = chunk;
        if self.skip_next_lf && !rest.is_empty() {
            self.skip_next_lf = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
            let line_end = at;
            let mut next = at + 1;
            if rest[at] == b'\r' {
                if next == rest.len() {
                    self.skip_next_lf = true;
                } else if rest[next] == b'\n' {
                    next += 1;
                }
            }
            if self.partial_line.is_empty() {
                self.process_line(&rest[..line_end], out);
            } else {
                let mut line = std::mem::take(&mut self.partial_line);
                line.extend_from_slice(&rest[..line_end]);
                self.process_line(&line, out);
                line.clear();
                self.partial_line = line;
            }
            rest = &rest[next..];
        }
        self.partial_line.extend_from_slice(rest);
        if self.partial_line.len() + self.data.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        Ok(())
    }

    /// Whether bytes of an undispatched event are pending (a stream that ends here was cut).
    pub fn has_pending(&self) -> bool {
        !self.partial_line.is_empty() || self.has_data || !self.event.is_empty()
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                push_utf8_lossy(&mut self.data, value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                push_utf8_lossy(&mut self.event, value);
            }
            // id and retry matter to browsers reconnecting, not to a gateway relaying.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if !self.has_data {
            self.event.clear();
            return;
        }
        out.push(SseEvent {
            event: std::mem::take(&mut self.event),
            data: std::mem::take(&mut self.data),
        });
        self.has_data = false;
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

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    const STREAM: &[u8] = b": comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\ndata: {}\n\ndata: line1\ndata: line2\n\ndata:nospace\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
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
        parser.feed(b"data: half", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(parser.has_pending());
        parser.feed(b"\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("", "half")]);
        assert!(!parser.has_pending());
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut parser = SseParser::new(16);
        let mut out = Vec::new();
        assert_eq!(
            parser.feed(b"data: 0123456789abcdefghij", &mut out),
            Err(SseError::EventTooLarge(16))
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let events = parse_all(&[b"data: \xff\n\n"]);
        assert_eq!(events, vec![ev("", "\u{fffd}")]);
    }
}
