//! How a filter proves itself to the control plane: the filter token it presents on every
//! `FilterSync` stream. The token is a secret (whoever holds it receives every provider key),
//! so it never sits in the plugin configuration, which Envoy shows in `/config_dump`: the
//! configuration names an environment variable of Envoy's process, and the glue reads it (the
//! Wasm VM sees it through `vm_config.environment_variables.host_env_keys`).

/// gRPC metadata key that carries the filter token on the `FilterSync` stream (the control
/// plane checks the same key).
pub const FILTER_TOKEN_METADATA: &str = "x-tollgate-filter-token";

/// The environment variable the filter reads its token from unless configured otherwise.
pub const DEFAULT_FILTER_TOKEN_ENV: &str = "TOLLGATE_FILTER_TOKEN";

/// The filter token, as read from the environment. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct FilterToken(String);

impl FilterToken {
    /// The token, for the stream's metadata only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for FilterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilterToken(***)")
    }
}

/// Why the configured token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterTokenError {
    /// The variable holds a character a gRPC metadata value cannot carry.
    #[error(
        "the filter token in environment variable {variable} may only hold visible ASCII \
         characters (no spaces)"
    )]
    NotHeaderSafe {
        /// The variable's name.
        variable: String,
    },
}

/// The token in environment variable `variable`, as `lookup` (the process environment)
/// reports it; surrounding whitespace (a file's final newline) is dropped. `None` when the
/// variable is unset or empty: the filter then connects without a token, which only a
/// control plane running without one accepts.
pub fn filter_token(
    variable: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<FilterToken>, FilterTokenError> {
    let Some(value) = lookup(variable) else {
        return Ok(None);
    };
    let token = value.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(FilterTokenError::NotHeaderSafe {
            variable: variable.to_string(),
        });
    }
    Ok(Some(FilterToken(token.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(value: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            assert_eq!(name, "TOKEN_VAR");
            value.map(str::to_string)
        }
    }

    #[test]
    fn token_comes_from_the_named_variable_trimmed() {
        let token = filter_token("TOKEN_VAR", lookup(Some("  s3cret-token\n")))
            .unwrap()
            .unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        assert_eq!(format!("{token:?}"), "FilterToken(***)");
    }

    #[test]
    fn unset_or_empty_means_no_token() {
        assert_eq!(filter_token("TOKEN_VAR", lookup(None)), Ok(None));
        assert_eq!(filter_token("TOKEN_VAR", lookup(Some(" \n"))), Ok(None));
    }

    #[test]
    fn a_token_a_header_cannot_carry_is_an_error_without_its_value() {
        let error = filter_token("TOKEN_VAR", lookup(Some("two words"))).unwrap_err();
        assert_eq!(
            error,
            FilterTokenError::NotHeaderSafe {
                variable: "TOKEN_VAR".into()
            }
        );
        assert!(!error.to_string().contains("words"));
        assert!(filter_token("TOKEN_VAR", lookup(Some("caf\u{e9}"))).is_err());
    }
}
