//! The two AWS primitives the Bedrock provider needs, free of any SDK: Signature Version 4
//! request signing ([`sigv4`]) and the binary event stream framing of
//! `application/vnd.amazon.eventstream` ([`eventstream`]), which ConverseStream answers in.
//!
//! Both are pure: no clock (the signing time is passed in), no I/O, no panics on any input.

pub mod eventstream;
pub mod sigv4;
