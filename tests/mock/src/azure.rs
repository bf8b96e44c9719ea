//! Azure OpenAI's chat completions: `POST /openai/deployments/<deployment>/chat/completions
//! ?api-version=<version>` with the key in an `api-key` header. The body and the answer are
//! OpenAI's (the OpenAI handler answers once Azure's checks pass). Azure's own errors are
//! `{"error":{"code":"<status or name>","message":...}}`, without OpenAI's `type`: a request
//! without `api-version` gets 404 "Resource not found", a missing or wrong key 401.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::body::MockBody;
use crate::common::response;
use crate::{openai, State};

/// An error in Azure's shape.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = json!({"error": {"code": status.as_u16().to_string(), "message": message}});
    response(
        status,
        "application/json",
        MockBody::full(Bytes::from(body.to_string())),
    )
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let has_version = parts.uri.query().is_some_and(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(name, value)| name == "api-version" && !value.is_empty())
    });
    if !has_version {
        return error(StatusCode::NOT_FOUND, "Resource not found");
    }
    if let Some(expected) = state.config.azure_api_key.as_deref() {
        let given = parts
            .headers
            .get("api-key")
            .and_then(|value| value.to_str().ok());
        if given != Some(expected) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            );
        }
    }
    if contains(body, b"mock:content_filter") {
        return content_filter();
    }
    openai::answer(state, parts, body).await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// What Azure answers a prompt its content filter blocks: 400, `code: "content_filter"` and
/// the verdict per category in `innererror` (`mock:content_filter` in the request asks for
/// it, and a `content_filter` fault).
pub(crate) fn content_filter() -> Response<MockBody> {
    let body = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "hate": {"filtered": true, "severity": "high"},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": false, "severity": "safe"}}}}});
    response(
        StatusCode::BAD_REQUEST,
        "application/json",
        MockBody::full(Bytes::from(body.to_string())),
    )
}
