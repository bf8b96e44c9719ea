//! Google's Gemini API as Google AI Studio serves it: `POST
//! /v1beta/models/<model>:generateContent` and `:streamGenerateContent` (server-sent events
//! with `alt=sse`, one JSON array without), the key in `x-goog-api-key` (or `?key=`).
//!
//! The body is protobuf JSON, checked the way Gemini checks it: unknown fields are refused
//! ("Invalid JSON payload received. Unknown name ..."), both the JSON names (`systemInstruction`)
//! and the proto names (`system_instruction`) are taken, values must have their field's type,
//! `contents` must be non-empty with roles `user` / `model` and parts that hold exactly one
//! kind of data, function call turns follow a user turn and are answered by as many function
//! responses, a function call of the current turn carries the thought signature the mock gave
//! it (as Gemini 3 requires), and function declarations' `parameters` take only the OpenAPI
//! subset Gemini's `Schema` has (`parametersJsonSchema` takes any JSON Schema). `id` on
//! `functionCall` / `functionResponse` is refused as an unknown name, as the API answers.
//! Errors are Google's `{"error":{"code","message","status","details"}}`.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::body::MockBody;
use crate::common::{
    count_words, find_stop, numbered_chunks, raw_error, response, split_words_keep_spaces,
    Directives,
};
use crate::State;

/// The thought signature the mock puts on its function calls and wants back.
pub(crate) const THOUGHT_SIGNATURE: &str = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==";

/// A Google error body: `{"error":{"code","message","status"[,"details"]}}`.
pub(crate) fn error(
    status: StatusCode,
    message: &str,
    details: Option<Value>,
) -> Response<MockBody> {
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "status": google_status(status),
    });
    if let (Some(details), Some(object)) = (details, error.as_object_mut()) {
        object.insert("details".into(), details);
    }
    let body = serde_json::to_vec_pretty(&json!({ "error": error })).unwrap_or_default();
    response(
        status,
        "application/json; charset=UTF-8",
        MockBody::full(Bytes::from(body)),
    )
}

fn invalid(message: &str) -> Response<MockBody> {
    error(StatusCode::BAD_REQUEST, message, None)
}

/// The `google.rpc.Code` name Google sends with an HTTP status.
pub(crate) fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// The input token limit Gemini's chat models report when a prompt is over it.
pub(crate) const CHAT_INPUT_TOKEN_LIMIT: u64 = 1_048_576;
/// The input token limit of Gemini's embedding models.
pub(crate) const EMBEDDING_INPUT_TOKEN_LIMIT: u64 = 2048;

/// Gemini's answer to a prompt over the model's input token limit.
pub(crate) fn context_length_error(limit: u64) -> Response<MockBody> {
    invalid(&format!(
        "The input token count ({}) exceeds the maximum number of tokens allowed ({limit}).",
        limit + limit / 8
    ))
}

/// What Gemini answers a prompt its safety filters block: 200, no candidates, and
/// `promptFeedback` with `blockReason: SAFETY` and the ratings (Gemini's content-policy
/// refusal; a stream sends it as its one event).
pub(crate) fn prompt_blocked(
    state: &State,
    parts: &Parts,
    body: &Bytes,
    model: &str,
    stream: bool,
) -> Response<MockBody> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut prompt_tokens = request
        .get("systemInstruction")
        .or_else(|| request.get("system_instruction"))
        .map_or(0, |system| count_words(&content_text(system).0));
    for content in request
        .get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        prompt_tokens += count_words(&content_text(content).0);
    }
    let prompt_tokens = prompt_tokens.max(1);
    let usage = UsageMetadata::new(prompt_tokens, 0, 0);
    let blocked = json!({
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "HIGH"},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"}
            ]
        },
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": format!("mock-resp-{}", state.next_id()),
    });
    if stream && query_param(parts, "alt") == Some("sse") {
        let mut frame = b"data: ".to_vec();
        frame.extend_from_slice(&serde_json::to_vec(&blocked).unwrap_or_default());
        frame.extend_from_slice(b"\r\n\r\n");
        let mut resp = response(
            StatusCode::OK,
            "text/event-stream",
            MockBody::paced(vec![Bytes::from(frame)], std::time::Duration::ZERO),
        );
        resp.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        return resp;
    }
    let answer = if stream {
        Value::Array(vec![blocked])
    } else {
        blocked
    };
    response(
        StatusCode::OK,
        "application/json; charset=UTF-8",
        MockBody::full(Bytes::from(
            serde_json::to_vec_pretty(&answer).unwrap_or_default(),
        )),
    )
}

/// The error Gemini would send for `status` (used by `mock:status=NNN`).
pub(crate) fn status_error(status: StatusCode) -> Response<MockBody> {
    let (message, details) = match status.as_u16() {
        400 => ("Request contains an invalid argument. (mock:status=400)", None),
        403 => ("The caller does not have permission", None),
        404 => ("models/x is not found for API version v1beta, or is not supported for generateContent.", None),
        429 => (
            "You exceeded your current quota, please check your plan and billing details. (mock:status=429)",
            Some(json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}])),
        ),
        503 => ("The model is overloaded. Please try again later.", None),
        504 => ("Deadline expired before operation could complete.", None),
        s if s >= 500 => ("An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", None),
        _ => ("Request failed (mock:status).", None),
    };
    error(status, message, details)
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// `lowerCamel` as the proto's `snake_case` name.
fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field by its JSON name or its proto name.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(&snake(camel)))
        .filter(|value| !value.is_null())
}

/// "at 'path'" as Google words it (nothing at the top level).
fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at '{path}'")
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        snake(name)
    } else {
        format!("{path}.{}", snake(name))
    }
}

/// Refuses fields the message does not have.
fn known(obj: &Map<String, Value>, names: &[&str], path: &str) -> Result<(), String> {
    for key in obj.keys() {
        if !names.iter().any(|name| key == name || *key == snake(name)) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{key}\"{}: Cannot find field.",
                at(path)
            ));
        }
    }
    Ok(())
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| {
        format!("Invalid value at '{path}' (type.googleapis.com/google.protobuf.Struct), {value}")
    })
}

fn message<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| {
        format!(
            "Invalid JSON payload received. Expected an object{}: {value}.",
            at(path)
        )
    })
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], String> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| {
        format!(
            "Invalid JSON payload received. Expected a list{}, got {value}.",
            at(path)
        )
    })
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("Invalid value at '{path}' (TYPE_STRING), {value}"))
}

fn number(value: &Value, path: &str) -> Result<f64, String> {
    value
        .as_f64()
        .ok_or_else(|| format!("Invalid value at '{path}' (TYPE_FLOAT), {value}"))
}

fn integer(value: &Value, path: &str) -> Result<i64, String> {
    value
        .as_i64()
        .filter(|n| i32::try_from(*n).is_ok())
        .ok_or_else(|| format!("Invalid value at '{path}' (TYPE_INT32), {value}"))
}

fn boolean(value: &Value, path: &str) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| format!("Invalid value at '{path}' (TYPE_BOOL), {value}"))
}

/// Protobuf `bytes`: base64, standard or URL-safe alphabet.
fn bytes(value: &Value, path: &str) -> Result<(), String> {
    let text = string(value, path)?;
    let valid = text
        .trim_end_matches('=')
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
        && text.trim_end_matches('=').len() % 4 != 1;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{text}\""
        ))
    }
}

/// `"* GenerateContentRequest.<path>: <problem>\n"`, Gemini's request-check wording.
fn check(path: &str, problem: &str) -> String {
    format!("* GenerateContentRequest.{path}: {problem}\n")
}

/// The kinds of data a part may hold (exactly one of them).
const PART_DATA: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];

/// What the mock needs to know about one validated content.
#[derive(Default)]
struct ContentFacts {
    role: String,
    function_calls: Vec<(String, bool)>,
    function_responses: usize,
    /// Parts that are neither function calls nor function responses.
    other_parts: usize,
    /// Text parts.
    text_parts: usize,
}

fn validate_part(part: &Value, path: &str, facts: &mut ContentFacts) -> Result<(), String> {
    let obj = message(part, path)?;
    known(
        obj,
        &[
            "text",
            "inlineData",
            "fileData",
            "functionCall",
            "functionResponse",
            "executableCode",
            "codeExecutionResult",
            "thought",
            "thoughtSignature",
            "videoMetadata",
            "mediaResolution",
        ],
        path,
    )?;
    let data: Vec<&str> = PART_DATA
        .iter()
        .copied()
        .filter(|name| field(obj, name).is_some())
        .collect();
    match data.as_slice() {
        [] => {
            return Err(check(
                &format!("{path}.data"),
                "required oneof field 'data' must have one initialized field",
            ))
        }
        [_] => {}
        [_, second, ..] => {
            return Err(format!(
                "Invalid value at '{path}' (oneof), oneof field 'data' is already set. Cannot set '{second}'"
            ))
        }
    }
    if let Some(value) = field(obj, "thought") {
        boolean(value, &join(path, "thought"))?;
    }
    let signed = match field(obj, "thoughtSignature") {
        Some(value) => {
            bytes(value, &join(path, "thoughtSignature"))?;
            value.as_str() == Some(THOUGHT_SIGNATURE)
        }
        None => false,
    };
    if let Some(value) = field(obj, "text") {
        string(value, &join(path, "text"))?;
        facts.other_parts += 1;
        facts.text_parts += 1;
    }
    if let Some(value) = field(obj, "inlineData") {
        let blob_path = join(path, "inlineData");
        let blob = message(value, &blob_path)?;
        known(blob, &["mimeType", "data"], &blob_path)?;
        match field(blob, "mimeType") {
            Some(mime) => {
                string(mime, &join(&blob_path, "mimeType"))?;
            }
            None => {
                return Err(check(
                    &join(&blob_path, "mimeType"),
                    "a mime_type is required",
                ))
            }
        }
        match field(blob, "data") {
            Some(data) => bytes(data, &join(&blob_path, "data"))?,
            None => return Err(check(&join(&blob_path, "data"), "data is required")),
        }
        facts.other_parts += 1;
    }
    if let Some(value) = field(obj, "fileData") {
        let file_path = join(path, "fileData");
        let file = message(value, &file_path)?;
        known(file, &["mimeType", "fileUri", "displayName"], &file_path)?;
        let uri = match field(file, "fileUri") {
            Some(uri) => string(uri, &join(&file_path, "fileUri"))?,
            None => return Err(check(&join(&file_path, "fileUri"), "file_uri is required")),
        };
        if !(uri.starts_with("https://") || uri.starts_with("http://")) {
            return Err(format!("Invalid or unsupported file uri: {uri}"));
        }
        match field(file, "mimeType") {
            Some(mime) => {
                string(mime, &join(&file_path, "mimeType"))?;
            }
            None => {
                return Err(check(
                    &join(&file_path, "mimeType"),
                    "a mime_type is required",
                ))
            }
        }
        facts.other_parts += 1;
    }
    if let Some(value) = field(obj, "functionCall") {
        let call_path = join(path, "functionCall");
        let call = message(value, &call_path)?;
        known(call, &["name", "args"], &call_path)?;
        let name = match field(call, "name") {
            Some(name) => string(name, &join(&call_path, "name"))?,
            None => "",
        };
        if name.is_empty() {
            return Err(check(&join(&call_path, "name"), "Name cannot be empty."));
        }
        if let Some(args) = field(call, "args") {
            object(args, &join(&call_path, "args"))?;
        }
        facts.function_calls.push((name.to_owned(), signed));
    }
    if let Some(value) = field(obj, "functionResponse") {
        let response_path = join(path, "functionResponse");
        let response = message(value, &response_path)?;
        known(
            response,
            &["name", "response", "parts", "willContinue", "scheduling"],
            &response_path,
        )?;
        let name = match field(response, "name") {
            Some(name) => string(name, &join(&response_path, "name"))?,
            None => "",
        };
        if name.is_empty() {
            return Err(check(
                &join(&response_path, "name"),
                "Name cannot be empty.",
            ));
        }
        match field(response, "response") {
            Some(body) => {
                object(body, &join(&response_path, "response"))?;
            }
            None => {
                return Err(check(
                    &join(&response_path, "response"),
                    "response is required",
                ))
            }
        }
        facts.function_responses += 1;
    }
    if field(obj, "executableCode").is_some() || field(obj, "codeExecutionResult").is_some() {
        facts.other_parts += 1;
    }
    Ok(())
}

fn validate_content(content: &Value, path: &str, system: bool) -> Result<ContentFacts, String> {
    let obj = message(content, path)?;
    known(obj, &["role", "parts"], path)?;
    let mut facts = ContentFacts::default();
    match field(obj, "role") {
        Some(role) => {
            let role = string(role, &join(path, "role"))?;
            if !system && role != "user" && role != "model" {
                return Err("Please use a valid role: user, model.".to_owned());
            }
            role.clone_into(&mut facts.role);
        }
        None => "user".clone_into(&mut facts.role),
    }
    let parts_path = join(path, "parts");
    let parts = match field(obj, "parts") {
        Some(parts) => array(parts, &parts_path)?,
        None => &[],
    };
    if parts.is_empty() {
        return Err(check(&parts_path, "contents.parts must not be empty."));
    }
    for (index, part) in parts.iter().enumerate() {
        validate_part(part, &format!("{parts_path}[{index}]"), &mut facts)?;
    }
    if system && facts.text_parts != parts.len() {
        return Err(check(
            &parts_path,
            "system_instruction may only hold text parts.",
        ));
    }
    Ok(facts)
}

/// The `Schema` fields Gemini's `parameters` take (an OpenAPI 3.0 subset).
const SCHEMA_FIELDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

const SCHEMA_TYPES: &[&str] = &[
    "TYPE_UNSPECIFIED",
    "STRING",
    "NUMBER",
    "INTEGER",
    "BOOLEAN",
    "ARRAY",
    "OBJECT",
    "NULL",
];

fn validate_schema(schema: &Value, path: &str) -> Result<(), String> {
    let obj = message(schema, path)?;
    known(obj, SCHEMA_FIELDS, path)?;
    if let Some(kind) = field(obj, "type") {
        let kind_path = join(path, "type");
        let name = string(kind, &kind_path)?;
        if !SCHEMA_TYPES
            .iter()
            .any(|known| known.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "Invalid value at '{kind_path}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), \"{name}\""
            ));
        }
    }
    if let Some(properties) = field(obj, "properties") {
        let properties_path = join(path, "properties");
        for (index, (_, value)) in object(properties, &properties_path)?.iter().enumerate() {
            validate_schema(value, &format!("{properties_path}[{index}].value"))?;
        }
    }
    if let Some(items) = field(obj, "items") {
        validate_schema(items, &join(path, "items"))?;
    }
    if let Some(any_of) = field(obj, "anyOf") {
        let any_of_path = join(path, "anyOf");
        for (index, value) in array(any_of, &any_of_path)?.iter().enumerate() {
            validate_schema(value, &format!("{any_of_path}[{index}]"))?;
        }
    }
    for list in ["required", "enum", "propertyOrdering"] {
        if let Some(values) = field(obj, list) {
            let list_path = join(path, list);
            for (index, value) in array(values, &list_path)?.iter().enumerate() {
                string(value, &format!("{list_path}[{index}]"))?;
            }
        }
    }
    Ok(())
}

fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Validates `tools`; returns the names of the declared functions.
fn validate_tools(tools: &Value) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (index, tool) in array(tools, "tools")?.iter().enumerate() {
        let tool_path = format!("tools[{index}]");
        let obj = message(tool, &tool_path)?;
        known(
            obj,
            &[
                "functionDeclarations",
                "googleSearch",
                "googleSearchRetrieval",
                "codeExecution",
                "urlContext",
                "computerUse",
                "fileSearch",
                "googleMaps",
            ],
            &tool_path,
        )?;
        let Some(declarations) = field(obj, "functionDeclarations") else {
            continue;
        };
        let declarations_path = join(&tool_path, "functionDeclarations");
        for (d, declaration) in array(declarations, &declarations_path)?.iter().enumerate() {
            let path = format!("{declarations_path}[{d}]");
            let obj = message(declaration, &path)?;
            known(
                obj,
                &[
                    "name",
                    "description",
                    "parameters",
                    "parametersJsonSchema",
                    "response",
                    "responseJsonSchema",
                    "behavior",
                ],
                &path,
            )?;
            let name = match field(obj, "name") {
                Some(name) => string(name, &join(&path, "name"))?,
                None => "",
            };
            if name.is_empty() {
                return Err(check(&join(&path, "name"), "Name cannot be empty."));
            }
            if !valid_function_name(name) {
                return Err(format!("The GenerateContentRequest proto is invalid:\n  * {}: [FIELD_INVALID] Invalid function name. Must start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a maximum length of 64.", join(&path, "name")));
            }
            if let Some(description) = field(obj, "description") {
                string(description, &join(&path, "description"))?;
            }
            let parameters = field(obj, "parameters");
            let json_schema = field(obj, "parametersJsonSchema");
            if parameters.is_some() && json_schema.is_some() {
                return Err(check(
                    &join(&path, "parameters"),
                    "parameters and parameters_json_schema cannot both be set.",
                ));
            }
            if let Some(parameters) = parameters {
                validate_schema(parameters, &join(&path, "parameters"))?;
            }
            if let Some(schema) = json_schema {
                object(schema, &join(&path, "parametersJsonSchema"))?;
            }
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The function calling mode and the names it allows, from `toolConfig`.
fn validate_tool_config(
    config: &Value,
    declared: &[String],
) -> Result<(String, Vec<String>), String> {
    let obj = message(config, "tool_config")?;
    known(
        obj,
        &["functionCallingConfig", "retrievalConfig"],
        "tool_config",
    )?;
    let Some(calling) = field(obj, "functionCallingConfig") else {
        return Ok(("AUTO".into(), Vec::new()));
    };
    let path = "tool_config.function_calling_config";
    let calling = message(calling, path)?;
    known(calling, &["mode", "allowedFunctionNames"], path)?;
    let mode = match field(calling, "mode") {
        Some(mode) => {
            let mode_path = format!("{path}.mode");
            let mode = string(mode, &mode_path)?;
            if !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode) {
                return Err(format!("Invalid value at '{mode_path}' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\""));
            }
            mode.to_owned()
        }
        None => "AUTO".to_owned(),
    };
    let mut allowed = Vec::new();
    if let Some(names) = field(calling, "allowedFunctionNames") {
        let names_path = format!("{path}.allowed_function_names");
        for (index, name) in array(names, &names_path)?.iter().enumerate() {
            let name = string(name, &format!("{names_path}[{index}]"))?;
            if !declared.iter().any(|declared| declared == name) {
                return Err(check(
                    &names_path,
                    &format!("function '{name}' is not declared in tools."),
                ));
            }
            allowed.push(name.to_owned());
        }
        if !allowed.is_empty() && mode != "ANY" && mode != "VALIDATED" {
            return Err(check(
                &names_path,
                "allowed_function_names may only be set when mode is ANY.",
            ));
        }
    }
    Ok((mode, allowed))
}

/// What the answer depends on in `generationConfig`.
#[derive(Default)]
struct Generation {
    stop_sequences: Vec<String>,
    max_output_tokens: Option<u64>,
    json: bool,
}

fn validate_generation_config(config: &Value) -> Result<Generation, String> {
    let path = "generation_config";
    let obj = message(config, path)?;
    known(
        obj,
        &[
            "stopSequences",
            "responseMimeType",
            "responseSchema",
            "responseJsonSchema",
            "responseModalities",
            "candidateCount",
            "maxOutputTokens",
            "temperature",
            "topP",
            "topK",
            "seed",
            "presencePenalty",
            "frequencyPenalty",
            "responseLogprobs",
            "logprobs",
            "enableEnhancedCivicAnswers",
            "speechConfig",
            "thinkingConfig",
            "imageConfig",
            "mediaResolution",
        ],
        path,
    )?;
    let mut generation = Generation::default();
    if let Some(stops) = field(obj, "stopSequences") {
        let stops_path = join(path, "stopSequences");
        let stops = array(stops, &stops_path)?;
        if stops.len() > 5 {
            return Err(check(
                &stops_path,
                "the number of stop_sequences must be at most 5.",
            ));
        }
        for (index, stop) in stops.iter().enumerate() {
            generation
                .stop_sequences
                .push(string(stop, &format!("{stops_path}[{index}]"))?.to_owned());
        }
    }
    for name in ["temperature", "topP", "presencePenalty", "frequencyPenalty"] {
        if let Some(value) = field(obj, name) {
            let value = number(value, &join(path, name))?;
            if name == "temperature" && !(0.0..=2.0).contains(&value) {
                return Err(check(
                    &join(path, name),
                    "temperature must be in the range [0.0, 2.0].",
                ));
            }
            if name == "topP" && !(0.0..=1.0).contains(&value) {
                return Err(check(
                    &join(path, name),
                    "top_p must be in the range [0.0, 1.0].",
                ));
            }
        }
    }
    for name in [
        "candidateCount",
        "maxOutputTokens",
        "topK",
        "seed",
        "logprobs",
    ] {
        if let Some(value) = field(obj, name) {
            let value = integer(value, &join(path, name))?;
            if name == "maxOutputTokens" {
                generation.max_output_tokens = u64::try_from(value).ok();
            }
            if name == "candidateCount" && value != 1 {
                return Err(check(
                    &join(path, name),
                    "only one candidate can be specified in the current model",
                ));
            }
        }
    }
    for name in ["responseLogprobs", "enableEnhancedCivicAnswers"] {
        if let Some(value) = field(obj, name) {
            boolean(value, &join(path, name))?;
        }
    }
    let mime_type = match field(obj, "responseMimeType") {
        Some(mime) => {
            let mime_path = join(path, "responseMimeType");
            let mime = string(mime, &mime_path)?;
            const SUPPORTED: &[&str] = &[
                "text/plain",
                "application/json",
                "application/xml",
                "application/yaml",
                "text/x.enum",
            ];
            if !SUPPORTED.contains(&mime) {
                return Err(check(&mime_path, "allowed mimetypes are `text/plain`, `application/json`, `application/xml`, `application/yaml` and `text/x.enum`."));
            }
            Some(mime)
        }
        None => None,
    };
    generation.json = mime_type == Some("application/json");
    let schema = field(obj, "responseSchema");
    let json_schema = field(obj, "responseJsonSchema");
    if schema.is_some() && json_schema.is_some() {
        return Err(check(
            &join(path, "responseSchema"),
            "response_schema and response_json_schema cannot both be set.",
        ));
    }
    if let Some(schema) = schema {
        validate_schema(schema, &join(path, "responseSchema"))?;
    }
    if (schema.is_some() || json_schema.is_some())
        && !generation.json
        && mime_type != Some("text/x.enum")
    {
        return Err(check(
            &join(path, "responseMimeType"),
            "a response schema needs response_mime_type `application/json` (or `text/x.enum`).",
        ));
    }
    if let Some(thinking) = field(obj, "thinkingConfig") {
        let thinking_path = join(path, "thinkingConfig");
        let thinking = message(thinking, &thinking_path)?;
        known(
            thinking,
            &["includeThoughts", "thinkingBudget", "thinkingLevel"],
            &thinking_path,
        )?;
    }
    Ok(generation)
}

/// What a valid request asks for.
struct Checked {
    contents: Vec<ContentFacts>,
    declared: Vec<String>,
    mode: String,
    allowed: Vec<String>,
    generation: Generation,
}

fn validate(request: &Value) -> Result<Checked, String> {
    let obj = message(request, "")?;
    known(
        obj,
        &[
            "model",
            "contents",
            "tools",
            "toolConfig",
            "safetySettings",
            "systemInstruction",
            "generationConfig",
            "cachedContent",
        ],
        "",
    )?;
    let contents = match field(obj, "contents") {
        Some(contents) => array(contents, "contents")?,
        None => &[],
    };
    if contents.is_empty() {
        return Err(check("contents", "contents is not specified"));
    }
    if let Some(system) = field(obj, "systemInstruction") {
        validate_content(system, "system_instruction", true)?;
    }
    let mut facts = Vec::with_capacity(contents.len());
    for (index, content) in contents.iter().enumerate() {
        facts.push(validate_content(
            content,
            &format!("contents[{index}]"),
            false,
        )?);
    }
    // Function call turns follow a user turn and are answered, one response per call.
    for (index, content) in facts.iter().enumerate() {
        let previous = index.checked_sub(1).and_then(|at| facts.get(at));
        if !content.function_calls.is_empty() {
            if content.role != "model" {
                return Err("Please ensure that function call turns are model turns.".to_owned());
            }
            if previous.is_none_or(|previous| previous.role != "user") {
                return Err("Please ensure that function call turn comes immediately after a user turn or after a function response turn.".to_owned());
            }
            if let Some(next) = facts.get(index + 1) {
                if next.function_responses != content.function_calls.len() {
                    return Err("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.".to_owned());
                }
            }
        }
        if content.function_responses > 0
            && previous.is_none_or(|previous| previous.function_calls.is_empty())
        {
            return Err("Please ensure that function response turn comes immediately after a function call turn.".to_owned());
        }
    }
    // The function calls of the current turn (since the last user turn that is not only
    // function responses) must carry their thought signature.
    let turn_start = facts
        .iter()
        .rposition(|content| content.role == "user" && content.other_parts > 0)
        .unwrap_or(0);
    for (index, content) in facts.iter().enumerate().skip(turn_start) {
        if let Some((name, false)) = content.function_calls.first() {
            return Err(format!("Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.", index + 1));
        }
    }
    let declared = match field(obj, "tools") {
        Some(tools) => validate_tools(tools)?,
        None => Vec::new(),
    };
    let (mode, allowed) = match field(obj, "toolConfig") {
        Some(config) => validate_tool_config(config, &declared)?,
        None => ("AUTO".to_owned(), Vec::new()),
    };
    let generation = match field(obj, "generationConfig") {
        Some(config) => validate_generation_config(config)?,
        None => Generation::default(),
    };
    if let Some(settings) = field(obj, "safetySettings") {
        array(settings, "safety_settings")?;
    }
    Ok(Checked {
        contents: facts,
        declared,
        mode,
        allowed,
        generation,
    })
}

// ---------------------------------------------------------------------------------------------
// Answer
// ---------------------------------------------------------------------------------------------

/// The text of a content's parts, joined with one space: text parts, and function responses
/// (`response.content` when it is a string, else the response's JSON); and its media parts.
fn content_text(content: &Value) -> (String, usize) {
    let mut texts: Vec<String> = Vec::new();
    let mut media = 0;
    let parts = content
        .get("parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for part in parts {
        let Some(part) = part.as_object() else {
            continue;
        };
        if let Some(text) = field(part, "text").and_then(Value::as_str) {
            if field(part, "thought").and_then(Value::as_bool) != Some(true) {
                texts.push(text.to_owned());
            }
        } else if field(part, "inlineData").is_some() || field(part, "fileData").is_some() {
            media += 1;
        } else if let Some(response) = field(part, "functionResponse")
            .and_then(Value::as_object)
            .and_then(|response| field(response, "response"))
        {
            match response.get("content").and_then(Value::as_str) {
                Some(text) => texts.push(text.to_owned()),
                None => texts.push(response.to_string()),
            }
        }
    }
    (texts.join(" "), media)
}

/// `mock:thoughts=N` (Gemini only): the answer reports N thought tokens.
fn thoughts_directive(text: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("mock:thoughts="))
        .and_then(|n| {
            n.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

fn tool_args() -> Value {
    json!({"location": "Paris", "unit": "celsius"})
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    candidates_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    thoughts_token_count: u64,
    total_token_count: u64,
    prompt_tokens_details: [ModalityCount; 1],
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

/// Protobuf JSON leaves out a count of 0.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UsageMetadata {
    fn new(prompt: u64, candidates: u64, thoughts: u64) -> Self {
        UsageMetadata {
            prompt_token_count: prompt,
            candidates_token_count: candidates,
            thoughts_token_count: thoughts,
            total_token_count: prompt + candidates + thoughts,
            prompt_tokens_details: [ModalityCount {
                modality: "TEXT",
                token_count: prompt,
            }],
        }
    }
}

enum Reply {
    Text {
        pieces: Vec<String>,
        finish: &'static str,
    },
    Call(String),
}

/// One `GenerateContentResponse`.
fn response_json(
    parts: Vec<Value>,
    finish: Option<&str>,
    usage: UsageMetadata,
    model: &str,
    id: &str,
) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let (Some(finish), Some(object)) = (finish, candidate.as_object_mut()) {
        object.insert("finishReason".into(), finish.into());
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": id,
    })
}

fn call_part(name: &str) -> Value {
    json!({"functionCall": {"name": name, "args": tool_args()}, "thoughtSignature": THOUGHT_SIGNATURE})
}

/// `/v1beta/models/<model>:<method>` as the model and whether it streams.
fn parse_path(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "generateContent" => Some((model, false)),
        "streamGenerateContent" => Some((model, true)),
        _ => None,
    }
}

fn query_param<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    })
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<MockBody> {
    let Some((model, stream)) = parse_path(parts.uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "The requested URL {} was not found on this server (tollgate-mock serves /v1beta/models/<model>:generateContent and :streamGenerateContent).",
                parts.uri.path()
            ),
            None,
        );
    };
    if let Some(expected) = state.config.gemini_api_key.as_deref() {
        let given = parts
            .headers
            .get("x-goog-api-key")
            .and_then(|value| value.to_str().ok())
            .or_else(|| query_param(parts, "key"));
        match given {
            None => {
                return error(
                    StatusCode::FORBIDDEN,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                    None,
                )
            }
            Some(key) if key != expected => {
                let message = "API key not valid. Please pass a valid API key.";
                return error(
                    StatusCode::BAD_REQUEST,
                    message,
                    Some(json!([
                        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message}
                    ])),
                );
            }
            Some(_) => {}
        }
    }
    answer(state, parts, body, model, stream).await
}

/// Answers a `generateContent` (or, with `stream`, `streamGenerateContent`) body for `model`
/// once the caller is authenticated: Gemini's own endpoints and Vertex AI's.
pub(crate) async fn answer(
    state: &State,
    parts: &Parts,
    body: &Bytes,
    model: &str,
    stream: bool,
) -> Response<MockBody> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return invalid(&format!(
                "Invalid JSON payload received. Unexpected token.\n{e}"
            ))
        }
    };
    let checked = match validate(&request) {
        Ok(checked) => checked,
        Err(message) => return invalid(&message),
    };
    let n = state.next_id();
    let id = format!("mock-resp-{n}");

    let contents = request
        .get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut prompt_tokens = request
        .get("systemInstruction")
        .or_else(|| request.get("system_instruction"))
        .map_or(0, |system| count_words(&content_text(system).0));
    for content in contents {
        prompt_tokens += count_words(&content_text(content).0);
    }
    let prompt_tokens = prompt_tokens.max(1);
    let last_user = contents
        .iter()
        .zip(&checked.contents)
        .rev()
        .find(|(_, facts)| facts.role == "user");
    let (user_text, media) = last_user
        .map(|(content, _)| content_text(content))
        .unwrap_or_default();
    let answered_a_call = last_user.is_some_and(|(_, facts)| facts.function_responses > 0);
    let directives = Directives::for_request(&user_text, parts);
    if directives.raw_error {
        return raw_error();
    }
    if let Some(status) = directives.error_status() {
        return status_error(status);
    }
    let thoughts = thoughts_directive(&user_text).unwrap_or(0);

    let calls_a_tool = !checked.declared.is_empty() && checked.mode != "NONE" && !answered_a_call;
    let reply = if calls_a_tool {
        let name = checked
            .allowed
            .first()
            .or_else(|| checked.declared.first())
            .cloned()
            .unwrap_or_default();
        Reply::Call(name)
    } else {
        let full = match directives.chunks {
            Some(count) => numbered_chunks(count).concat(),
            None if checked.generation.json => json!({"echo": user_text}).to_string(),
            None => {
                let mut text = format!("echo: {user_text}");
                if media > 0 {
                    text.push_str(&format!(" [images: {media}]"));
                }
                text
            }
        };
        let mut text = match find_stop(&full, &checked.generation.stop_sequences) {
            Some((cut, _)) => full.get(..cut).unwrap_or_default().to_owned(),
            None => full,
        };
        let mut finish = "STOP";
        if let Some(max) = checked.generation.max_output_tokens {
            let words: Vec<&str> = split_words_keep_spaces(&text);
            if words.len() as u64 > max {
                text = words
                    .iter()
                    .take(usize::try_from(max).unwrap_or(0))
                    .copied()
                    .collect();
                finish = "MAX_TOKENS";
            }
        }
        let pieces = split_words_keep_spaces(&text)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Reply::Text { pieces, finish }
    };
    let candidates_tokens = match &reply {
        Reply::Text { pieces, .. } => count_words(&pieces.concat()),
        Reply::Call(_) => count_words(&tool_args().to_string()),
    };
    let usage = UsageMetadata::new(prompt_tokens, candidates_tokens, thoughts);

    if !stream {
        if let Some(ms) = directives.delay_ms.filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let (parts, finish) = match &reply {
            Reply::Text { pieces, finish } => (vec![json!({"text": pieces.concat()})], *finish),
            Reply::Call(name) => (vec![call_part(name)], "STOP"),
        };
        let answer = response_json(parts, Some(finish), usage, model, &id);
        // Gemini pretty-prints buffered answers.
        let body = serde_json::to_vec_pretty(&answer).unwrap_or_default();
        return response(
            StatusCode::OK,
            "application/json; charset=UTF-8",
            MockBody::full(Bytes::from(body)),
        );
    }

    // Each event a whole GenerateContentResponse; usage so far on each, the finish reason and
    // the full usage on the last.
    let sse = query_param(parts, "alt") == Some("sse");
    let mut events: Vec<Value> = Vec::new();
    let prompt_only = UsageMetadata::new(prompt_tokens, 0, 0);
    match &reply {
        Reply::Call(name) => {
            events.push(response_json(
                vec![call_part(name)],
                Some("STOP"),
                usage,
                model,
                &id,
            ));
        }
        Reply::Text { pieces, finish } => {
            let last = pieces.len().saturating_sub(1);
            let mut so_far = String::new();
            for (index, piece) in pieces.iter().enumerate() {
                so_far.push_str(piece);
                let event_usage = if index == last {
                    usage
                } else {
                    UsageMetadata {
                        candidates_token_count: count_words(&so_far),
                        total_token_count: prompt_tokens + count_words(&so_far),
                        ..prompt_only
                    }
                };
                let finish = (index == last).then_some(*finish);
                events.push(response_json(
                    vec![json!({"text": piece})],
                    finish,
                    event_usage,
                    model,
                    &id,
                ));
                if index == 0 && directives.stream_error {
                    events.push(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}));
                    break;
                }
                // Without alt=sse the stream is one JSON array, which a fault cuts in half.
                if index == 0 && directives.stream_cut && sse {
                    break;
                }
            }
            if pieces.is_empty() {
                events.push(response_json(
                    vec![json!({"text": ""})],
                    Some(*finish),
                    usage,
                    model,
                    &id,
                ));
            }
        }
    }
    if !sse {
        // Without alt=sse Gemini streams one JSON array of the responses.
        let body = serde_json::to_vec_pretty(&Value::Array(events)).unwrap_or_default();
        return response(
            StatusCode::OK,
            "application/json; charset=UTF-8",
            MockBody::full(Bytes::from(body)),
        );
    }
    let frames: Vec<Bytes> = events
        .iter()
        .map(|event| {
            let mut frame = b"data: ".to_vec();
            frame.extend_from_slice(&serde_json::to_vec(event).unwrap_or_default());
            // Gemini ends its events with CRLF pairs.
            frame.extend_from_slice(b"\r\n\r\n");
            Bytes::from(frame)
        })
        .collect();
    let mut resp = response(
        StatusCode::OK,
        "text/event-stream",
        MockBody::paced(frames, directives.delay()),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(request: Value) -> Result<(), String> {
        validate(&request).map(|_| ())
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    #[test]
    fn bodies_are_checked_as_gemini_checks_them() {
        assert_eq!(ok(json!({"contents": [user("hi")]})), Ok(()));
        assert_eq!(
            ok(json!({"contents": [{"parts": [{"text": "no role"}]}]})),
            Ok(())
        );
        assert_eq!(
            ok(
                json!({"contents": [user("hi")], "system_instruction": {"parts": [{"text": "be brief"}]},
                "generation_config": {"max_output_tokens": 5}})
            ),
            Ok(())
        );
        assert_eq!(
            ok(json!({"contents": []})),
            Err("* GenerateContentRequest.contents: contents is not specified\n".to_owned())
        );
        assert_eq!(
            ok(json!({"contents": [user("hi")], "stream": true})),
            Err(
                "Invalid JSON payload received. Unknown name \"stream\": Cannot find field."
                    .to_owned()
            )
        );
        assert_eq!(
            ok(json!({"contents": [user("hi")], "generationConfig": {"max_tokens": 5}})),
            Err("Invalid JSON payload received. Unknown name \"max_tokens\" at 'generation_config': Cannot find field.".to_owned())
        );
        assert_eq!(
            ok(json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})),
            Err("Please use a valid role: user, model.".to_owned())
        );
        assert_eq!(
            ok(json!({"contents": [{"role": "user", "parts": []}]})),
            Err(
                "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.\n"
                    .to_owned()
            )
        );
        assert!(ok(json!({"contents": [{"role": "user", "parts": [{}]}]}))
            .is_err_and(|e| e.contains("required oneof field 'data'")));
        assert!(ok(json!({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}))
            .is_err_and(|e| e.contains("oneof field 'data' is already set")));
        assert!(ok(json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "not base64!"}}]}]}))
            .is_err_and(|e| e.contains("Base64 decoding failed")));
        assert!(
            ok(json!({"contents": [user("hi")], "generationConfig": {"temperature": "hot"}}))
                .is_err_and(|e| e
                    == "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"")
        );
        assert!(ok(json!({"contents": [user("hi")], "generationConfig": {"responseJsonSchema": {"type": "object"}}}))
            .is_err_and(|e| e.contains("response_mime_type")));
        assert!(ok(json!({"contents": [user("hi")], "systemInstruction": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}}))
            .is_err_and(|e| e.contains("only hold text")));
    }

    #[test]
    fn tools_and_function_turns() {
        let tools = json!([{"functionDeclarations": [{"name": "get_weather",
            "parametersJsonSchema": {"type": "object", "additionalProperties": false}}]}]);
        assert_eq!(
            ok(json!({"contents": [user("hi")], "tools": tools})),
            Ok(())
        );
        // `parameters` is Gemini's OpenAPI subset.
        let openapi = json!([{"functionDeclarations": [{"name": "get_weather",
            "parameters": {"type": "object", "additionalProperties": false}}]}]);
        assert_eq!(
            ok(json!({"contents": [user("hi")], "tools": openapi})),
            Err("Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field.".to_owned())
        );
        let call = |signature: Option<&str>| {
            let mut part = json!({"functionCall": {"name": "get_weather", "args": {}}});
            if let Some(signature) = signature {
                part["thoughtSignature"] = signature.into();
            }
            json!({"role": "model", "parts": [part]})
        };
        let answer = json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}}]});
        assert_eq!(
            ok(
                json!({"contents": [user("hi"), call(Some(THOUGHT_SIGNATURE)), answer.clone()], "tools": tools})
            ),
            Ok(())
        );
        assert!(
            ok(json!({"contents": [user("hi"), call(None), answer.clone()], "tools": tools}))
                .is_err_and(|e| e.starts_with("Function call is missing a thought_signature"))
        );
        // An earlier turn's calls need no signature.
        assert_eq!(
            ok(
                json!({"contents": [user("hi"), call(None), answer.clone(), user("and now?")], "tools": tools})
            ),
            Ok(())
        );
        assert!(ok(
            json!({"contents": [user("hi"), call(Some(THOUGHT_SIGNATURE)), user("no answer")]})
        )
        .is_err_and(|e| e.contains("number of function response parts")));
        assert!(ok(json!({"contents": [user("hi"), answer.clone()]}))
            .is_err_and(|e| e.contains("function response turn comes immediately after")));
        assert!(
            ok(json!({"contents": [call(Some(THOUGHT_SIGNATURE)), answer.clone()]}))
                .is_err_and(|e| e.contains("function call turn comes immediately after"))
        );
        let with_id = json!({"role": "user", "parts": [{"functionResponse": {"id": "x", "name": "get_weather", "response": {}}}]});
        assert!(
            ok(json!({"contents": [user("hi"), call(Some(THOUGHT_SIGNATURE)), with_id]}))
                .is_err_and(|e| e
                    .contains("Unknown name \"id\" at 'contents[2].parts[0].function_response'"))
        );
        let no_name = json!({"role": "user", "parts": [{"functionResponse": {"response": {}}}]});
        assert!(
            ok(json!({"contents": [user("hi"), call(Some(THOUGHT_SIGNATURE)), no_name]}))
                .is_err_and(|e| e.contains("function_response.name: Name cannot be empty."))
        );
        assert!(ok(json!({"contents": [user("hi")], "tools": tools,
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["get_weather"]}}}))
            .is_err_and(|e| e.contains("only be set when mode is ANY")));
        assert!(ok(json!({"contents": [user("hi")], "tools": tools,
            "toolConfig": {"functionCallingConfig": {"mode": "auto"}}}))
        .is_err_and(|e| e.contains("Invalid value at 'tool_config.function_calling_config.mode'")));
        assert!(ok(json!({"contents": [user("hi")], "tools": [{"functionDeclarations": [{"name": "9lives"}]}]}))
            .is_err_and(|e| e.contains("Invalid function name")));
    }

    #[test]
    fn paths_name_the_model_and_the_method() {
        assert_eq!(
            parse_path("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(("gemini-2.5-flash", false))
        );
        assert_eq!(
            parse_path("/v1beta/models/g:streamGenerateContent"),
            Some(("g", true))
        );
        assert_eq!(parse_path("/v1/models/g:generateContent"), None);
        assert_eq!(parse_path("/v1beta/v1beta/models/g:generateContent"), None);
        assert_eq!(parse_path("/v1beta/models/g:countTokens"), None);
        assert_eq!(thoughts_directive("think mock:thoughts=12."), Some(12));
    }
}
