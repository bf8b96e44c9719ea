//! The AWS event stream decoder (`tollgate_core::aws::eventstream::Decoder`) on arbitrary bytes
//! cut at arbitrary points, with a small message bound.
//!
//! Input: one byte for the bound (`16 + 4 * byte` bytes; 255: the default 16 MiB), one for the
//! chunking, then the stream, fed whole and cut. Checks:
//! - the cut feed gives the same messages and the same error (or clean end) as the whole one;
//! - every message re-encodes to exactly the bytes it came from, and the messages are the
//!   stream's bytes in order: what is left is the unfinished message `finish` reports;
//! - memory is bounded: after each chunk is drained, the decoder holds less than the bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::aws::eventstream::{Decoder, EventStreamError, DEFAULT_MAX_MESSAGE_BYTES};
use tollgate_core_fuzz::chunks;
use tollgate_core_fuzz::eventstream::{encode, OwnedMessage};

/// What a feed gave: every message with its bytes, and how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<(OwnedMessage, Vec<u8>)>,
    end: Result<(), EventStreamError>,
}

fn feed(chunks: &[&[u8]], max: usize) -> Outcome {
    let mut decoder = Decoder::with_max_message_bytes(max);
    assert_eq!(decoder.max_message_bytes(), max);
    let mut messages = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    assert!(message.frame().len() <= max);
                    messages.push((OwnedMessage::from(&message), message.frame().to_vec()));
                }
                Ok(None) => break,
                Err(error) => {
                    // The error stays.
                    assert_eq!(decoder.next_message().err(), Some(error.clone()));
                    assert_eq!(decoder.finish(), Err(error.clone()));
                    return Outcome {
                        messages,
                        end: Err(error),
                    };
                }
            }
        }
        assert!(
            decoder.buffered_len() < max,
            "{} bytes held with a bound of {max}",
            decoder.buffered_len()
        );
    }
    Outcome {
        messages,
        end: decoder.finish(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [bound, chunking, stream @ ..] = data else {
        return;
    };
    let max = if *bound == u8::MAX {
        DEFAULT_MAX_MESSAGE_BYTES
    } else {
        16 + 4 * usize::from(*bound)
    };
    let whole = feed(&[stream], max);
    let cut = feed(&chunks(*chunking, stream), max);
    assert_eq!(cut, whole, "cut and whole feeds differ");

    let mut consumed = 0;
    for (message, frame) in &whole.messages {
        assert_eq!(
            &encode(message),
            frame,
            "a message does not re-encode to its bytes"
        );
        assert_eq!(
            stream.get(consumed..consumed + frame.len()),
            Some(&frame[..])
        );
        consumed += frame.len();
    }
    match whole.end {
        Ok(()) => assert_eq!(consumed, stream.len()),
        Err(EventStreamError::Truncated { buffered }) => {
            assert!(buffered > 0);
            assert_eq!(consumed + buffered, stream.len());
        }
        // Any other error is about the message at `consumed`.
        Err(_) => assert!(consumed < stream.len()),
    }
});
