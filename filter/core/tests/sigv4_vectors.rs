//! AWS's Signature Version 4 test suite, and two Bedrock-shaped cases signed by botocore:
//! `tests/data/aws/sigv4/<case>/` (provenance in `tests/data/aws/README.md`).
//!
//! Files of a case: `<case>.req` the request (request line, `Name:value` headers with the
//! obsolete line folding of `get-header-value-multiline`, a blank line, the body), `.creq` the
//! canonical request, `.sts` the string to sign, `.authz` the `Authorization` header. Every
//! suite case signs with AKIDEXAMPLE's credentials for `us-east-1`, service `service`, at
//! 2015-08-30T12:36:00Z; a request's own `X-Amz-Date` is that time (the signer writes the
//! header, so the harness checks it and leaves it out), and its `X-Amz-Security-Token` is the
//! session token of the credentials. Each case asserts the three strings exactly, and the
//! headers the signer adds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use tollgate_core::aws::sigv4::{
    sign, sign_with_steps, Credentials, PathEncoding, SessionTokenPlacement, SignableRequest,
    SigningParams, SigningSettings,
};

const ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z.
const SUITE_TIME: u64 = 1_440_938_160;
const SUITE_AMZ_DATE: &str = "20150830T123600Z";

/// The token of `get-vanilla-with-session-token` (its canonical request shows it).
const VANILLA_SESSION_TOKEN: &str =
    "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
/// The token of `post-sts-header-before` and `post-sts-header-after`.
const STS_SESSION_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

/// The token of the Bedrock cases (`bedrock_vectors.py`).
const BEDROCK_SESSION_TOKEN: &str =
    "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexample+token/value==";
/// 2023-11-14T22:13:20Z, the time of the Bedrock cases.
const BEDROCK_TIME: u64 = 1_700_000_000;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/aws/sigv4")
        .join(case)
}

fn read(case: &str, suffix: &str) -> String {
    let path = case_dir(case).join(format!("{case}{suffix}"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A request of the suite's `.req` files.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    host: String,
    /// Every header but `Host`, `X-Amz-Date` and `X-Amz-Security-Token`.
    headers: Vec<(String, String)>,
    amz_date: Option<String>,
    security_token: Option<String>,
    body: Vec<u8>,
}

fn parse_request(text: &str) -> Request {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    // The target may hold spaces (`get-space`): the method ends at the first, the version
    // starts at the last.
    let (method, rest) = request_line.split_once(' ').unwrap();
    let (target, version) = rest.rsplit_once(' ').unwrap();
    assert_eq!(version, "HTTP/1.1");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding (RFC 9112 section 5.2): the line break is a space.
            let (_, value) = headers.last_mut().unwrap();
            value.push(' ');
            value.push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let mut take = |wanted: &str| {
        let position = headers
            .iter()
            .position(|(name, _)| name.eq_ignore_ascii_case(wanted))?;
        Some(headers.remove(position).1)
    };
    let host = take("host").unwrap();
    let amz_date = take("x-amz-date");
    let security_token = take("x-amz-security-token");
    Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        host,
        headers,
        amz_date,
        security_token,
        body: body.as_bytes().to_vec(),
    }
}

/// How a case is signed.
struct Signing {
    region: &'static str,
    service: &'static str,
    unix_seconds: u64,
    token: Option<&'static str>,
    settings: SigningSettings,
}

/// The suite's context, with `token` and `settings` as the case needs.
fn suite(token: Option<&'static str>, settings: SigningSettings) -> Signing {
    Signing {
        region: "us-east-1",
        service: "service",
        unix_seconds: SUITE_TIME,
        token,
        settings,
    }
}

fn check(case: &str, signing: Signing) {
    let request = parse_request(&read(case, ".req"));
    let credentials = Credentials {
        access_key_id: ACCESS_KEY_ID.to_string(),
        secret_access_key: SECRET_ACCESS_KEY.to_string(),
        session_token: signing.token.map(str::to_string),
    };
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let signable = SignableRequest {
        method: &request.method,
        host: &request.host,
        path: &request.path,
        query: &request.query,
        headers: &headers,
        body: &request.body,
    };
    let params = SigningParams {
        credentials: &credentials,
        region: signing.region,
        service: signing.service,
        unix_seconds: signing.unix_seconds,
        settings: signing.settings,
    };
    let steps = sign_with_steps(&signable, &params).unwrap();
    assert_eq!(
        steps.canonical_request,
        read(case, ".creq"),
        "canonical request"
    );
    assert_eq!(steps.string_to_sign, read(case, ".sts"), "string to sign");
    assert_eq!(
        steps.headers.authorization,
        read(case, ".authz"),
        "authorization"
    );
    if let Some(amz_date) = &request.amz_date {
        assert_eq!(&steps.headers.amz_date, amz_date);
    }
    if let Some(token) = &request.security_token {
        assert_eq!(signing.token, Some(token.as_str()));
    }
    assert_eq!(steps.headers.security_token.as_deref(), signing.token);
    assert_eq!(steps.headers.content_sha256, None);
    // `sign` returns the same headers.
    assert_eq!(sign(&signable, &params).unwrap(), steps.headers);
}

fn unnormalized() -> SigningSettings {
    SigningSettings {
        normalize_path: false,
        ..SigningSettings::default()
    }
}

#[test]
fn suite_time_is_the_amz_date_of_the_suite() {
    assert_eq!(
        tollgate_core::aws::sigv4::amz_date(SUITE_TIME).unwrap(),
        SUITE_AMZ_DATE
    );
}

#[test]
fn get_header_key_duplicate() {
    check("get-header-key-duplicate", suite(None, Default::default()));
}

#[test]
fn get_header_value_multiline() {
    check(
        "get-header-value-multiline",
        suite(None, Default::default()),
    );
}

#[test]
fn get_header_value_order() {
    check("get-header-value-order", suite(None, Default::default()));
}

#[test]
fn get_header_value_trim() {
    check("get-header-value-trim", suite(None, Default::default()));
}

#[test]
fn get_unreserved() {
    check("get-unreserved", suite(None, Default::default()));
}

#[test]
fn get_utf8() {
    check("get-utf8", suite(None, Default::default()));
}

#[test]
fn get_vanilla() {
    check("get-vanilla", suite(None, Default::default()));
}

#[test]
fn get_vanilla_empty_query_key() {
    check(
        "get-vanilla-empty-query-key",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_query() {
    check("get-vanilla-query", suite(None, Default::default()));
}

#[test]
fn get_vanilla_query_order_encoded() {
    check(
        "get-vanilla-query-order-encoded",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_query_order_key() {
    check(
        "get-vanilla-query-order-key",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_query_order_key_case() {
    check(
        "get-vanilla-query-order-key-case",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_query_order_value() {
    check(
        "get-vanilla-query-order-value",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_query_unreserved() {
    check(
        "get-vanilla-query-unreserved",
        suite(None, Default::default()),
    );
}

#[test]
fn get_vanilla_utf8_query() {
    check("get-vanilla-utf8-query", suite(None, Default::default()));
}

#[test]
fn get_vanilla_with_session_token() {
    check(
        "get-vanilla-with-session-token",
        suite(Some(VANILLA_SESSION_TOKEN), Default::default()),
    );
}

#[test]
fn normalize_path_get_relative() {
    check("get-relative", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_relative_relative() {
    check("get-relative-relative", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_slash() {
    check("get-slash", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_slash_dot_slash() {
    check("get-slash-dot-slash", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_slash_pointless_dot() {
    check("get-slash-pointless-dot", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_slashes() {
    check("get-slashes", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_space() {
    check("get-space", suite(None, Default::default()));
}

#[test]
fn normalize_path_get_special_character() {
    check("get-special-character", suite(None, Default::default()));
}

#[test]
fn get_relative_unnormalized() {
    check("get-relative-unnormalized", suite(None, unnormalized()));
}

#[test]
fn get_relative_relative_unnormalized() {
    check(
        "get-relative-relative-unnormalized",
        suite(None, unnormalized()),
    );
}

#[test]
fn get_slash_unnormalized() {
    check("get-slash-unnormalized", suite(None, unnormalized()));
}

#[test]
fn get_slash_dot_slash_unnormalized() {
    check(
        "get-slash-dot-slash-unnormalized",
        suite(None, unnormalized()),
    );
}

#[test]
fn get_slash_pointless_dot_unnormalized() {
    check(
        "get-slash-pointless-dot-unnormalized",
        suite(None, unnormalized()),
    );
}

#[test]
fn get_slashes_unnormalized() {
    check("get-slashes-unnormalized", suite(None, unnormalized()));
}

#[test]
fn get_space_unnormalized() {
    check("get-space-unnormalized", suite(None, unnormalized()));
}

#[test]
fn post_header_key_case() {
    check("post-header-key-case", suite(None, Default::default()));
}

#[test]
fn post_header_key_sort() {
    check("post-header-key-sort", suite(None, Default::default()));
}

#[test]
fn post_header_value_case() {
    check("post-header-value-case", suite(None, Default::default()));
}

#[test]
fn post_sts_token_post_sts_header_before() {
    check(
        "post-sts-header-before",
        suite(Some(STS_SESSION_TOKEN), Default::default()),
    );
}

#[test]
fn post_sts_token_post_sts_header_after() {
    // The token is sent but left out of the signature: the signature is post-vanilla's.
    let settings = SigningSettings {
        session_token: SessionTokenPlacement::AddedAfterSigning,
        ..SigningSettings::default()
    };
    check(
        "post-sts-header-after",
        suite(Some(STS_SESSION_TOKEN), settings),
    );
    assert_eq!(
        read("post-sts-header-after", ".authz"),
        read("post-vanilla", ".authz")
    );
}

#[test]
fn post_vanilla() {
    check("post-vanilla", suite(None, Default::default()));
}

#[test]
fn post_vanilla_empty_query_value() {
    check(
        "post-vanilla-empty-query-value",
        suite(None, Default::default()),
    );
}

#[test]
fn post_vanilla_query() {
    check("post-vanilla-query", suite(None, Default::default()));
}

#[test]
fn post_x_www_form_urlencoded() {
    check(
        "post-x-www-form-urlencoded",
        suite(None, Default::default()),
    );
}

#[test]
fn post_x_www_form_urlencoded_parameters() {
    check(
        "post-x-www-form-urlencoded-parameters",
        suite(None, Default::default()),
    );
}

fn bedrock(token: Option<&'static str>) -> Signing {
    Signing {
        region: "us-east-1",
        service: "bedrock",
        unix_seconds: BEDROCK_TIME,
        token,
        settings: SigningSettings::default(),
    }
}

/// POST /model/<id with a colon>/converse with temporary credentials: the colon is `%3A` on
/// the request line and `%253A` in the canonical URI, the token is a signed header.
#[test]
fn bedrock_converse_session_token() {
    check(
        "bedrock-converse-session-token",
        bedrock(Some(BEDROCK_SESSION_TOKEN)),
    );
    assert!(read("bedrock-converse-session-token", ".creq")
        .contains("\n/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse\n"));
}

/// ConverseStream to an inference profile ARN: its colons and slash are encoded twice too.
#[test]
fn bedrock_converse_stream_inference_profile_arn() {
    check(
        "bedrock-converse-stream-inference-profile-arn",
        bedrock(None),
    );
}

/// Signing the Bedrock path once encoded (the bug of several gateways) gives another
/// signature than botocore's: the test above cannot pass by accident.
#[test]
fn bedrock_path_encoded_once_does_not_match() {
    let request = parse_request(&read("bedrock-converse-session-token", ".req"));
    let credentials = Credentials {
        access_key_id: ACCESS_KEY_ID.into(),
        secret_access_key: SECRET_ACCESS_KEY.into(),
        session_token: Some(BEDROCK_SESSION_TOKEN.into()),
    };
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let signed = sign(
        &SignableRequest {
            method: &request.method,
            host: &request.host,
            path: &request.path,
            query: &request.query,
            headers: &headers,
            body: &request.body,
        },
        &SigningParams {
            credentials: &credentials,
            region: "us-east-1",
            service: "bedrock",
            unix_seconds: BEDROCK_TIME,
            settings: SigningSettings {
                path_encoding: PathEncoding::AsSent,
                ..SigningSettings::default()
            },
        },
    )
    .unwrap();
    assert_ne!(
        signed.authorization,
        read("bedrock-converse-session-token", ".authz")
    );
}
