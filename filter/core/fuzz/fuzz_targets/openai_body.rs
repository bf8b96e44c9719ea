//! The buffered OpenAI path (`ResponseHandler::on_complete_body` of a plan for an OpenAI
//! deployment) on an arbitrary status and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success passes untouched (status and body kept, content-length valid), and its usage
//!   is the top-level `usage` of the body whenever the body is a JSON object;
//! - an error becomes an OpenAI error body (`{"error":{"message":...}}`), status kept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_core::proto::ProviderKind;
use tollgate_core::Usage;
use tollgate_core_fuzz::{assert_openai_error, run_buffered, Buffered, ReferenceUsage};

/// The usage of a body that is a JSON object: its top-level `usage`, when that is a usage
/// object; `None` for a body that is not a JSON object.
fn reference_usage(body: &[u8]) -> Option<Usage> {
    let object: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let reported = object
        .get("usage")
        .and_then(|usage| ReferenceUsage::deserialize(usage).ok());
    Some(reported.map_or_else(Usage::default, Usage::from))
}

fuzz_target!(|data: &[u8]| {
    let Some(Buffered {
        status,
        body,
        plan,
        completed,
    }) = run_buffered(ProviderKind::Openai, data)
    else {
        return;
    };
    let usage = plan.response.usage();
    assert_eq!(completed.status, None);
    if (200..300).contains(&status) {
        assert_eq!(
            completed.body, None,
            "a success body is forwarded as it came"
        );
        assert!(!plan.response.drops_content_length());
        if let Some(expected) = reference_usage(body) {
            assert_eq!(usage, expected, "{}", String::from_utf8_lossy(body));
        }
    } else {
        assert_openai_error(&completed.body.expect("errors are rewritten"));
        assert!(plan.response.drops_content_length());
        assert!(!usage.is_reported());
    }
});
