//! `Debug` output without secrets: provider keys travel in deployments and in the headers a
//! plan sets, and a `{:?}` in a log line or a test failure must not print them.

use core::fmt;

/// Header values safe to show; every other header a plan sets may carry a credential.
const SHOWN_HEADERS: &[&str] = &["content-type", "content-length", "anthropic-version"];

/// What `Debug` shows for a secret: whether it is set, never its value.
pub fn secret(value: &str) -> &'static str {
    if value.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

/// Headers for `Debug`: names, and values only for [`SHOWN_HEADERS`].
pub struct Headers<'a>(pub &'a [(&'static str, String)]);

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if SHOWN_HEADERS.contains(name) {
                    value.as_str()
                } else {
                    secret(value)
                };
                (*name, shown)
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden_and_the_rest_shown() {
        let headers = [
            ("content-type", "application/json".to_string()),
            ("authorization", "Bearer sk-secret".to_string()),
            ("x-api-key", "sk-secret".to_string()),
            ("anthropic-version", "2023-06-01".to_string()),
        ];
        assert_eq!(
            format!("{:?}", Headers(&headers)),
            r#"[("content-type", "application/json"), ("authorization", "<redacted>"), ("x-api-key", "<redacted>"), ("anthropic-version", "2023-06-01")]"#
        );
        assert_eq!(secret(""), "");
    }
}
