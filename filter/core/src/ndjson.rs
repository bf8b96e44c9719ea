//! Incremental splitter of newline-delimited JSON (`application/x-ndjson`, Ollama's
//! streams): one JSON value per line, lines ended by `\n` (an `\r` before it is dropped).
//!
//! Provider streams arrive in arbitrary chunks: a line may be split anywhere. The splitter
//! keeps only the unfinished line, so memory per stream is bounded by `max_line_bytes`, not
//! by the stream's length. Every line counts against that bound, whether it arrived in one
//! chunk or several, so a stream fed whole and the same stream cut anywhere fail at the same
//! line.
//!
//! Lines are lent to a callback rather than returned: a line that lies in the chunk being
//! fed (nearly every line of a provider stream) is handed over as a slice of that chunk,
//! without being copied.

use std::ops::ControlFlow;

/// A line broke the splitter's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdjsonError {
    /// A single line grew over the limit.
    #[error("a newline-delimited JSON line exceeded {0} bytes")]
    LineTooLarge(usize),
}

impl From<NdjsonError> for crate::GatewayError {
    fn from(error: NdjsonError) -> Self {
        crate::GatewayError::BadUpstreamResponse(error.to_string())
    }
}

/// Default bound for one line: the same as one server-sent event's
/// ([`crate::sse::DEFAULT_MAX_EVENT_BYTES`]), generous for tool-call arguments.
pub const DEFAULT_MAX_LINE_BYTES: usize = crate::sse::DEFAULT_MAX_EVENT_BYTES;

/// Splitter state carried between chunks.
#[derive(Debug)]
pub struct NdjsonSplitter {
    /// Bytes of a line whose `\n` has not arrived yet.
    partial_line: Vec<u8>,
    max_line_bytes: usize,
    /// The callback asked to stop: everything after is dropped.
    stopped: bool,
}

impl Default for NdjsonSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES)
    }
}

impl NdjsonSplitter {
    /// A splitter that refuses lines over `max_line_bytes` (`\r` included, `\n` not).
    pub fn new(max_line_bytes: usize) -> Self {
        NdjsonSplitter {
            partial_line: Vec::new(),
            max_line_bytes,
            stopped: false,
        }
    }

    /// Feeds one chunk and calls `on_line` for every line it completes that holds more than
    /// whitespace, in order, without its terminator. With `end_of_stream`, what is left of
    /// an unterminated last line is a line too. An error from `on_line` stops the feed and is
    /// returned; `ControlFlow::Break` stops it for good (later bytes are dropped).
    pub fn feed<E: From<NdjsonError>>(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        mut on_line: impl FnMut(&[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        if self.stopped {
            return Ok(());
        }
        let mut at = 0;
        while let Some(found) = chunk.get(at..).and_then(|rest| memchr::memchr(b'\n', rest)) {
            let line_end = at + found;
            let piece = chunk.get(at..line_end).unwrap_or_default();
            at = line_end + 1;
            let flow = if self.partial_line.is_empty() {
                self.line(piece, &mut on_line)?
            } else {
                let mut joined = std::mem::take(&mut self.partial_line);
                joined.extend_from_slice(piece);
                let result = self.line(&joined, &mut on_line);
                joined.clear();
                self.partial_line = joined;
                result?
            };
            if flow.is_break() {
                self.stop();
                return Ok(());
            }
        }
        self.partial_line
            .extend_from_slice(chunk.get(at..).unwrap_or_default());
        self.check_bound(self.partial_line.len())?;
        if end_of_stream && !self.partial_line.is_empty() {
            let last = std::mem::take(&mut self.partial_line);
            if self.line(&last, &mut on_line)?.is_break() {
                self.stop();
            }
        }
        Ok(())
    }

    /// Whether bytes of an unfinished line are pending (a stream that ends here was cut).
    pub fn has_pending(&self) -> bool {
        !self.partial_line.is_empty()
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.partial_line = Vec::new();
    }

    fn check_bound(&self, length: usize) -> Result<(), NdjsonError> {
        if length > self.max_line_bytes {
            return Err(NdjsonError::LineTooLarge(self.max_line_bytes));
        }
        Ok(())
    }

    /// Checks one complete line against the bound and hands it over unless it is blank.
    fn line<E: From<NdjsonError>>(
        &self,
        line: &[u8],
        on_line: &mut impl FnMut(&[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<ControlFlow<()>, E> {
        self.check_bound(line.len())?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(ControlFlow::Continue(()));
        }
        on_line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(splitter: &mut NdjsonSplitter, chunks: &[&[u8]]) -> Result<Vec<String>, NdjsonError> {
        let mut out = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            splitter.feed(chunk, index + 1 == chunks.len(), |line| {
                out.push(String::from_utf8_lossy(line).into_owned());
                Ok::<_, NdjsonError>(ControlFlow::Continue(()))
            })?;
        }
        Ok(out)
    }

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        let stream = b"{\"a\":1}\n\n  \r\n{\"b\":\"x\\ny\"}\r\n{\"c\":3}";
        let whole = lines(&mut NdjsonSplitter::default(), &[stream]).unwrap();
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\"x\\ny\"}", "{\"c\":3}"]);
        for split in 0..=stream.len() {
            let (head, tail) = stream.split_at(split);
            let cut = lines(&mut NdjsonSplitter::default(), &[head, tail]).unwrap();
            assert_eq!(cut, whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            lines(&mut NdjsonSplitter::default(), &bytes).unwrap(),
            whole
        );
    }

    #[test]
    fn an_unterminated_line_waits_for_the_end() {
        let mut splitter = NdjsonSplitter::default();
        let mut seen = Vec::new();
        splitter
            .feed(b"{\"a\":1}\n{\"b\"", false, |line| {
                seen.push(line.to_vec());
                Ok::<_, NdjsonError>(ControlFlow::Continue(()))
            })
            .unwrap();
        assert_eq!(seen, [b"{\"a\":1}".to_vec()]);
        assert!(splitter.has_pending());
    }

    #[test]
    fn every_line_is_bounded_however_it_arrives() {
        let long = b"0123456789\nok\n";
        assert_eq!(
            lines(&mut NdjsonSplitter::new(9), &[long]),
            Err(NdjsonError::LineTooLarge(9))
        );
        assert_eq!(
            lines(&mut NdjsonSplitter::new(9), &[b"01234", b"56789\nok\n"]),
            Err(NdjsonError::LineTooLarge(9))
        );
        // Still unterminated, already too long.
        let mut splitter = NdjsonSplitter::new(9);
        let result = splitter.feed(b"0123456789", false, |_| {
            Ok::<_, NdjsonError>(ControlFlow::Continue(()))
        });
        assert_eq!(result, Err(NdjsonError::LineTooLarge(9)));
        // The `\r` counts, so a line of exactly the bound passes with LF and not with CRLF.
        assert_eq!(
            lines(&mut NdjsonSplitter::new(9), &[b"012345678\n"]).unwrap(),
            ["012345678"]
        );
        assert!(lines(&mut NdjsonSplitter::new(9), &[b"012345678\r\n"]).is_err());
    }

    #[test]
    fn a_break_drops_the_rest() {
        let mut splitter = NdjsonSplitter::new(4);
        let mut seen = 0;
        let mut feed = |splitter: &mut NdjsonSplitter, chunk: &[u8]| {
            splitter.feed(chunk, false, |_| {
                seen += 1;
                Ok::<_, NdjsonError>(ControlFlow::Break(()))
            })
        };
        // The too-long line after the break is never looked at.
        feed(&mut splitter, b"a\nbbbbbbbbbb\n").unwrap();
        feed(&mut splitter, b"c\n").unwrap();
        assert_eq!(seen, 1);
        assert!(!splitter.has_pending());
    }
}
