//! The binary framing of `application/vnd.amazon.eventstream`, which Bedrock's
//! ConverseStream (and every AWS event stream) answers in: an incremental, bounded decoder.
//!
//! A message, all integers big-endian:
//!
//! ```text
//! total length u32 | headers length u32 | prelude CRC32 (of the 8 bytes before it)
//! headers (headers length bytes) | payload | message CRC32 (of every byte before it)
//! ```
//!
//! so a message is at least 16 bytes. A header is a name (length u8, then UTF-8), a type byte
//! and a value: 0 true, 1 false (no value bytes), 2 byte (i8), 3 short (i16), 4 integer
//! (i32), 5 long (i64), 6 byte array (u16 length, bytes), 7 string (u16 length, UTF-8),
//! 8 timestamp (i64 milliseconds since the epoch), 9 UUID (16 bytes). The headers every
//! message carries are `:message-type` (`event`, `exception` or `error`) and, by type,
//! `:event-type` and `:content-type`, `:exception-type`, or `:error-code` and
//! `:error-message`.
//!
//! [`Decoder`] takes the stream in chunks cut anywhere ([`Decoder::push`]) and hands out
//! whole messages ([`Decoder::next_message`]) borrowed from its buffer. Both checksums are
//! checked; the prelude's as soon as its 12 bytes are in, so a corrupted length is refused
//! before anything is buffered for it, as is a message over the size bound. Nothing can be
//! resynchronised after an error (the lengths cannot be trusted), so the first error ends the
//! stream: the decoder keeps returning it.

use std::fmt;

use thiserror::Error;

/// The default bound on one message: 16 MiB, the largest message AWS's event stream
/// libraries accepted before they raised it to 24 MiB, far above any Bedrock event.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The prelude: total length, headers length and the prelude's checksum.
pub const PRELUDE_BYTES: usize = 12;

/// The smallest message: a prelude and the message checksum.
pub const MIN_MESSAGE_BYTES: usize = PRELUDE_BYTES + CHECKSUM_BYTES;

const CHECKSUM_BYTES: usize = 4;

/// The header saying what a message is: [`MessageType`].
pub const MESSAGE_TYPE_HEADER: &str = ":message-type";
/// The header naming an event (`contentBlockDelta`, `messageStop`, `metadata`…).
pub const EVENT_TYPE_HEADER: &str = ":event-type";
/// The header naming an exception (`throttlingException`, `validationException`…).
pub const EXCEPTION_TYPE_HEADER: &str = ":exception-type";
/// The media type of the payload (`application/json`).
pub const CONTENT_TYPE_HEADER: &str = ":content-type";
/// The code of an `error` message.
pub const ERROR_CODE_HEADER: &str = ":error-code";
/// The text of an `error` message.
pub const ERROR_MESSAGE_HEADER: &str = ":error-message";

/// A buffer that grew past this for a large message is given back once the stream is past it.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Why a stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventStreamError {
    /// The prelude's checksum is wrong: its lengths cannot be trusted.
    #[error("prelude checksum mismatch: the message says {expected:#010x}, its prelude hashes to {computed:#010x}")]
    PreludeChecksumMismatch {
        /// The checksum the message carries.
        expected: u32,
        /// The checksum of its prelude.
        computed: u32,
    },
    /// The message's checksum is wrong.
    #[error("message checksum mismatch: the message says {expected:#010x}, it hashes to {computed:#010x}")]
    MessageChecksumMismatch {
        /// The checksum the message carries.
        expected: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// The total length is under the 16 bytes of a prelude and a checksum.
    #[error(
        "a message of {total_length} bytes is shorter than the {MIN_MESSAGE_BYTES} of its framing"
    )]
    MessageTooShort {
        /// The total length the prelude gives.
        total_length: u32,
    },
    /// The total length is over the decoder's bound.
    #[error("a message of {total_length} bytes is over the bound of {max} bytes")]
    MessageTooLarge {
        /// The total length the prelude gives.
        total_length: u32,
        /// The decoder's bound.
        max: usize,
    },
    /// The headers do not fit in the message.
    #[error("{headers_length} bytes of headers do not fit in a message of {total_length} bytes")]
    HeadersTooLong {
        /// The headers length the prelude gives.
        headers_length: u32,
        /// The total length the prelude gives.
        total_length: u32,
    },
    /// A header runs past the end of the headers.
    #[error("a header runs past the end of the headers")]
    HeaderTruncated,
    /// A header name, or a string value, is not UTF-8.
    #[error("a header name or string value is not UTF-8")]
    HeaderNotUtf8,
    /// A header value type is none of 0 to 9.
    #[error("unknown header value type {0}")]
    UnknownHeaderType(u8),
    /// The stream ended inside a message.
    #[error("the stream ended inside a message ({buffered} bytes of it)")]
    Truncated {
        /// The bytes of the unfinished message.
        buffered: usize,
    },
}

/// A header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Types 0 (true) and 1 (false).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(&'a [u8]),
    /// Type 7.
    String(&'a str),
    /// Type 8: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

impl<'a> HeaderValue<'a> {
    /// The type byte of the value on the wire.
    pub fn type_code(&self) -> u8 {
        match self {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Short(_) => 3,
            HeaderValue::Int(_) => 4,
            HeaderValue::Long(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }

    /// The value of a string header.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            HeaderValue::String(value) => Some(value),
            _ => None,
        }
    }
}

/// One header of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Its name (`:event-type`).
    pub name: &'a str,
    /// Its value.
    pub value: HeaderValue<'a>,
}

/// What a message is: its `:message-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType<'a> {
    /// `event`: an event of the stream, named by `:event-type`.
    Event,
    /// `exception`: a modelled error, named by `:exception-type`, its payload the error body.
    Exception,
    /// `error`: an unmodelled error, in `:error-code` and `:error-message`.
    Error,
    /// Any other value.
    Other(&'a str),
}

/// A decoded message, borrowed from the decoder's buffer. Its headers were all checked when
/// it was decoded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    frame: &'a [u8],
    headers: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The headers, in the order of the message.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.headers }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.headers()
            .find(|header| header.name == name)
            .map(|header| header.value)
    }

    /// The value of the first header named `name`, if it is a string.
    pub fn string_header(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|value| value.as_str())
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The whole message as it came, prelude and checksums included.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// `:message-type`, when it is a string.
    pub fn message_type(&self) -> Option<MessageType<'a>> {
        self.string_header(MESSAGE_TYPE_HEADER)
            .map(|message_type| match message_type {
                "event" => MessageType::Event,
                "exception" => MessageType::Exception,
                "error" => MessageType::Error,
                other => MessageType::Other(other),
            })
    }

    /// `:event-type`.
    pub fn event_type(&self) -> Option<&'a str> {
        self.string_header(EVENT_TYPE_HEADER)
    }

    /// `:exception-type`.
    pub fn exception_type(&self) -> Option<&'a str> {
        self.string_header(EXCEPTION_TYPE_HEADER)
    }

    /// `:content-type`.
    pub fn content_type(&self) -> Option<&'a str> {
        self.string_header(CONTENT_TYPE_HEADER)
    }

    /// `:error-code`.
    pub fn error_code(&self) -> Option<&'a str> {
        self.string_header(ERROR_CODE_HEADER)
    }

    /// `:error-message`.
    pub fn error_message(&self) -> Option<&'a str> {
        self.string_header(ERROR_MESSAGE_HEADER)
    }
}

impl fmt::Debug for Message<'_> {
    /// The payload's size only: it can be large.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The headers of a [`Message`], in order.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        match parse_header(self.rest) {
            Ok((header, rest)) => {
                self.rest = rest;
                Some(header)
            }
            // Checked when the message was decoded: cannot happen.
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// An incremental decoder of an event stream.
///
/// Memory is bounded: besides the last chunk pushed, the decoder holds at most one unfinished
/// message, itself at most the bound, provided every [`Decoder::push`] is followed by
/// [`Decoder::next_message`] until it returns `Ok(None)` (or an error).
#[derive(Debug, Clone)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Where the first byte not yet decoded is in `buffer`.
    start: usize,
    max_message_bytes: usize,
    failed: Option<EventStreamError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder bounding messages at [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub fn new() -> Self {
        Decoder::with_max_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// A decoder refusing messages over `max_message_bytes` (at least [`MIN_MESSAGE_BYTES`]).
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        Decoder {
            buffer: Vec::new(),
            start: 0,
            max_message_bytes: max_message_bytes.max(MIN_MESSAGE_BYTES),
            failed: None,
        }
    }

    /// The bound on one message.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Adds the next bytes of the stream; after an error they are dropped.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Drop what was decoded: the buffer holds one unfinished message at most.
        if self.start > 0 {
            self.buffer.drain(..self.start.min(self.buffer.len()));
            self.start = 0;
        }
        let needed = self.buffer.len().saturating_add(chunk.len());
        if self.buffer.capacity() > RETAINED_CAPACITY && needed <= RETAINED_CAPACITY / 4 {
            self.buffer.shrink_to(RETAINED_CAPACITY);
        }
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole message, `Ok(None)` when the bytes pushed so far end inside one. An
    /// error ends the stream: every later call returns it again.
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, EventStreamError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let start = self.start;
        let available = self.buffer.get(start..).unwrap_or_default();
        let layout = match check_frame(available, self.max_message_bytes) {
            Ok(Some(layout)) => layout,
            Ok(None) => return Ok(None),
            Err(error) => {
                self.failed = Some(error.clone());
                self.buffer = Vec::new();
                self.start = 0;
                return Err(error);
            }
        };
        let end = start.saturating_add(layout.total_length);
        self.start = end;
        let frame = self.buffer.get(start..end).unwrap_or_default();
        Ok(Some(Message::from_checked(frame, layout.headers_length)))
    }

    /// The bytes pushed and not yet decoded: those of an unfinished message.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len().saturating_sub(self.start)
    }

    /// Checks the end of the stream: an error if it stopped inside a message (or failed
    /// before). Call [`Decoder::next_message`] until `Ok(None)` first.
    pub fn finish(&self) -> Result<(), EventStreamError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.buffered_len() {
            0 => Ok(()),
            buffered => Err(EventStreamError::Truncated { buffered }),
        }
    }
}

/// The lengths of a checked message.
#[derive(Debug, Clone, Copy)]
struct FrameLayout {
    total_length: usize,
    headers_length: usize,
}

impl<'a> Message<'a> {
    /// The message of a frame [`check_frame`] accepted.
    fn from_checked(frame: &'a [u8], headers_length: usize) -> Self {
        let payload_start = PRELUDE_BYTES.saturating_add(headers_length);
        let payload_end = frame.len().saturating_sub(CHECKSUM_BYTES);
        Message {
            frame,
            headers: frame.get(PRELUDE_BYTES..payload_start).unwrap_or_default(),
            payload: frame.get(payload_start..payload_end).unwrap_or_default(),
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let word: [u8; 4] = bytes.get(at..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

/// Checks the message at the start of `bytes`: `Ok(None)` when it is not all there yet.
fn check_frame(bytes: &[u8], max: usize) -> Result<Option<FrameLayout>, EventStreamError> {
    let (Some(total_length), Some(headers_length), Some(prelude_crc)) =
        (read_u32(bytes, 0), read_u32(bytes, 4), read_u32(bytes, 8))
    else {
        return Ok(None);
    };
    let computed = crc32(bytes.get(..8).unwrap_or_default());
    if computed != prelude_crc {
        return Err(EventStreamError::PreludeChecksumMismatch {
            expected: prelude_crc,
            computed,
        });
    }
    let total = usize::try_from(total_length).unwrap_or(usize::MAX);
    if total < MIN_MESSAGE_BYTES {
        return Err(EventStreamError::MessageTooShort { total_length });
    }
    if total > max {
        return Err(EventStreamError::MessageTooLarge { total_length, max });
    }
    let headers = usize::try_from(headers_length).unwrap_or(usize::MAX);
    if headers > total - MIN_MESSAGE_BYTES {
        return Err(EventStreamError::HeadersTooLong {
            headers_length,
            total_length,
        });
    }
    let Some(frame) = bytes.get(..total) else {
        return Ok(None);
    };
    let checksum_at = total - CHECKSUM_BYTES;
    let expected = read_u32(frame, checksum_at).unwrap_or_default();
    let computed = crc32(frame.get(..checksum_at).unwrap_or_default());
    if computed != expected {
        return Err(EventStreamError::MessageChecksumMismatch { expected, computed });
    }
    let mut rest = frame
        .get(PRELUDE_BYTES..PRELUDE_BYTES + headers)
        .unwrap_or_default();
    while !rest.is_empty() {
        rest = parse_header(rest)?.1;
    }
    Ok(Some(FrameLayout {
        total_length: total,
        headers_length: headers,
    }))
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), EventStreamError> {
    bytes
        .split_at_checked(at)
        .ok_or(EventStreamError::HeaderTruncated)
}

fn split_array<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), EventStreamError> {
    bytes
        .split_first_chunk::<N>()
        .map(|(array, rest)| (*array, rest))
        .ok_or(EventStreamError::HeaderTruncated)
}

/// The header at the start of `bytes` and the bytes after it.
fn parse_header(bytes: &[u8]) -> Result<(Header<'_>, &[u8]), EventStreamError> {
    let ([name_length], rest) = split_array::<1>(bytes)?;
    let (name, rest) = split(rest, usize::from(name_length))?;
    let name = std::str::from_utf8(name).map_err(|_| EventStreamError::HeaderNotUtf8)?;
    let ([type_code], rest) = split_array::<1>(rest)?;
    let (value, rest) = match type_code {
        0 => (HeaderValue::Bool(true), rest),
        1 => (HeaderValue::Bool(false), rest),
        2 => {
            let (value, rest) = split_array::<1>(rest)?;
            (HeaderValue::Byte(i8::from_be_bytes(value)), rest)
        }
        3 => {
            let (value, rest) = split_array::<2>(rest)?;
            (HeaderValue::Short(i16::from_be_bytes(value)), rest)
        }
        4 => {
            let (value, rest) = split_array::<4>(rest)?;
            (HeaderValue::Int(i32::from_be_bytes(value)), rest)
        }
        5 => {
            let (value, rest) = split_array::<8>(rest)?;
            (HeaderValue::Long(i64::from_be_bytes(value)), rest)
        }
        6 | 7 => {
            let (length, rest) = split_array::<2>(rest)?;
            let (value, rest) = split(rest, usize::from(u16::from_be_bytes(length)))?;
            if type_code == 6 {
                (HeaderValue::Bytes(value), rest)
            } else {
                let value =
                    std::str::from_utf8(value).map_err(|_| EventStreamError::HeaderNotUtf8)?;
                (HeaderValue::String(value), rest)
            }
        }
        8 => {
            let (value, rest) = split_array::<8>(rest)?;
            (HeaderValue::Timestamp(i64::from_be_bytes(value)), rest)
        }
        9 => {
            let (value, rest) = split_array::<16>(rest)?;
            (HeaderValue::Uuid(value), rest)
        }
        unknown => return Err(EventStreamError::UnknownHeaderType(unknown)),
    };
    Ok((Header { name, value }, rest))
}

/// The CRC-32 lookup table (IEEE 802.3, reflected polynomial `0xEDB88320`), built at compile
/// time.
const CRC_TABLE: [u32; 256] = crc_table();

// Evaluated by the compiler only: an index out of bounds would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
}

/// The CRC-32 (IEEE, as zlib and the event stream compute it) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let crc = bytes.iter().fold(u32::MAX, |crc, &byte| {
        let index = usize::from((crc as u8) ^ byte);
        CRC_TABLE.get(index).copied().unwrap_or_default() ^ (crc >> 8)
    });
    !crc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A message with `headers` (already encoded) and `payload`, with right checksums.
    fn frame(headers: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = (MIN_MESSAGE_BYTES + headers.len() + payload.len()) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32(&out).to_be_bytes());
        out.extend_from_slice(headers);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc32(&out).to_be_bytes());
        out
    }

    fn string_header(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.push(7);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
        out
    }

    /// Header names and payload of each message.
    type Decoded = Vec<(Vec<String>, Vec<u8>)>;

    fn decode_all(decoder: &mut Decoder) -> Result<Decoded, EventStreamError> {
        let mut out = Vec::new();
        while let Some(message) = decoder.next_message()? {
            let names = message.headers().map(|h| h.name.to_string()).collect();
            out.push((names, message.payload().to_vec()));
        }
        Ok(out)
    }

    #[test]
    fn crc32_of_the_check_string() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn bedrock_event_accessors() {
        let mut headers = string_header(":event-type", "contentBlockDelta");
        headers.extend(string_header(":content-type", "application/json"));
        headers.extend(string_header(":message-type", "event"));
        let bytes = frame(
            &headers,
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        );
        let mut decoder = Decoder::new();
        decoder.push(&bytes);
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(message.message_type(), Some(MessageType::Event));
        assert_eq!(message.event_type(), Some("contentBlockDelta"));
        assert_eq!(message.content_type(), Some("application/json"));
        assert_eq!(message.exception_type(), None);
        assert_eq!(message.frame(), &bytes[..]);
        assert_eq!(
            message.payload(),
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#
        );
        assert!(decoder.next_message().unwrap().is_none());
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn exception_and_error_accessors() {
        let mut headers = string_header(":exception-type", "throttlingException");
        headers.extend(string_header(":message-type", "exception"));
        let mut error_headers = string_header(":message-type", "error");
        error_headers.extend(string_header(":error-code", "InternalFailure"));
        error_headers.extend(string_header(":error-message", "boom"));
        let other_headers = string_header(":message-type", "surprise");
        let mut decoder = Decoder::new();
        decoder.push(&frame(&headers, br#"{"message":"slow down"}"#));
        decoder.push(&frame(&error_headers, b""));
        decoder.push(&frame(&other_headers, b""));
        let exception = decoder.next_message().unwrap().unwrap();
        assert_eq!(exception.message_type(), Some(MessageType::Exception));
        assert_eq!(exception.exception_type(), Some("throttlingException"));
        let error = decoder.next_message().unwrap().unwrap();
        assert_eq!(error.message_type(), Some(MessageType::Error));
        assert_eq!(error.error_code(), Some("InternalFailure"));
        assert_eq!(error.error_message(), Some("boom"));
        let other = decoder.next_message().unwrap().unwrap();
        assert_eq!(other.message_type(), Some(MessageType::Other("surprise")));
        assert!(decoder.next_message().unwrap().is_none());
    }

    #[test]
    fn a_message_over_the_bound_is_refused_from_its_prelude() {
        let bytes = frame(&[], &[b'x'; 100]);
        let mut decoder = Decoder::with_max_message_bytes(64);
        // The prelude alone is enough to refuse it: nothing waits for the 116 bytes.
        decoder.push(&bytes[..PRELUDE_BYTES]);
        assert_eq!(
            decoder.next_message().unwrap_err(),
            EventStreamError::MessageTooLarge {
                total_length: 116,
                max: 64
            }
        );
        assert_eq!(decoder.buffered_len(), 0);
        // The error stays, and what comes after is dropped.
        decoder.push(&bytes[PRELUDE_BYTES..]);
        assert_eq!(decoder.buffered_len(), 0);
        assert!(matches!(
            decoder.next_message(),
            Err(EventStreamError::MessageTooLarge { .. })
        ));
        assert!(matches!(
            decoder.finish(),
            Err(EventStreamError::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn a_message_at_the_bound_is_decoded() {
        let bytes = frame(&[], &[b'x'; 48]);
        let mut decoder = Decoder::with_max_message_bytes(64);
        decoder.push(&bytes);
        assert_eq!(decoder.next_message().unwrap().unwrap().payload().len(), 48);
    }

    #[test]
    fn a_total_length_under_sixteen_is_refused() {
        let mut prelude = 15u32.to_be_bytes().to_vec();
        prelude.extend_from_slice(&0u32.to_be_bytes());
        prelude.extend_from_slice(&crc32(&prelude).to_be_bytes());
        let mut decoder = Decoder::new();
        decoder.push(&prelude);
        assert_eq!(
            decoder.next_message().unwrap_err(),
            EventStreamError::MessageTooShort { total_length: 15 }
        );
    }

    #[test]
    fn headers_longer_than_the_message_are_refused() {
        let mut prelude = 20u32.to_be_bytes().to_vec();
        prelude.extend_from_slice(&5u32.to_be_bytes());
        prelude.extend_from_slice(&crc32(&prelude).to_be_bytes());
        let mut decoder = Decoder::new();
        decoder.push(&prelude);
        assert_eq!(
            decoder.next_message().unwrap_err(),
            EventStreamError::HeadersTooLong {
                headers_length: 5,
                total_length: 20
            }
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases: [(&[u8], EventStreamError); 5] = [
            (b"\x04name\x0a", EventStreamError::UnknownHeaderType(10)),
            (b"\x09name", EventStreamError::HeaderTruncated),
            (
                b"\x04name\x07\x00\x09abc",
                EventStreamError::HeaderTruncated,
            ),
            (b"\x04name\x04\x00\x00", EventStreamError::HeaderTruncated),
            (b"\x02\xff\xfe\x00", EventStreamError::HeaderNotUtf8),
        ];
        for (headers, error) in cases {
            let mut decoder = Decoder::new();
            decoder.push(&frame(headers, b"payload"));
            assert_eq!(decoder.next_message().unwrap_err(), error, "{headers:?}");
        }
        let mut decoder = Decoder::new();
        decoder.push(&frame(b"\x01s\x07\x00\x02\xc3\x28", b""));
        assert_eq!(
            decoder.next_message().unwrap_err(),
            EventStreamError::HeaderNotUtf8
        );
    }

    #[test]
    fn every_header_type_decodes() {
        let headers = b"\x01t\x00\x01f\x01\x01b\x02\xff\x01s\x03\xff\xfe\x01i\x04\x00\x00\x01\x00\
            \x01l\x05\x80\x00\x00\x00\x00\x00\x00\x00\x01y\x06\x00\x02\x00\xff\x01z\x07\x00\x03abc\
            \x01m\x08\x00\x00\x00\x00\x00\x00\x03\xe8\x01u\x09\x00\x01\x02\x03\x04\x05\x06\x07\
            \x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x00\x00";
        let mut decoder = Decoder::new();
        decoder.push(&frame(headers, b""));
        let message = decoder.next_message().unwrap().unwrap();
        let decoded: Vec<Header<'_>> = message.headers().collect();
        let uuid = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        assert_eq!(
            decoded,
            [
                Header {
                    name: "t",
                    value: HeaderValue::Bool(true)
                },
                Header {
                    name: "f",
                    value: HeaderValue::Bool(false)
                },
                Header {
                    name: "b",
                    value: HeaderValue::Byte(-1)
                },
                Header {
                    name: "s",
                    value: HeaderValue::Short(-2)
                },
                Header {
                    name: "i",
                    value: HeaderValue::Int(256)
                },
                Header {
                    name: "l",
                    value: HeaderValue::Long(i64::MIN)
                },
                Header {
                    name: "y",
                    value: HeaderValue::Bytes(&[0, 255])
                },
                Header {
                    name: "z",
                    value: HeaderValue::String("abc")
                },
                Header {
                    name: "m",
                    value: HeaderValue::Timestamp(1000)
                },
                Header {
                    name: "u",
                    value: HeaderValue::Uuid(uuid)
                },
                Header {
                    name: "",
                    value: HeaderValue::Bool(true)
                },
            ]
        );
        for header in &decoded {
            let code = header.value.type_code();
            assert!(code <= 9);
        }
        assert_eq!(decoded[0].value.type_code(), 0);
        assert_eq!(decoded[9].value.type_code(), 9);
        assert_eq!(message.header("z"), Some(HeaderValue::String("abc")));
        assert_eq!(message.string_header("i"), None);
    }

    #[test]
    fn the_buffer_holds_only_the_unfinished_message() {
        let one = frame(&string_header(":event-type", "x"), &[b'p'; 40]);
        let stream: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let mut decoder = Decoder::new();
        let mut decoded = 0;
        for chunk in stream.chunks(7) {
            decoder.push(chunk);
            while let Some(message) = decoder.next_message().unwrap() {
                assert_eq!(message.frame(), &one[..]);
                decoded += 1;
            }
            assert!(decoder.buffered_len() < one.len());
            assert!(decoder.buffer.len() < one.len() + 7);
        }
        assert_eq!(decoded, 1000);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn a_large_message_does_not_keep_its_buffer() {
        let large = frame(&[], &vec![b'x'; 1 << 20]);
        let small = frame(&[], b"x");
        let mut decoder = Decoder::new();
        decoder.push(&large);
        assert!(decoder.next_message().unwrap().is_some());
        decoder.push(&small);
        assert!(decoder.next_message().unwrap().is_some());
        assert!(decoder.buffer.capacity() <= RETAINED_CAPACITY);
    }

    #[test]
    fn finish_reports_a_stream_cut_inside_a_message() {
        let bytes = frame(&[], b"payload");
        let mut decoder = Decoder::new();
        decoder.push(&bytes[..bytes.len() - 1]);
        assert_eq!(decode_all(&mut decoder).unwrap(), Vec::new());
        assert_eq!(
            decoder.finish(),
            Err(EventStreamError::Truncated {
                buffered: bytes.len() - 1
            })
        );
        let mut short = Decoder::new();
        short.push(&bytes[..5]);
        assert_eq!(short.next_message(), Ok(None));
        assert_eq!(
            short.finish(),
            Err(EventStreamError::Truncated { buffered: 5 })
        );
    }

    #[test]
    fn a_message_checksum_error_stops_the_stream() {
        let good = frame(&[], b"one");
        let mut bad = frame(&[], b"two");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut decoder = Decoder::new();
        decoder.push(&[good.clone(), bad, good].concat());
        assert_eq!(decoder.next_message().unwrap().unwrap().payload(), b"one");
        assert!(matches!(
            decoder.next_message(),
            Err(EventStreamError::MessageChecksumMismatch { .. })
        ));
        assert!(matches!(
            decoder.next_message(),
            Err(EventStreamError::MessageChecksumMismatch { .. })
        ));
    }

    #[test]
    fn debug_shows_the_payload_size_not_the_payload() {
        let mut decoder = Decoder::new();
        decoder.push(&frame(&string_header(":event-type", "x"), b"secret text"));
        let message = decoder.next_message().unwrap().unwrap();
        let shown = format!("{message:?}");
        assert!(shown.contains("payload_len: 11"), "{shown}");
        assert!(!shown.contains("secret text"), "{shown}");
    }
}
