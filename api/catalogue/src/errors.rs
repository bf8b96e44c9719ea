//! How a failed attempt at a provider is classified: one table for the filter (retries,
//! fallbacks, its own cooldowns, `/health`) and the control plane (cooldowns judged from
//! every filter's usage records), so that both count the same failures in the same class.
//!
//! The classes are those LiteLLM's Router tells apart ([`ErrorClass`]); its per-class
//! settings (`retry_policy`, `allowed_fails_policy`) name a coarser set ([`PolicyClass`]).

/// What went wrong with an attempt, in the classes LiteLLM's retry and cooldown policies
/// name. [`ErrorClass::of`] classifies; [`ErrorClass::name`] is the name in stats, logs and
/// the health report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 429.
    RateLimit,
    /// 408, 504, a timeout of the gateway.
    Timeout,
    /// 5xx, 529, no answer at all (connection failure or reset), a status outside HTTP's
    /// ranges.
    ServerError,
    /// 401, 403.
    Authentication,
    /// 404: the deployment does not know the model.
    NotFound,
    /// The request does not fit the model's context window (error code
    /// `context_length_exceeded`).
    ContextWindow,
    /// The provider refused the request for its content (error code `content_filter`,
    /// `content_policy_violation` or `invalid_prompt`).
    ContentPolicy,
    /// Any other 4xx: the request itself is wrong, wherever it goes.
    BadRequest,
}

impl ErrorClass {
    /// Number of classes: the length of a per-class table indexed by [`ErrorClass::index`].
    pub const COUNT: usize = 8;

    /// Every class, in [`ErrorClass::index`] order.
    pub const ALL: [ErrorClass; ErrorClass::COUNT] = [
        ErrorClass::RateLimit,
        ErrorClass::Timeout,
        ErrorClass::ServerError,
        ErrorClass::Authentication,
        ErrorClass::NotFound,
        ErrorClass::ContextWindow,
        ErrorClass::ContentPolicy,
        ErrorClass::BadRequest,
    ];

    /// The class of an answer with HTTP `status` and OpenAI error `code` (`error.code` of
    /// the body, as the gateway translated it); `None` for a success (1xx to 3xx). Status 0
    /// means there was no answer at all.
    ///
    /// A code naming the context window or a content policy decides whatever the status;
    /// callers pass a code only for a failed answer (status 0 or >= 400).
    pub fn of(status: u16, code: Option<&str>) -> Option<ErrorClass> {
        match code {
            Some("context_length_exceeded") => return Some(ErrorClass::ContextWindow),
            Some("content_filter" | "content_policy_violation" | "invalid_prompt") => {
                return Some(ErrorClass::ContentPolicy)
            }
            _ => {}
        }
        Some(match status {
            0 => ErrorClass::ServerError,
            100..=399 => return None,
            429 => ErrorClass::RateLimit,
            408 | 504 => ErrorClass::Timeout,
            401 | 403 => ErrorClass::Authentication,
            404 => ErrorClass::NotFound,
            400..=499 => ErrorClass::BadRequest,
            // 5xx, and statuses no server sends (1-99, 600 and more): not a valid answer.
            _ => ErrorClass::ServerError,
        })
    }

    /// The class's slot in per-class tables (below [`ErrorClass::COUNT`]).
    pub const fn index(self) -> usize {
        match self {
            ErrorClass::RateLimit => 0,
            ErrorClass::Timeout => 1,
            ErrorClass::ServerError => 2,
            ErrorClass::Authentication => 3,
            ErrorClass::NotFound => 4,
            ErrorClass::ContextWindow => 5,
            ErrorClass::ContentPolicy => 6,
            ErrorClass::BadRequest => 7,
        }
    }

    /// The name in stats, logs and the health report.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorClass::RateLimit => "rate_limit",
            ErrorClass::Timeout => "timeout",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Authentication => "authentication",
            ErrorClass::NotFound => "not_found",
            ErrorClass::ContextWindow => "context_window",
            ErrorClass::ContentPolicy => "content_policy",
            ErrorClass::BadRequest => "bad_request",
        }
    }

    /// The class a [`ErrorClass::name`] names.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.name() == name)
    }

    /// Whether the failure says something about the deployment rather than about the
    /// request: only these count toward a cooldown (in the filter and in the control
    /// plane) and mark a deployment unhealthy. A bad request, one over the context window
    /// and one refused for its content would fail on any deployment.
    pub const fn is_deployment_fault(self) -> bool {
        match self {
            ErrorClass::RateLimit
            | ErrorClass::Timeout
            | ErrorClass::ServerError
            | ErrorClass::Authentication
            | ErrorClass::NotFound => true,
            ErrorClass::ContextWindow | ErrorClass::ContentPolicy | ErrorClass::BadRequest => false,
        }
    }

    /// The `retry_policy` entry (`<class>Retries`) that gives this class's retries; `None`:
    /// none does (the class takes the router's default).
    pub const fn retry_policy(self) -> Option<PolicyClass> {
        match self {
            ErrorClass::RateLimit => Some(PolicyClass::RateLimit),
            ErrorClass::Timeout => Some(PolicyClass::Timeout),
            ErrorClass::ServerError => Some(PolicyClass::InternalServer),
            ErrorClass::Authentication => Some(PolicyClass::Authentication),
            // A model the deployment does not know: retried as a bad request is.
            ErrorClass::NotFound | ErrorClass::BadRequest => Some(PolicyClass::BadRequest),
            ErrorClass::ContentPolicy => Some(PolicyClass::ContentPolicyViolation),
            ErrorClass::ContextWindow => None,
        }
    }

    /// The `allowed_fails_policy` entry (`<class>AllowedFails`) that gives the failures of
    /// this class a deployment may have in a minute; `None`: none does (`allowed_fails`).
    /// A 404 has no entry of its own: LiteLLM's `NotFoundError` is no `BadRequestError`.
    /// Only classes that are [`ErrorClass::is_deployment_fault`] are ever counted.
    pub const fn allowed_fails_policy(self) -> Option<PolicyClass> {
        match self {
            ErrorClass::RateLimit => Some(PolicyClass::RateLimit),
            ErrorClass::Timeout => Some(PolicyClass::Timeout),
            ErrorClass::ServerError => Some(PolicyClass::InternalServer),
            ErrorClass::Authentication => Some(PolicyClass::Authentication),
            ErrorClass::BadRequest => Some(PolicyClass::BadRequest),
            ErrorClass::ContentPolicy => Some(PolicyClass::ContentPolicyViolation),
            ErrorClass::NotFound | ErrorClass::ContextWindow => None,
        }
    }
}

/// The error classes LiteLLM's `retry_policy` (`<name>Retries`) and `allowed_fails_policy`
/// (`<name>AllowedFails`) take a count for, `<name>` being [`PolicyClass::litellm_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyClass {
    /// `TimeoutError`.
    Timeout,
    /// `RateLimitError`.
    RateLimit,
    /// `InternalServerError`.
    InternalServer,
    /// `AuthenticationError`.
    Authentication,
    /// `BadRequestError`.
    BadRequest,
    /// `ContentPolicyViolationError`.
    ContentPolicyViolation,
}

impl PolicyClass {
    /// Every policy class.
    pub const ALL: [PolicyClass; 6] = [
        PolicyClass::Timeout,
        PolicyClass::RateLimit,
        PolicyClass::InternalServer,
        PolicyClass::Authentication,
        PolicyClass::BadRequest,
        PolicyClass::ContentPolicyViolation,
    ];

    /// LiteLLM's name of the class, as the policies' keys start.
    pub const fn litellm_name(self) -> &'static str {
        match self {
            PolicyClass::Timeout => "TimeoutError",
            PolicyClass::RateLimit => "RateLimitError",
            PolicyClass::InternalServer => "InternalServerError",
            PolicyClass::Authentication => "AuthenticationError",
            PolicyClass::BadRequest => "BadRequestError",
            PolicyClass::ContentPolicyViolation => "ContentPolicyViolationError",
        }
    }

    /// The class LiteLLM's `name` ("RateLimitError") names.
    pub fn from_litellm_name(name: &str) -> Option<PolicyClass> {
        PolicyClass::ALL
            .into_iter()
            .find(|class| class.litellm_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_status_then_code() {
        let cases: [(u16, Option<&str>, Option<ErrorClass>); 30] = [
            (200, None, None),
            (101, None, None),
            (204, None, None),
            (304, None, None),
            (399, None, None),
            (0, None, Some(ErrorClass::ServerError)),
            (1, None, Some(ErrorClass::ServerError)),
            (99, None, Some(ErrorClass::ServerError)),
            (400, None, Some(ErrorClass::BadRequest)),
            (401, None, Some(ErrorClass::Authentication)),
            (403, None, Some(ErrorClass::Authentication)),
            (404, None, Some(ErrorClass::NotFound)),
            (408, None, Some(ErrorClass::Timeout)),
            (409, None, Some(ErrorClass::BadRequest)),
            (413, None, Some(ErrorClass::BadRequest)),
            (422, None, Some(ErrorClass::BadRequest)),
            (429, None, Some(ErrorClass::RateLimit)),
            (499, None, Some(ErrorClass::BadRequest)),
            (500, None, Some(ErrorClass::ServerError)),
            (502, None, Some(ErrorClass::ServerError)),
            (503, None, Some(ErrorClass::ServerError)),
            (504, None, Some(ErrorClass::Timeout)),
            (529, None, Some(ErrorClass::ServerError)),
            (600, None, Some(ErrorClass::ServerError)),
            (u16::MAX, None, Some(ErrorClass::ServerError)),
            // Codes that name no class leave it to the status.
            (
                429,
                Some("rate_limit_exceeded"),
                Some(ErrorClass::RateLimit),
            ),
            (404, Some("model_not_found"), Some(ErrorClass::NotFound)),
            (
                401,
                Some("invalid_api_key"),
                Some(ErrorClass::Authentication),
            ),
            (529, Some("overloaded"), Some(ErrorClass::ServerError)),
            (504, Some("timeout"), Some(ErrorClass::Timeout)),
        ];
        for (status, code, class) in cases {
            assert_eq!(ErrorClass::of(status, code), class, "{status} {code:?}");
        }
        for status in [0, 400, 413, 422, 500] {
            assert_eq!(
                ErrorClass::of(status, Some("context_length_exceeded")),
                Some(ErrorClass::ContextWindow),
                "{status}"
            );
            for code in [
                "content_filter",
                "content_policy_violation",
                "invalid_prompt",
            ] {
                assert_eq!(
                    ErrorClass::of(status, Some(code)),
                    Some(ErrorClass::ContentPolicy),
                    "{status} {code}"
                );
            }
        }
    }

    #[test]
    fn indexes_fill_the_table_and_names_round_trip() {
        for (at, class) in ErrorClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), at, "{class:?}");
            assert_eq!(ErrorClass::from_name(class.name()), Some(class));
        }
        let names = ErrorClass::ALL.map(ErrorClass::name);
        assert_eq!(
            names,
            [
                "rate_limit",
                "timeout",
                "server_error",
                "authentication",
                "not_found",
                "context_window",
                "content_policy",
                "bad_request",
            ]
        );
        assert_eq!(ErrorClass::from_name("RateLimitError"), None);
    }

    #[test]
    fn only_the_deployments_faults_count() {
        let faults: Vec<_> = ErrorClass::ALL
            .into_iter()
            .filter(|class| class.is_deployment_fault())
            .collect();
        assert_eq!(
            faults,
            [
                ErrorClass::RateLimit,
                ErrorClass::Timeout,
                ErrorClass::ServerError,
                ErrorClass::Authentication,
                ErrorClass::NotFound,
            ]
        );
    }

    #[test]
    fn policies_name_litellms_classes() {
        for class in PolicyClass::ALL {
            assert_eq!(
                PolicyClass::from_litellm_name(class.litellm_name()),
                Some(class)
            );
        }
        assert_eq!(
            PolicyClass::from_litellm_name("ContentPolicyViolationError"),
            Some(PolicyClass::ContentPolicyViolation)
        );
        assert_eq!(PolicyClass::from_litellm_name("NotFoundError"), None);
        assert_eq!(
            PolicyClass::from_litellm_name("RateLimitErrorRetries"),
            None
        );
        // 404 is retried as a bad request, but counts against allowed_fails.
        assert_eq!(
            ErrorClass::NotFound.retry_policy(),
            Some(PolicyClass::BadRequest)
        );
        assert_eq!(ErrorClass::NotFound.allowed_fails_policy(), None);
        assert_eq!(ErrorClass::ContextWindow.retry_policy(), None);
        assert_eq!(ErrorClass::ContextWindow.allowed_fails_policy(), None);
        for class in [
            ErrorClass::RateLimit,
            ErrorClass::Timeout,
            ErrorClass::ServerError,
            ErrorClass::Authentication,
            ErrorClass::BadRequest,
            ErrorClass::ContentPolicy,
        ] {
            assert!(class.retry_policy().is_some(), "{class:?}");
            assert_eq!(
                class.retry_policy(),
                class.allowed_fails_policy(),
                "{class:?}"
            );
        }
        assert_eq!(
            ErrorClass::ServerError.retry_policy(),
            Some(PolicyClass::InternalServer)
        );
    }
}
