//! AWS's published event stream test vectors: `tests/data/aws/eventstream/` (provenance in
//! `tests/data/aws/README.md`).
//!
//! `encoded/positive/<case>` is one message and `decoded/positive/<case>` what it holds (JSON:
//! lengths, both checksums as signed 32-bit integers, headers as `{name, type, value}` with
//! byte arrays, strings and UUIDs in base64, the payload in base64).
//! `encoded/negative/<case>` is a corrupted message and `decoded/negative/<case>` the error
//! it must give. Every case is decoded whole, cut in two at every byte boundary, and one byte
//! at a time, and must give the same message or the same error each way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use tollgate_core::aws::eventstream::{
    crc32, Decoder, EventStreamError, HeaderValue, PRELUDE_BYTES,
};

fn data(part: &str, case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/aws/eventstream")
        .join(part)
        .join(case)
}

fn read(part: &str, case: &str) -> Vec<u8> {
    let path = data(part, case);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Standard base64 (RFC 4648, padded), for the vectors' JSON.
fn base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text}"),
        }
    };
    let mut out = Vec::new();
    for group in text.trim_end_matches('=').as_bytes().chunks(4) {
        let bits = group.iter().enumerate().fold(0u32, |bits, (index, byte)| {
            bits | (value(*byte) << (18 - 6 * index))
        });
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

/// A header as owned values, to compare across decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedHeader {
    name: String,
    type_code: u8,
    value: OwnedValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedValue {
    Bool(bool),
    Integer(i64),
    Bytes(Vec<u8>),
}

impl From<HeaderValue<'_>> for OwnedValue {
    fn from(value: HeaderValue<'_>) -> Self {
        match value {
            HeaderValue::Bool(value) => OwnedValue::Bool(value),
            HeaderValue::Byte(value) => OwnedValue::Integer(value.into()),
            HeaderValue::Short(value) => OwnedValue::Integer(value.into()),
            HeaderValue::Int(value) => OwnedValue::Integer(value.into()),
            HeaderValue::Long(value) | HeaderValue::Timestamp(value) => OwnedValue::Integer(value),
            HeaderValue::Bytes(value) => OwnedValue::Bytes(value.to_vec()),
            HeaderValue::String(value) => OwnedValue::Bytes(value.as_bytes().to_vec()),
            HeaderValue::Uuid(value) => OwnedValue::Bytes(value.to_vec()),
        }
    }
}

/// A decoded message as owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnedMessage {
    total_length: usize,
    headers: Vec<OwnedHeader>,
    payload: Vec<u8>,
    prelude_crc: u32,
    message_crc: u32,
}

/// What `decoded/positive/<case>` says.
fn expected_message(case: &str) -> OwnedMessage {
    let json: Value = serde_json::from_slice(&read("decoded/positive", case)).unwrap();
    let crc = |key: &str| json[key].as_i64().unwrap() as u32;
    let headers = json["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|header| {
            let type_code = header["type"].as_u64().unwrap() as u8;
            let value = match type_code {
                0 | 1 => OwnedValue::Bool(header["value"].as_bool().unwrap()),
                2 | 3 | 4 | 5 | 8 => OwnedValue::Integer(header["value"].as_i64().unwrap()),
                6 | 7 | 9 => OwnedValue::Bytes(base64(header["value"].as_str().unwrap())),
                other => panic!("type {other}"),
            };
            OwnedHeader {
                name: header["name"].as_str().unwrap().to_string(),
                type_code,
                value,
            }
        })
        .collect();
    let message = OwnedMessage {
        total_length: json["total_length"].as_u64().unwrap() as usize,
        headers,
        payload: base64(json["payload"].as_str().unwrap()),
        prelude_crc: crc("prelude_crc"),
        message_crc: crc("message_crc"),
    };
    assert_eq!(
        json["headers_length"].as_u64().unwrap() as usize,
        message.total_length - 16 - message.payload.len()
    );
    message
}

/// Feeds `chunks` to a fresh decoder, draining it after each: the messages, then the error
/// or the end-of-stream check.
fn decode(chunks: &[&[u8]]) -> (Vec<OwnedMessage>, Result<(), EventStreamError>) {
    let mut decoder = Decoder::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let frame = message.frame();
                    let word =
                        |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
                    messages.push(OwnedMessage {
                        total_length: frame.len(),
                        headers: message
                            .headers()
                            .map(|header| OwnedHeader {
                                name: header.name.to_string(),
                                type_code: header.value.type_code(),
                                value: header.value.into(),
                            })
                            .collect(),
                        payload: message.payload().to_vec(),
                        prelude_crc: word(8),
                        message_crc: word(frame.len() - 4),
                    });
                }
                Ok(None) => break,
                Err(error) => return (messages, Err(error)),
            }
        }
    }
    (messages, decoder.finish())
}

/// Every way of cutting `bytes` the tests try: whole, in two at every byte boundary, and one
/// byte at a time.
fn cuts(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut cuts = vec![vec![bytes]];
    for at in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(at);
        cuts.push(vec![head, tail]);
    }
    cuts.push(bytes.chunks(1).collect());
    cuts
}

fn check_positive(case: &str) -> OwnedMessage {
    let bytes = read("encoded/positive", case);
    let expected = expected_message(case);
    assert_eq!(bytes.len(), expected.total_length);
    for chunks in cuts(&bytes) {
        let (messages, end) = decode(&chunks);
        assert_eq!(
            messages,
            std::slice::from_ref(&expected),
            "cut {:?}",
            chunk_lengths(&chunks)
        );
        assert_eq!(end, Ok(()));
    }
    // The checksums the JSON gives are those of the bytes.
    assert_eq!(crc32(&bytes[..8]), expected.prelude_crc);
    assert_eq!(crc32(&bytes[..bytes.len() - 4]), expected.message_crc);
    expected
}

fn check_negative(case: &str) -> EventStreamError {
    let bytes = read("encoded/negative", case);
    let text = String::from_utf8(read("decoded/negative", case)).unwrap();
    let (first_messages, first_end) = decode(&[&bytes]);
    assert_eq!(first_messages, []);
    let error = first_end.unwrap_err();
    match text.trim() {
        "Prelude checksum mismatch" => assert!(
            matches!(error, EventStreamError::PreludeChecksumMismatch { .. }),
            "{error:?}"
        ),
        "Message checksum mismatch" => assert!(
            matches!(error, EventStreamError::MessageChecksumMismatch { .. }),
            "{error:?}"
        ),
        other => panic!("{case}: unknown expectation {other:?}"),
    }
    for chunks in cuts(&bytes) {
        let (messages, end) = decode(&chunks);
        assert_eq!(messages, [], "cut {:?}", chunk_lengths(&chunks));
        assert_eq!(end, Err(error.clone()), "cut {:?}", chunk_lengths(&chunks));
    }
    error
}

fn chunk_lengths(chunks: &[&[u8]]) -> Vec<usize> {
    chunks.iter().map(|chunk| chunk.len()).collect()
}

#[test]
fn positive_all_headers() {
    let message = check_positive("all_headers");
    assert_eq!(message.headers.len(), 10);
    // Every type but 0 and 1 is in it once, both booleans too.
    let mut types: Vec<u8> = message.headers.iter().map(|h| h.type_code).collect();
    types.sort_unstable();
    assert_eq!(types, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(
        message.headers[4],
        OwnedHeader {
            name: "byte".into(),
            type_code: 2,
            value: OwnedValue::Integer(-49)
        }
    );
}

#[test]
fn positive_empty_message() {
    let message = check_positive("empty_message");
    assert_eq!(message.total_length, 16);
    assert!(message.headers.is_empty() && message.payload.is_empty());
}

#[test]
fn positive_int32_header() {
    let message = check_positive("int32_header");
    assert_eq!(
        message.headers,
        [OwnedHeader {
            name: "event-type".into(),
            type_code: 4,
            value: OwnedValue::Integer(40_972)
        }]
    );
    assert_eq!(message.payload, b"{'foo':'bar'}");
}

#[test]
fn positive_payload_no_headers() {
    let message = check_positive("payload_no_headers");
    assert!(message.headers.is_empty());
    assert_eq!(message.payload, b"{'foo':'bar'}");
}

#[test]
fn positive_payload_one_str_header() {
    let message = check_positive("payload_one_str_header");
    assert_eq!(
        message.headers,
        [OwnedHeader {
            name: "content-type".into(),
            type_code: 7,
            value: OwnedValue::Bytes(b"application/json".to_vec())
        }]
    );
    // The accessor reads the same header (without the leading colon it is not `:content-type`).
    let bytes = read("encoded/positive", "payload_one_str_header");
    let mut decoder = Decoder::new();
    decoder.push(&bytes);
    let decoded = decoder.next_message().unwrap().unwrap();
    assert_eq!(
        decoded.string_header("content-type"),
        Some("application/json")
    );
    assert_eq!(decoded.content_type(), None);
}

#[test]
fn negative_corrupted_header_len() {
    // The headers length went from 32 to 33: the prelude's checksum no longer matches.
    let error = check_negative("corrupted_header_len");
    assert_eq!(
        error,
        EventStreamError::PreludeChecksumMismatch {
            expected: 0x07fd_8396,
            computed: crc32(&read("encoded/negative", "corrupted_header_len")[..8]),
        }
    );
}

#[test]
fn negative_corrupted_headers() {
    check_negative("corrupted_headers");
}

#[test]
fn negative_corrupted_length() {
    // The total length went from 61 to 62 in a 61-byte stream: refused from the prelude, not
    // left waiting for a byte that never comes.
    let error = check_negative("corrupted_length");
    assert!(matches!(
        error,
        EventStreamError::PreludeChecksumMismatch { .. }
    ));
    let bytes = read("encoded/negative", "corrupted_length");
    let (_, end) = decode(&[&bytes[..PRELUDE_BYTES]]);
    assert_eq!(end, Err(error));
}

#[test]
fn negative_corrupted_payload() {
    check_negative("corrupted_payload");
}

/// All the positive vectors back to back, cut everywhere: the same five messages.
#[test]
fn positive_vectors_in_one_stream() {
    let cases = [
        "all_headers",
        "empty_message",
        "int32_header",
        "payload_no_headers",
        "payload_one_str_header",
    ];
    let stream: Vec<u8> = cases
        .iter()
        .flat_map(|case| read("encoded/positive", case))
        .collect();
    let expected: Vec<OwnedMessage> = cases.iter().map(|case| expected_message(case)).collect();
    for chunks in cuts(&stream) {
        let (messages, end) = decode(&chunks);
        assert_eq!(messages, expected, "cut {:?}", chunk_lengths(&chunks));
        assert_eq!(end, Ok(()));
    }
}
