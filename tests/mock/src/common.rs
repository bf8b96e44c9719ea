//! Helpers shared by the providers: directives, word counting, chunking, response building.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use crate::body::MockBody;

/// Largest `mock:chunks=N` honoured (keeps a typo from eating the machine's memory).
pub(crate) const MAX_CHUNKS: usize = 100_000;
/// Largest `mock:delay_ms=N` honoured (10 minutes).
pub(crate) const MAX_DELAY_MS: u64 = 600_000;

/// Behaviour switches read from the text of the last user message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    /// `mock:status=NNN`: answer with this status and the provider's error shape.
    pub status: Option<StatusCode>,
    /// `mock:chunks=N`: the reply is `chunk0 chunk1 ... chunkN-1`, streamed one word per chunk.
    pub chunks: Option<usize>,
    /// `mock:delay_ms=N`: wait before each streamed event (and before a non-stream reply).
    pub delay_ms: Option<u64>,
    /// `mock:stream_error`: break the stream with an error event after the first content chunk.
    pub stream_error: bool,
    /// `mock:stream_cut`: end the stream after the first content chunk, without an error or
    /// the provider's closing events (a connection the provider dropped). A
    /// `stream_cut_after_first_chunk` fault sets it too (and then drops the connection).
    pub stream_cut: bool,
    /// `mock:raw_error`: 500 with a non-JSON body.
    pub raw_error: bool,
}

impl Directives {
    pub(crate) fn parse(text: &str) -> Self {
        let mut d = Directives::default();
        if !text.contains("mock:") {
            return d;
        }
        for word in text.split_whitespace() {
            // Tolerate punctuation glued to the directive ("mock:stream_error." or "(mock:raw_error)").
            let Some(start) = word.find("mock:") else {
                continue;
            };
            let directive = word.get(start + 5..).unwrap_or_default();
            let directive = directive.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
            let (key, value) = match directive.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (directive, None),
            };
            match (key, value) {
                ("status", Some(v)) => {
                    if let Ok(code) = v.parse::<u16>() {
                        d.status = StatusCode::from_u16(code).ok();
                    }
                }
                ("chunks", Some(v)) => {
                    if let Ok(n) = v.parse::<usize>() {
                        d.chunks = Some(n.min(MAX_CHUNKS));
                    }
                }
                ("delay_ms", Some(v)) => {
                    if let Ok(n) = v.parse::<u64>() {
                        d.delay_ms = Some(n.min(MAX_DELAY_MS));
                    }
                }
                ("stream_error", None) => d.stream_error = true,
                ("stream_cut", None) => d.stream_cut = true,
                ("raw_error", None) => d.raw_error = true,
                _ => {}
            }
        }
        d
    }

    /// The directives of `text`, and the stream cut a fault rule asked of this request (see
    /// `faults.rs`).
    pub(crate) fn for_request(text: &str, parts: &Parts) -> Self {
        let mut directives = Self::parse(text);
        directives.stream_cut |= crate::faults::cuts_stream(parts);
        directives
    }

    /// The status to fail with, if the directive asks for an error (>= 400).
    pub(crate) fn error_status(&self) -> Option<StatusCode> {
        self.status.filter(|s| s.as_u16() >= 400)
    }

    pub(crate) fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.delay_ms.unwrap_or(0))
    }
}

/// Number of whitespace-separated words.
pub(crate) fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits `s` into one piece per word, each piece carrying the whitespace that precedes its word
/// (the way OpenAI streams `"Hello"`, `" world"`), so that the pieces concatenate back to `s`.
/// Trailing whitespace goes with the last piece.
pub(crate) fn split_words_keep_spaces(s: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut prev_ws = true;
    let mut seen_word = false;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        if !ws && prev_ws && seen_word {
            // A new word begins: close the previous piece just before the whitespace run.
            let ws_start = s.get(..i).map(|head| head.trim_end().len()).unwrap_or(i);
            if let Some(piece) = s.get(start..ws_start) {
                pieces.push(piece);
            }
            start = ws_start;
        }
        if !ws {
            seen_word = true;
        }
        prev_ws = ws;
    }
    if let Some(rest) = s.get(start..) {
        if !rest.is_empty() {
            pieces.push(rest);
        }
    }
    pieces
}

/// Splits `s` into `n` (or fewer, if `s` is shorter) pieces of about equal length, on char
/// boundaries. Used for streaming tool arguments / partial JSON.
pub(crate) fn split_even(s: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let chars: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    if chars.len() <= n {
        return s
            .char_indices()
            .map(|(i, c)| s.get(i..i + c.len_utf8()).unwrap_or_default())
            .collect();
    }
    let per = chars.len().div_ceil(n);
    let mut pieces = Vec::with_capacity(n);
    let mut idx = 0;
    while idx < chars.len() {
        let from = chars.get(idx).copied().unwrap_or(s.len());
        let to = chars.get(idx + per).copied().unwrap_or(s.len());
        if let Some(p) = s.get(from..to) {
            pieces.push(p);
        }
        idx += per;
    }
    pieces
}

/// The words streamed for `mock:chunks=N`: `"chunk0"`, `" chunk1"`, ... (one word each).
pub(crate) fn numbered_chunks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                "chunk0".to_owned()
            } else {
                format!(" chunk{i}")
            }
        })
        .collect()
}

/// Finds the earliest occurrence of any of `stops` in `text`; returns (cut position, stop).
pub(crate) fn find_stop<'a>(text: &str, stops: &'a [String]) -> Option<(usize, &'a str)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|pos| (pos, s.as_str())))
        .min_by_key(|(pos, _)| *pos)
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds a response without any fallible builder step.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: MockBody,
) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<MockBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    response(
        status,
        "application/json",
        MockBody::full(Bytes::from(bytes)),
    )
}

pub(crate) fn sse_response(events: Vec<Bytes>, delay: std::time::Duration) -> Response<MockBody> {
    let mut resp = response(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        MockBody::paced(events, delay),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn set_header(resp: &mut Response<MockBody>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
}

/// `mock:raw_error`: a 500 whose body is not JSON.
pub(crate) fn raw_error() -> Response<MockBody> {
    response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/plain; charset=utf-8",
        MockBody::full(Bytes::from_static(b"upstream exploded")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse() {
        let d =
            Directives::parse("hi mock:status=429 mock:chunks=7 mock:delay_ms=3 mock:stream_error");
        assert_eq!(d.status, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(d.chunks, Some(7));
        assert_eq!(d.delay_ms, Some(3));
        assert!(d.stream_error);
        assert!(!d.raw_error);
        let d = Directives::parse("please (mock:raw_error).");
        assert!(d.raw_error);
        assert_eq!(Directives::parse("nothing here"), Directives::default());
        assert_eq!(Directives::parse("mock:status=abc").status, None);
        assert_eq!(Directives::parse("mock:status=200").error_status(), None);
        assert_eq!(
            Directives::parse("mock:status=529")
                .error_status()
                .map(|s| s.as_u16()),
            Some(529)
        );
    }

    #[test]
    fn split_keeps_spaces() {
        let s = "echo: hello  big\tworld ";
        let parts = split_words_keep_spaces(s);
        assert_eq!(parts, vec!["echo:", " hello", "  big", "\tworld "]);
        assert_eq!(parts.concat(), s);
        assert_eq!(split_words_keep_spaces("  lead"), vec!["  lead"]);
        assert!(split_words_keep_spaces("").is_empty());
        let uni = "héllo wörld ünïcode";
        assert_eq!(split_words_keep_spaces(uni).concat(), uni);
        assert_eq!(split_words_keep_spaces(uni).len(), 3);
    }

    #[test]
    fn split_even_concatenates() {
        let s = r#"{"location":"Paris","unit":"celsius"}"#;
        let parts = split_even(s, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), s);
        assert_eq!(split_even("ab", 4), vec!["a", "b"]);
        assert_eq!(split_even("é€x", 2).concat(), "é€x");
    }

    #[test]
    fn counts_and_stops() {
        assert_eq!(count_words("  a b\nc  "), 3);
        assert_eq!(count_words(""), 0);
        assert_eq!(numbered_chunks(3).concat(), "chunk0 chunk1 chunk2");
        let stops = vec!["world".to_owned(), "lo".to_owned()];
        assert_eq!(find_stop("hello world", &stops), Some((3, "lo")));
        assert_eq!(find_stop("abc", &stops), None);
    }
}
