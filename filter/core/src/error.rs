//! The one place where every error the gateway produces becomes an HTTP status and an
//! OpenAI-shaped JSON body (`{"error":{"message","type","param","code"}}`).

use serde::Serialize;

/// An error the gateway answers itself, before or instead of a provider's answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// The body is not valid JSON.
    #[error("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.) Details: {0}")]
    InvalidJson(String),
    /// The request is well-formed JSON but a field is missing or wrong.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for a person.
        message: String,
        /// The offending field, when there is one.
        param: Option<String>,
    },
    /// A request header the gateway reads (a key, the path) is not valid UTF-8.
    #[error("The {name} header is not valid UTF-8.")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
    },
    /// The requested model is not in the snapshot.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// No credentials were presented where they are required.
    #[error("Missing API key. Send it as `Authorization: Bearer <key>`.")]
    MissingApiKey,
    /// The presented key is unknown.
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    /// The virtual key was blocked by an operator.
    #[error("This API key has been blocked.")]
    KeyBlocked,
    /// The virtual key is past its expiry time.
    #[error("This API key has expired.")]
    KeyExpired,
    /// The virtual key may not use the requested model.
    #[error("This API key is not allowed to access model `{0}`.")]
    ModelNotAllowed(String),
    /// The body is over the configured limit.
    #[error("Request body is {size} bytes, over the limit of {limit} bytes.")]
    BodyTooLarge {
        /// Size seen (or announced by content-length).
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The endpoint exists but not with this method.
    #[error("Method {method} is not allowed on {path}.")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The filter has no snapshot from the control plane yet.
    #[error("The gateway is starting and has no configuration yet; retry shortly.")]
    NotReady,
    /// The provider answered something the gateway could not translate.
    #[error("The upstream provider returned a response the gateway could not read: {0}")]
    BadUpstreamResponse(String),
    /// The provider answered that it failed while generating (Cohere's `finish_reason`
    /// `ERROR`): the answer it started is not one.
    #[error("The upstream provider failed to generate the response: {0}")]
    UpstreamGenerationFailed(String),
    /// The provider's response is over the buffering limit.
    #[error("The upstream response is over the limit of {0} bytes.")]
    UpstreamResponseTooLarge(u64),
    /// A budget of the request's key, user, team, end user or of the whole gateway is
    /// spent (LiteLLM answers 400 `budget_exceeded` too).
    #[error("Budget has been exceeded! {scope} spent {spend} USD of its max budget of {max_budget} USD in this budget window.")]
    BudgetExceeded {
        /// Whose budget, for a person: "key my-alias", "team t1", "the gateway", ...
        scope: String,
        /// Spend of the window, US dollars.
        spend: f64,
        /// The budget, US dollars.
        max_budget: f64,
    },
    /// A rate limit of the request's key, key model, user, team, deployment or of the whole
    /// gateway has nothing left for now (429, with `Retry-After`).
    #[error("Rate limit reached for {scope} on {what}: limit {limit}, this request needs {requested}. Retry in {retry_after_secs}s.")]
    RateLimited {
        /// Whose limit, for a person: "key my-alias", "team t1", "the gateway", ...
        scope: String,
        /// Which limit: "requests per minute (rpm)", ...
        what: &'static str,
        /// The limit.
        limit: u64,
        /// What the request needed (1 request, or its estimated tokens).
        requested: u64,
        /// Seconds until it may have room (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The request could not be signed for its provider: the deployment's settings hold
    /// something the signer refuses (an AWS region or access key id of the wrong shape). The
    /// text names the problem, never a credential.
    #[error("The gateway could not sign the request for its provider: {0}")]
    UpstreamSigning(String),
    /// The deployment's provider takes a short-lived access token the control plane mints
    /// (Vertex AI's), and the filter holds none that is valid: the control plane has not
    /// minted one yet, or could not refresh it. Retrying later can succeed.
    #[error("The gateway has no valid access token for this model's provider: {0}. Retry shortly; if this persists, the control plane's log says why.")]
    UpstreamCredentialsUnavailable(crate::snapshot::TokenUnavailable),
    /// An endpoint only the master key may call (`/health`), called with another key.
    #[error("Only the master key may call {0}.")]
    AdminOnly(&'static str),
    /// A bug in the gateway stopped this request (the native module survives it; the Wasm
    /// VM would not).
    #[error("The gateway failed on this request; the failure is in its log.")]
    Internal,
}

impl From<crate::sse::SseError> for GatewayError {
    fn from(error: crate::sse::SseError) -> Self {
        GatewayError::BadUpstreamResponse(error.to_string())
    }
}

impl GatewayError {
    /// Shorthand for [`GatewayError::InvalidRequest`] naming a field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: Some(param.to_string()),
        }
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidRequest { .. }
            | GatewayError::InvalidHeader { .. }
            | GatewayError::BudgetExceeded { .. } => 400,
            GatewayError::MissingApiKey
            | GatewayError::InvalidApiKey
            | GatewayError::KeyBlocked
            | GatewayError::KeyExpired
            | GatewayError::ModelNotAllowed(_) => 401,
            GatewayError::AdminOnly(_) => 403,
            GatewayError::ModelNotFound(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::BadUpstreamResponse(_)
            | GatewayError::UpstreamResponseTooLarge(_)
            | GatewayError::UpstreamGenerationFailed(_) => 502,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::NotReady | GatewayError::UpstreamCredentialsUnavailable(_) => 503,
            GatewayError::UpstreamSigning(_) | GatewayError::Internal => 500,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::MissingApiKey
            | GatewayError::InvalidApiKey
            | GatewayError::KeyBlocked
            | GatewayError::KeyExpired
            | GatewayError::ModelNotAllowed(_) => "authentication_error",
            GatewayError::NotReady | GatewayError::UpstreamCredentialsUnavailable(_) => {
                "service_unavailable"
            }
            GatewayError::BudgetExceeded { .. } => "budget_exceeded",
            GatewayError::RateLimited { .. } => "rate_limit_error",
            GatewayError::AdminOnly(_) => "permission_error",
            GatewayError::BadUpstreamResponse(_)
            | GatewayError::UpstreamResponseTooLarge(_)
            | GatewayError::UpstreamGenerationFailed(_)
            | GatewayError::UpstreamSigning(_)
            | GatewayError::Internal => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidJson(_) => Some("invalid_json"),
            GatewayError::InvalidRequest { .. } => None,
            GatewayError::InvalidHeader { .. } => Some("invalid_header"),
            GatewayError::ModelNotFound(_) => Some("model_not_found"),
            GatewayError::MissingApiKey => Some("missing_api_key"),
            GatewayError::InvalidApiKey => Some("invalid_api_key"),
            GatewayError::KeyBlocked => Some("key_blocked"),
            GatewayError::KeyExpired => Some("key_expired"),
            GatewayError::ModelNotAllowed(_) => Some("model_not_allowed"),
            GatewayError::BodyTooLarge { .. } => Some("request_too_large"),
            GatewayError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            GatewayError::NotReady => Some("not_ready"),
            GatewayError::BadUpstreamResponse(_) => Some("bad_upstream_response"),
            GatewayError::UpstreamResponseTooLarge(_) => Some("upstream_response_too_large"),
            GatewayError::UpstreamGenerationFailed(_) => Some("upstream_generation_failed"),
            GatewayError::UpstreamSigning(_) => Some("upstream_signing_failed"),
            GatewayError::UpstreamCredentialsUnavailable(_) => {
                Some("upstream_credentials_unavailable")
            }
            GatewayError::Internal => Some("internal_error"),
            GatewayError::AdminOnly(_) => Some("admin_only"),
            GatewayError::BudgetExceeded { .. } => Some("budget_exceeded"),
            GatewayError::RateLimited { .. } => Some("rate_limit_exceeded"),
        }
    }

    /// OpenAI's `error.param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_) | GatewayError::ModelNotAllowed(_) => Some("model"),
            GatewayError::InvalidHeader { name } => Some(name),
            _ => None,
        }
    }

    /// The JSON body the client gets.
    pub fn to_json(&self) -> Vec<u8> {
        error_body(
            &self.to_string(),
            self.error_type(),
            self.param(),
            self.code(),
        )
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// Serialises an OpenAI-shaped error body. Provider error translation uses it too, so every
/// error a client sees has one shape.
pub fn error_body(
    message: &str,
    error_type: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Vec<u8> {
    let envelope = ErrorEnvelope {
        error: ErrorObject {
            message,
            error_type,
            param,
            code,
        },
    };
    // Serialising plain strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#
            .to_vec()
    })
}

/// OpenAI's `error.type` for a provider's HTTP status, for providers whose own error type
/// does not map one to one.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 | 529 => "service_unavailable",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_openai_shaped() {
        let errors = [
            GatewayError::InvalidJson("eof".into()),
            GatewayError::invalid("messages", "messages must be an array"),
            GatewayError::ModelNotFound("nope".into()),
            GatewayError::MissingApiKey,
            GatewayError::InvalidApiKey,
            GatewayError::BodyTooLarge { size: 10, limit: 5 },
            GatewayError::NotReady,
            GatewayError::BadUpstreamResponse("x".into()),
            GatewayError::Internal,
        ];
        for error in errors {
            let body: serde_json::Value = serde_json::from_slice(&error.to_json()).unwrap();
            let object = body["error"].as_object().unwrap();
            assert_eq!(object.len(), 4, "{body}");
            assert!(object["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(object["type"].is_string());
            assert!(object.contains_key("param") && object.contains_key("code"));
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::InvalidJson(String::new()).status(), 400);
        assert_eq!(GatewayError::InvalidApiKey.status(), 401);
        assert_eq!(GatewayError::ModelNotFound("m".into()).status(), 404);
        assert_eq!(
            GatewayError::BodyTooLarge { size: 2, limit: 1 }.status(),
            413
        );
        assert_eq!(GatewayError::Internal.status(), 500);
        let body: serde_json::Value =
            serde_json::from_slice(&GatewayError::ModelNotFound("m".into()).to_json()).unwrap();
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "model_not_found");
    }
}
