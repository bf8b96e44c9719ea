//! The encoding side of `application/vnd.amazon.eventstream`, the binary framing Bedrock's
//! ConverseStream answers in, for the mock's Bedrock endpoints.
//!
//! A message, integers big-endian: total length u32, headers length u32, CRC32 of those 8
//! bytes, the headers, the payload, CRC32 of every byte before it. The mock sends string
//! headers only (type 7: name length u8, name, 7, value length u16, value), as Bedrock does:
//! `:event-type`, `:content-type` and `:message-type` on an event, `:exception-type`,
//! `:content-type` and `:message-type` on an exception.
//!
//! Written apart from tollgate-core's decoder (its own CRC32 too), so that the tests that
//! decode one with the other check both; it also reproduces AWS's published vectors byte for
//! byte.

use anyhow::{ensure, Result};

/// The media type of an event stream.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// The prelude (two lengths and a checksum) and the message checksum.
const FRAMING_BYTES: usize = 16;

/// One message with string `headers` (in order) and `payload`.
pub(crate) fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Result<Vec<u8>> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        let name_length = u8::try_from(name.len());
        let value_length = u16::try_from(value.len());
        ensure!(
            name_length.is_ok(),
            "header name {name:?} is over 255 bytes"
        );
        ensure!(
            value_length.is_ok(),
            "the value of header {name:?} is over 65535 bytes"
        );
        encoded_headers.push(name_length.unwrap_or_default());
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&value_length.unwrap_or_default().to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = FRAMING_BYTES + encoded_headers.len() + payload.len();
    let total_length = u32::try_from(total);
    ensure!(
        total_length.is_ok(),
        "a message of {total} bytes is too long"
    );
    let headers_length = u32::try_from(encoded_headers.len()).unwrap_or_default();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&total_length.unwrap_or_default().to_be_bytes());
    message.extend_from_slice(&headers_length.to_be_bytes());
    let prelude_crc = crc32(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&encoded_headers);
    message.extend_from_slice(payload);
    let message_crc = crc32(&message);
    message.extend_from_slice(&message_crc.to_be_bytes());
    Ok(message)
}

/// An event (`:message-type: event`) named `event_type` with a JSON `payload`.
pub(crate) fn event(event_type: &str, payload: &[u8]) -> Result<Vec<u8>> {
    encode_message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// An exception (`:message-type: exception`) named `exception_type` (`throttlingException`)
/// with its JSON error body.
pub(crate) fn exception(exception_type: &str, payload: &[u8]) -> Result<Vec<u8>> {
    encode_message(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    )
}

/// CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::path::Path;

    use tollgate_core::aws::eventstream::{Decoder, HeaderValue, MessageType};

    use super::*;

    /// A published vector of AWS's event stream test suite (copied into tollgate-core).
    fn published(case: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../filter/core/tests/data/aws/eventstream/encoded/positive")
            .join(case);
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    #[test]
    fn crc32_of_the_check_string() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn reproduces_the_published_payload_one_str_header_vector() {
        let encoded =
            encode_message(&[("content-type", "application/json")], b"{'foo':'bar'}").unwrap();
        assert_eq!(encoded, published("payload_one_str_header"));
    }

    #[test]
    fn reproduces_the_published_payload_no_headers_vector() {
        let encoded = encode_message(&[], b"{'foo':'bar'}").unwrap();
        assert_eq!(encoded, published("payload_no_headers"));
    }

    #[test]
    fn reproduces_the_published_empty_message_vector() {
        assert_eq!(
            encode_message(&[], b"").unwrap(),
            published("empty_message")
        );
    }

    #[test]
    fn an_event_decodes_with_tollgate_core() {
        let payload = br#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcd"}"#;
        let encoded = event("contentBlockDelta", payload).unwrap();
        // Cut anywhere, the decoder finds the same message.
        for at in 0..=encoded.len() {
            let mut decoder = Decoder::new();
            decoder.push(&encoded[..at]);
            let early = decoder.next_message().unwrap().map(|m| m.frame().to_vec());
            assert_eq!(early, (at == encoded.len()).then(|| encoded.clone()));
            decoder.push(&encoded[at..]);
            if early.is_none() {
                let message = decoder.next_message().unwrap().unwrap();
                assert_eq!(message.message_type(), Some(MessageType::Event));
                assert_eq!(message.event_type(), Some("contentBlockDelta"));
                assert_eq!(message.content_type(), Some("application/json"));
                assert_eq!(message.payload(), payload);
                assert_eq!(
                    message.headers().map(|h| h.name).collect::<Vec<_>>(),
                    [":event-type", ":content-type", ":message-type"]
                );
            }
            assert!(decoder.next_message().unwrap().is_none());
            decoder.finish().unwrap();
        }
    }

    #[test]
    fn an_exception_decodes_with_tollgate_core() {
        let payload = br#"{"message":"Too many requests, please wait before trying again."}"#;
        let encoded = exception("throttlingException", payload).unwrap();
        let mut decoder = Decoder::new();
        decoder.push(&encoded);
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(message.message_type(), Some(MessageType::Exception));
        assert_eq!(message.exception_type(), Some("throttlingException"));
        assert_eq!(
            message.header(":content-type"),
            Some(HeaderValue::String("application/json"))
        );
        assert_eq!(message.payload(), payload);
    }

    #[test]
    fn a_stream_of_events_decodes_in_order() {
        let stream = [
            event("messageStart", br#"{"role":"assistant"}"#).unwrap(),
            event(
                "contentBlockDelta",
                br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
            )
            .unwrap(),
            event("messageStop", br#"{"stopReason":"end_turn"}"#).unwrap(),
        ]
        .concat();
        let mut decoder = Decoder::new();
        let mut names = Vec::new();
        for chunk in stream.chunks(5) {
            decoder.push(chunk);
            while let Some(message) = decoder.next_message().unwrap() {
                names.push(message.event_type().unwrap().to_string());
            }
        }
        assert_eq!(names, ["messageStart", "contentBlockDelta", "messageStop"]);
        decoder.finish().unwrap();
    }

    #[test]
    fn refuses_what_the_framing_cannot_carry() {
        let long_name = "n".repeat(256);
        assert!(encode_message(&[(&long_name, "v")], b"").is_err());
        let long_value = "v".repeat(65_536);
        assert!(encode_message(&[("n", &long_value)], b"").is_err());
        let longest_value = "v".repeat(65_535);
        assert!(encode_message(&[(&"n".repeat(255), &longest_value)], b"").is_ok());
    }
}
