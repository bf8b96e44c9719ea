//! An AWS event stream encoder of every header type, for the `aws_eventstream` target's
//! re-encoding check and its seeds. Messages as owned values, so that decodes can be compared.

use tollgate_core::aws::eventstream::{crc32, HeaderValue, Message};

/// A header value, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Types 0 and 1.
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
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

impl From<HeaderValue<'_>> for Value {
    fn from(value: HeaderValue<'_>) -> Self {
        match value {
            HeaderValue::Bool(value) => Value::Bool(value),
            HeaderValue::Byte(value) => Value::Byte(value),
            HeaderValue::Short(value) => Value::Short(value),
            HeaderValue::Int(value) => Value::Int(value),
            HeaderValue::Long(value) => Value::Long(value),
            HeaderValue::Bytes(value) => Value::Bytes(value.to_vec()),
            HeaderValue::String(value) => Value::String(value.to_string()),
            HeaderValue::Timestamp(value) => Value::Timestamp(value),
            HeaderValue::Uuid(value) => Value::Uuid(value),
        }
    }
}

/// A message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// The headers, in order.
    pub headers: Vec<(String, Value)>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl From<&Message<'_>> for OwnedMessage {
    fn from(message: &Message<'_>) -> Self {
        OwnedMessage {
            headers: message
                .headers()
                .map(|header| (header.name.to_string(), header.value.into()))
                .collect(),
            payload: message.payload().to_vec(),
        }
    }
}

/// The wire form of `message`. Panics on a name over 255 bytes or a value over 65535: a
/// decoded message has none.
pub fn encode(message: &OwnedMessage) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in &message.headers {
        headers.push(u8::try_from(name.len()).expect("a header name of at most 255 bytes"));
        headers.extend_from_slice(name.as_bytes());
        let with_length = |headers: &mut Vec<u8>, code: u8, bytes: &[u8]| {
            headers.push(code);
            let length = u16::try_from(bytes.len()).expect("a value of at most 65535 bytes");
            headers.extend_from_slice(&length.to_be_bytes());
            headers.extend_from_slice(bytes);
        };
        match value {
            Value::Bool(true) => headers.push(0),
            Value::Bool(false) => headers.push(1),
            Value::Byte(value) => {
                headers.push(2);
                headers.extend_from_slice(&value.to_be_bytes());
            }
            Value::Short(value) => {
                headers.push(3);
                headers.extend_from_slice(&value.to_be_bytes());
            }
            Value::Int(value) => {
                headers.push(4);
                headers.extend_from_slice(&value.to_be_bytes());
            }
            Value::Long(value) => {
                headers.push(5);
                headers.extend_from_slice(&value.to_be_bytes());
            }
            Value::Bytes(bytes) => with_length(&mut headers, 6, bytes),
            Value::String(text) => with_length(&mut headers, 7, text.as_bytes()),
            Value::Timestamp(value) => {
                headers.push(8);
                headers.extend_from_slice(&value.to_be_bytes());
            }
            Value::Uuid(value) => {
                headers.push(9);
                headers.extend_from_slice(value);
            }
        }
    }
    let total = 16 + headers.len() + message.payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).expect("a u32 length").to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(headers.len())
            .expect("a u32 length")
            .to_be_bytes(),
    );
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&message.payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// A Bedrock-shaped event: `:event-type`, `:content-type` and `:message-type` strings.
pub fn bedrock_event(event_type: &str, payload: &str) -> Vec<u8> {
    let string = |name: &str, value: &str| (name.to_string(), Value::String(value.to_string()));
    encode(&OwnedMessage {
        headers: vec![
            string(":event-type", event_type),
            string(":content-type", "application/json"),
            string(":message-type", "event"),
        ],
        payload: payload.as_bytes().to_vec(),
    })
}
