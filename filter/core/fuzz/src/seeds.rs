//! The seed corpus of every target, made from the golden fixtures of tollgate-core
//! (`filter/core/fixtures`), so that fuzzing starts from real provider streams, bodies and
//! client requests. `tests/corpus.rs` checks that `corpus/` holds exactly these files, and
//! rewrites it under `UPDATE_CORPUS=1` (`make fuzz-corpus`).

use std::path::{Path, PathBuf};

use prost::Message;
use tollgate_core::proto;

use crate::STATUSES;

/// One seed: the target it feeds, its file name and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The fuzz target (a directory under `corpus/`).
    pub target: &'static str,
    /// The file name.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

/// Every target that has seeds.
pub const TARGETS: [&str; 16] = [
    "sse_parser",
    "openai_stream",
    "anthropic_stream",
    "openai_body",
    "anthropic_body",
    "gemini_stream",
    "gemini_body",
    "request_parser",
    "snapshot_decode",
    "aws_eventstream",
    "bedrock_stream",
    "bedrock_body",
    "cohere_stream",
    "cohere_body",
    "ollama_stream",
    "ollama_body",
];

/// The directory of the golden fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The directory of the committed corpus.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// A fixture case: its provider directory, its name and its path.
struct Case {
    provider: &'static str,
    name: String,
    path: PathBuf,
}

impl Case {
    fn read(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path.join(file)).ok()
    }

    fn seed_name(&self) -> String {
        format!("{}-{}", self.provider, self.name)
    }

    /// Whether the client asked for the usage chunk in `request.json`.
    fn include_usage(&self) -> bool {
        let request: serde_json::Value = self
            .read("request.json")
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        request["stream_options"]["include_usage"] == true
    }

    /// The byte that picks the case's status from [`STATUSES`].
    fn status_pick(&self) -> u8 {
        let status: u16 = self
            .read("status")
            .and_then(|bytes| String::from_utf8_lossy(&bytes).trim().parse().ok())
            .unwrap_or(200);
        let index = STATUSES
            .iter()
            .position(|known| *known == status)
            .unwrap_or_else(|| panic!("{}: status {status} is not in STATUSES", self.name));
        u8::try_from(index).unwrap_or_else(|_| panic!("STATUSES has over 256 entries"))
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for provider in [
        "openai",
        "anthropic",
        "gemini",
        "bedrock",
        "cohere",
        "ollama",
    ] {
        let directory = fixtures().join(provider);
        let entries = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|error| panic!("{error}")).path();
            if path.is_dir() {
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                cases.push(Case {
                    provider,
                    name,
                    path,
                });
            }
        }
    }
    cases.sort_by(|a, b| (a.provider, &a.name).cmp(&(b.provider, &b.name)));
    cases
}

/// The chunking byte of the stream seeds: chunks of 0 to 20 bytes.
const SEED_CHUNKING: u8 = 5;

/// An event stream with every line ending, comments, fields the parser skips, multi-line
/// data and an unfinished event, for the parser's seeds.
const LINE_ENDINGS: &[u8] = b": comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nid: 7\nretry: 10\nevent: ping\ndata: {}\n\ndata: line1\ndata:line2\n\ndata:nospace\r\r\xff\xfe\ndata: \xff\n\ndata: [DONE]\n\ndata: unfinished";

/// Inputs that broke a check once (each also has a unit test in tollgate-core), replayed by
/// every run. The first byte of a body seed picks status 200 or 529 from [`STATUSES`], the
/// first two of a stream seed are its options and chunking.
const REGRESSIONS: [(&str, &str, &[u8]); 7] = [
    (
        "anthropic_body",
        "error_not_utf8",
        b"\x0e{\"type\": \"\xfcrror\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}",
    ),
    (
        "request_parser",
        "array_of_fields",
        br#"["m",[{"role":"user","content":"x"}],true,null,null,null,null,null,null,null,null,null]"#,
    ),
    (
        "request_parser",
        "stream_options_null",
        br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}],"stream_options":null}"#,
    ),
    (
        "openai_body",
        "escaped_usage_key",
        b"\x00{\"usage\":{\"prompt_tokens\":1},\"x\\\"usage\":{\"prompt_tokens\":9}}",
    ),
    (
        "openai_body",
        "usage_overflow",
        b"\x00{\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":1}}",
    ),
    (
        "openai_stream",
        "escaped_usage_null",
        b"\x00\x05data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1},\"a\\\"usage\":null}\n\n",
    ),
    (
        "anthropic_stream",
        "lone_surrogate",
        b"\x00\x05data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\ud800\"}}\n\n",
    ),
];

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        })
    };
    let prefixed = |head: &[u8], tail: &[u8]| [head, tail].concat();

    add(
        "sse_parser",
        "line_endings".into(),
        prefixed(&[u8::MAX, SEED_CHUNKING], LINE_ENDINGS),
    );
    add(
        "sse_parser",
        "line_endings-bounded".into(),
        prefixed(&[8, 1], LINE_ENDINGS),
    );
    for case in cases() {
        let name = case.seed_name();
        if let Some(request) = case.read("request.json") {
            add("request_parser", name.clone(), request);
        }
        if let Some(stream) = case.read("response.sse") {
            let options = u8::from(case.include_usage());
            let target = match case.provider {
                "openai" => "openai_stream",
                "gemini" => "gemini_stream",
                "cohere" => "cohere_stream",
                _ => "anthropic_stream",
            };
            add(
                target,
                name.clone(),
                prefixed(&[options, SEED_CHUNKING], &stream),
            );
            add(
                "sse_parser",
                name.clone(),
                prefixed(&[u8::MAX, SEED_CHUNKING], &stream),
            );
        }
        if let Some(stream) = case.read("response.ndjson") {
            let options = u8::from(case.include_usage());
            add(
                "ollama_stream",
                name.clone(),
                prefixed(&[options, SEED_CHUNKING], &stream),
            );
        }
        if let Some(events) = case.read("response.events.json") {
            let options = u8::from(case.include_usage());
            add(
                "bedrock_stream",
                name.clone(),
                prefixed(&[options, SEED_CHUNKING], &bedrock_stream(&events)),
            );
        }
        if let Some(body) = case
            .read("response.json")
            .or_else(|| case.read("response.txt"))
        {
            let target = match case.provider {
                "openai" => "openai_body",
                "gemini" => "gemini_body",
                "bedrock" => "bedrock_body",
                "cohere" => "cohere_body",
                "ollama" => "ollama_body",
                _ => "anthropic_body",
            };
            add(target, name.clone(), prefixed(&[case.status_pick()], &body));
        }
    }
    for (target, name, bytes) in REGRESSIONS {
        add(target, format!("regression-{name}"), bytes.to_vec());
    }
    for (name, bytes) in eventstream_seeds() {
        add("aws_eventstream", name, bytes);
    }
    for (name, snapshot) in snapshots() {
        let message = proto::ControlMessage {
            kind: Some(proto::control_message::Kind::Snapshot(snapshot)),
        };
        add("snapshot_decode", name.into(), message.encode_to_vec());
    }
    seeds
}

/// The binary event stream of a Bedrock fixture's `response.events.json` (frames
/// `{"event"|"exception": type, "payload": {...}, "corrupt"?: true}`, encoded as the golden
/// test `golden_bedrock.rs` encodes them).
fn bedrock_stream(events: &[u8]) -> Vec<u8> {
    let events: serde_json::Value =
        serde_json::from_slice(events).unwrap_or_else(|error| panic!("{error}"));
    let string = |name: &str, value: &str| {
        (
            name.to_string(),
            crate::eventstream::Value::String(value.to_string()),
        )
    };
    let mut stream = Vec::new();
    for event in events.as_array().into_iter().flatten() {
        let (kind_header, kind, message_type) =
            match (event["event"].as_str(), event["exception"].as_str()) {
                (Some(name), _) => (":event-type", name, "event"),
                (None, Some(name)) => (":exception-type", name, "exception"),
                (None, None) => panic!("a frame is an event or an exception: {event}"),
            };
        let mut bytes = crate::eventstream::encode(&crate::eventstream::OwnedMessage {
            headers: vec![
                string(kind_header, kind),
                string(":content-type", "application/json"),
                string(":message-type", message_type),
            ],
            payload: serde_json::to_vec(&event["payload"]).unwrap_or_default(),
        });
        if event["corrupt"] == true {
            let at = bytes.len() - 6;
            bytes[at] ^= 0x20;
        }
        stream.extend_from_slice(&bytes);
    }
    stream
}

/// AWS's published event stream vectors (`tests/data/aws/eventstream/encoded`, in
/// tollgate-core), each alone and the valid ones back to back (also under a bound the largest
/// is over), and a Bedrock-shaped ConverseStream with an exception at its end.
fn eventstream_seeds() -> Vec<(String, Vec<u8>)> {
    let encoded =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/aws/eventstream/encoded");
    let mut seeds = Vec::new();
    let mut all_positive = Vec::new();
    for kind in ["positive", "negative"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(encoded.join(kind))
            .unwrap_or_else(|error| panic!("{}: {error}", encoded.display()))
            .map(|entry| entry.unwrap_or_else(|error| panic!("{error}")).path())
            .collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{error}"));
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            if kind == "positive" {
                all_positive.extend_from_slice(&bytes);
            }
            seeds.push((
                format!("eventstream-{kind}-{name}"),
                [&[u8::MAX, SEED_CHUNKING][..], &bytes].concat(),
            ));
        }
    }
    seeds.push((
        "eventstream-all_positive".into(),
        [&[u8::MAX, SEED_CHUNKING][..], &all_positive].concat(),
    ));
    // A bound of 16 + 4 * 40 = 176 bytes: all_headers (204) is over it.
    seeds.push((
        "eventstream-all_positive-bounded".into(),
        [&[40, 1][..], &all_positive].concat(),
    ));
    let event = crate::eventstream::bedrock_event;
    let mut converse = [
        event("messageStart", r#"{"p":"abcdefghijk","role":"assistant"}"#),
        event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcdefghijklmnopq"}"#,
        ),
        event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcd"}"#),
        event("messageStop", r#"{"p":"abcdefgh","stopReason":"end_turn"}"#),
        event(
            "metadata",
            r#"{"metrics":{"latencyMs":412},"p":"ab","usage":{"inputTokens":12,"outputTokens":5,"totalTokens":17}}"#,
        ),
    ]
    .concat();
    seeds.push((
        "eventstream-bedrock_converse".into(),
        [&[u8::MAX, SEED_CHUNKING][..], &converse].concat(),
    ));
    let string = |name: &str, value: &str| {
        (
            name.to_string(),
            crate::eventstream::Value::String(value.to_string()),
        )
    };
    converse.extend(crate::eventstream::encode(
        &crate::eventstream::OwnedMessage {
            headers: vec![
                string(":exception-type", "throttlingException"),
                string(":content-type", "application/json"),
                string(":message-type", "exception"),
            ],
            payload: br#"{"message":"Too many requests, please wait before trying again."}"#
                .to_vec(),
        },
    ));
    seeds.push((
        "eventstream-bedrock_throttled".into(),
        [&[u8::MAX, 0][..], &converse].concat(),
    ));
    seeds
}

/// Snapshots as the control plane sends them: deployments of every provider kind, settings, and
/// keys (valid, blocked, expiring, limited to models, and one with a broken hash).
fn snapshots() -> Vec<(&'static str, proto::Snapshot)> {
    let deployment =
        |model_name: &str, kind: proto::ProviderKind, api_base: &str| proto::Deployment {
            api_base: api_base.into(),
            ..crate::deployment(model_name, kind)
        };
    let key = |digit: char, models: &[&str]| proto::VirtualKey {
        key_sha256: digit.to_string().repeat(64),
        key_alias: format!("key-{digit}"),
        user_id: "user".into(),
        team_id: "team".into(),
        models: models.iter().map(|model| model.to_string()).collect(),
        blocked: digit == 'b',
        expires_unix_ms: if digit == 'e' { 1_700_000_000_000 } else { 0 },
        ..Default::default()
    };
    let full = proto::Snapshot {
        version: 42,
        settings: Some(proto::Settings {
            master_key_sha256: "ab".repeat(32),
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 0,
            budgets: Vec::new(),
            rate_limits: Vec::new(),
            ..Default::default()
        }),
        deployments: vec![
            deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "http://127.0.0.1:8000/v1",
            ),
            deployment(
                "gpt",
                proto::ProviderKind::Openai,
                "https://api.openai.com/v1",
            ),
            deployment(
                "claude",
                proto::ProviderKind::Anthropic,
                "https://api.anthropic.com",
            ),
            deployment(
                "gemini",
                proto::ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com",
            ),
            deployment(
                "command",
                proto::ProviderKind::Cohere,
                "https://api.cohere.com",
            ),
            deployment(
                "llama",
                proto::ProviderKind::Ollama,
                "http://localhost:11434",
            ),
            deployment("broken", proto::ProviderKind::Unspecified, "ftp://nowhere"),
        ],
        keys: vec![
            key('a', &[]),
            key('b', &[]),
            key('e', &["gpt"]),
            key('x', &["claude"]),
        ],
    };
    let empty = proto::Snapshot {
        version: 1,
        ..proto::Snapshot::default()
    };
    vec![("snapshot-full", full), ("snapshot-empty", empty)]
}
