//! The proxy-wasm serialization of a header map, read as bytes.
//!
//! The SDK's readers (`get_map`, `get_map_bytes`) unwrap `String::from_utf8` on every name
//! (and `get_map` on every value): one client header that is not UTF-8 panics the VM, and the
//! worker answers 503 from then on. This reader keeps names and values as the bytes they are
//! and checks every length against the buffer, so no input can make it panic.
//!
//! Layout: a little-endian `u32` pair count, then a `(name_len: u32, value_len: u32)` pair per
//! header, then each name and each value followed by a NUL byte.

/// Headers as `(name, value)` byte strings, in the host's order.
pub type HeaderPairs = Vec<(Vec<u8>, Vec<u8>)>;

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let field: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(field)).ok()
}

/// The `len` bytes at `at` and the offset past the NUL that must follow them.
fn nul_terminated(bytes: &[u8], at: usize, len: usize) -> Option<(&[u8], usize)> {
    let end = at.checked_add(len)?;
    let field = bytes.get(at..end)?;
    (bytes.get(end) == Some(&0)).then_some((field, end + 1))
}

/// Decodes a serialized header map; `None` when the buffer is not one (truncated, or lengths
/// past its end).
pub fn decode(bytes: &[u8]) -> Option<HeaderPairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    // Every pair takes at least 10 bytes (two lengths, two NULs): a count the buffer cannot
    // hold is refused before anything is allocated for it.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for index in 0..count {
        let sizes = 4 + index * 8;
        let name_len = read_u32(bytes, sizes)?;
        let value_len = read_u32(bytes, sizes + 4)?;
        let (name, after_name) = nul_terminated(bytes, data, name_len)?;
        let (value, after_value) = nul_terminated(bytes, after_name, value_len)?;
        data = after_value;
        pairs.push((name.to_vec(), value.to_vec()));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            bytes.extend_from_slice(name);
            bytes.push(0);
            bytes.extend_from_slice(value);
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn names_and_values_that_are_not_utf8_come_back_as_bytes() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b":path", b"/v1/chat/completions"),
            (b"x-foo", b"\xff\xfe"),
            (b"x-\xff", b"a\x00b"),
        ];
        let decoded = decode(&encode(&pairs)).unwrap();
        let expected: HeaderPairs = pairs
            .iter()
            .map(|(name, value)| (name.to_vec(), value.to_vec()))
            .collect();
        assert_eq!(decoded, expected);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }

    #[test]
    fn a_buffer_that_is_not_a_header_map_is_refused_at_every_length() {
        let whole = encode(&[(b"name", b"value"), (b"other", b"")]);
        for cut in 1..whole.len() {
            assert_eq!(decode(&whole[..cut]), None, "cut at {cut}");
        }
        // A count far beyond what the buffer holds allocates nothing and fails.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert_eq!(decode(&huge), None);
        // Lengths that overflow.
        let mut overflow = 1u32.to_le_bytes().to_vec();
        overflow.extend_from_slice(&u32::MAX.to_le_bytes());
        overflow.extend_from_slice(&u32::MAX.to_le_bytes());
        overflow.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&overflow), None);
    }
}
