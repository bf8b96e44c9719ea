//! What the golden test files of every provider share: reading a case's files, comparing
//! (or, with `UPDATE_GOLDEN=1`, rewriting) its expected JSON and event streams, usage and
//! cost, and one `#[test]` per fixture directory ([`golden_cases!`]).
//!
//! `mod golden;` in a test file; each file uses what it needs of it.
#![allow(dead_code, unused_macros)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde_json::{json, Value};
use tollgate_core::providers::TranslateContext;
use tollgate_core::{proto, Usage};

/// The clock every golden case runs with.
pub const CONTEXT: TranslateContext = TranslateContext {
    now_unix: 1_700_000_000,
};

/// One `#[test]` per fixture directory, running `$check(name)`, and a test that every
/// directory of `$fixtures()` is listed.
macro_rules! golden_cases {
    (fixtures = $fixtures:path, check = $check:path; $($case:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                $check(stringify!($case));
            }
        )*

        #[test]
        fn every_fixture_has_its_test() {
            $crate::golden::every_fixture_is_listed(&$fixtures(), CASES);
        }
    };
}

/// Every directory below `fixtures` is one of `cases`, and every case has its directory.
pub fn every_fixture_is_listed(fixtures: &Path, cases: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(fixtures)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .map(|path| path.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    found.sort();
    let mut listed: Vec<String> = cases.iter().map(ToString::to_string).collect();
    listed.sort();
    assert_eq!(found, listed);
}

pub fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|value| value == "1")
}

/// The case's `pricing.json` (`{"input_cost_per_token": …, …}`, the snapshot's names), or
/// `None`: the deployment is not priced.
pub fn pricing(case: &Path) -> Option<proto::Pricing> {
    let value: Value = serde_json::from_slice(&std::fs::read(case.join("pricing.json")).ok()?)
        .unwrap_or_else(|error| panic!("{}/pricing.json: {error}", case.display()));
    let price = |name: &str| value.get(name).and_then(Value::as_f64);
    Some(proto::Pricing {
        input_cost_per_token: price("input_cost_per_token"),
        output_cost_per_token: price("output_cost_per_token"),
        cache_read_input_token_cost: price("cache_read_input_token_cost"),
        cache_creation_input_token_cost: price("cache_creation_input_token_cost"),
        output_cost_per_reasoning_token: price("output_cost_per_reasoning_token"),
    })
}

/// The cost a priced stream's usage chunk must carry, as the case's `expected_cost` writes
/// it; checked against the bytes, since comparing JSON would accept `3.75e-5`.
pub fn check_cost(case: &Path, output: &[u8], cost: Option<f64>) {
    let text = String::from_utf8_lossy(output);
    match read(case, "expected_cost") {
        Some(expected) => {
            let expected = String::from_utf8_lossy(&expected).trim().to_string();
            assert_eq!(
                cost.map(tollgate_core::pricing::cost_header_value),
                Some(expected.clone()),
                "the usage record's cost"
            );
            assert_eq!(
                text.matches(&format!("\"cost\":{expected}}}")).count(),
                1,
                "one usage chunk with the cost:\n{text}"
            );
        }
        None => assert!(!text.contains("\"cost\""), "no cost:\n{text}"),
    }
}

pub fn read(case: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(case.join(name)).ok()
}

pub fn read_status(case: &Path, name: &str) -> Option<u16> {
    read(case, name).map(|bytes| {
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{}/{name}: {error}", case.display()))
    })
}

pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(bytes)))
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// Compares `actual` with the case's JSON file, or rewrites the file under UPDATE_GOLDEN=1.
pub fn golden_json(case: &Path, name: &str, actual: &Value) {
    let path = case.join(name);
    if update() {
        std::fs::write(&path, pretty(actual) + "\n").unwrap();
        return;
    }
    let expected =
        json(&std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display())));
    assert!(
        actual == &expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        pretty(actual),
        pretty(&expected)
    );
}

/// The `data:` payloads of an OpenAI stream, which must consist of nothing but
/// `data: <payload>\n\n` events; JSON payloads are parsed, `[DONE]` is kept as a string.
pub fn data_events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("streams are UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "stream does not end with a complete event: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "multi-line event: {event:?}");
            if payload == "[DONE]" {
                Value::String(payload.into())
            } else {
                json(payload.as_bytes())
            }
        })
        .collect()
}

pub fn golden_sse(case: &Path, name: &str, actual: &[u8]) {
    let path = case.join(name);
    if update() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let (actual, expected) = (data_events(actual), data_events(&expected));
    assert!(
        actual == expected,
        "{}:\n--- got ---\n{}\n--- expected ---\n{}",
        path.display(),
        pretty(&Value::Array(actual)),
        pretty(&Value::Array(expected))
    );
}

pub fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    })
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The end of each event of `stream` (just past its blank line, LF or CRLF).
pub fn event_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let rest = &stream[at..];
        let found = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|separator| {
                rest.windows(separator.len())
                    .position(|window| window == *separator)
                    .map(|position| position + separator.len())
            })
            .min();
        match found {
            Some(length) => {
                at += length;
                ends.push(at);
            }
            None => break,
        }
    }
    ends
}
