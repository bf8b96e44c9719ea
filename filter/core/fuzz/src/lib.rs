//! What the fuzz targets share: how an input is cut into chunks, the fixed snapshot states
//! the translators run against, and the checks of an OpenAI event stream.
//!
//! Every target reaches tollgate-core through its public API only, as the glues do.

use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_core::gateway::{plan_chat_request, RequestPlan};
use tollgate_core::providers::{
    ChunkOutput, CompletedBody, ResponseHandler, ResponseMode, TranslateContext,
};
use tollgate_core::usage::TokenCounts;
use tollgate_core::{proto, State, Usage};

pub mod eventstream;
pub mod seeds;

/// The clock every target runs with (the core reads none).
pub const CONTEXT: TranslateContext = TranslateContext {
    now_unix: 1_700_000_000,
};

/// The public model name of the fixed states.
pub const MODEL: &str = "fuzz-model";

/// The model name the deployment of the fixed states sends upstream.
pub const UPSTREAM_MODEL: &str = "upstream-model";

/// Provider statuses the buffered targets pick from with their first byte: successes, the
/// client and server errors providers send, and a few odd ones (Cohere's 402, 422, 498 and
/// 499 are last, so the indices before them keep their statuses).
pub const STATUSES: [u16; 21] = [
    200, 201, 204, 299, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 529, 599, 402, 422, 498,
    499, 504,
];

/// A deployment serving `model_name` with `kind`.
pub fn deployment(model_name: &str, kind: proto::ProviderKind) -> proto::Deployment {
    proto::Deployment {
        id: format!("id-{model_name}"),
        model_name: model_name.to_string(),
        provider: kind as i32,
        provider_name: format!("{kind:?}").to_ascii_lowercase(),
        upstream_model: UPSTREAM_MODEL.to_string(),
        api_base: "https://provider.example/v1".to_string(),
        api_key: "sk-fuzz".to_string(),
        default_max_tokens: 0,
        api_version: String::new(),
        pricing: None,
        limits: None,
        // Bedrock deployments are signed: the plan's signing step runs on every input.
        provider_settings: (kind == proto::ProviderKind::Bedrock).then(|| {
            proto::deployment::ProviderSettings::Bedrock(proto::BedrockSettings {
                region: "us-east-1".to_string(),
                credentials: Some(proto::AwsCredentials {
                    access_key_id: "AKIDFUZZ".to_string(),
                    secret_access_key: "fuzz-secret".to_string(),
                    session_token: String::new(),
                }),
            })
        }),
        default_params_json: String::new(),
        ..Default::default()
    }
}

/// A state with one deployment of `kind` serving `model_name`.
pub fn state_serving(model_name: &str, kind: proto::ProviderKind) -> State {
    let (state, problems) = State::from_snapshot(proto::Snapshot {
        version: 1,
        settings: None,
        deployments: vec![deployment(model_name, kind)],
        keys: Vec::new(),
    });
    assert!(problems.is_empty(), "{problems:?}");
    state
}

/// The plan of a streaming request to a `kind` deployment, after the provider answered 200
/// with an event stream. `include_usage` is the client's `stream_options.include_usage`.
pub fn streaming_plan(kind: proto::ProviderKind, include_usage: bool) -> RequestPlan {
    let state = state_serving(MODEL, kind);
    let request = serde_json::json!({
        "model": MODEL,
        "stream": true,
        "stream_options": {"include_usage": include_usage},
        "messages": [{"role": "user", "content": "hi"}],
    });
    let mut plan = plan_chat_request(&state, request.to_string().as_bytes(), &CONTEXT)
        .unwrap_or_else(|error| panic!("the fixed request is refused: {error}"));
    // Each translator streams only its own framing (Bedrock's is the AWS event stream,
    // Ollama's newline-delimited JSON).
    let content_type = match kind {
        proto::ProviderKind::Bedrock => "application/vnd.amazon.eventstream",
        proto::ProviderKind::Ollama => "application/x-ndjson",
        _ => "text/event-stream",
    };
    assert_eq!(
        plan.response.on_headers(200, Some(content_type)),
        ResponseMode::Stream
    );
    plan
}

/// Runs the stream of `input` through a fresh `kind` plan twice, whole and cut as the input
/// says, checks that the client gets the same bytes and the same usage is recorded, and
/// checks the usage's sums. Returns what the client got and the usage.
pub fn run_whole_and_cut(kind: proto::ProviderKind, input: &StreamInput<'_>) -> (Vec<u8>, Usage) {
    let mut whole_plan = streaming_plan(kind, input.include_usage);
    let whole = run_stream(&mut whole_plan.response, &[input.stream]);
    let mut cut_plan = streaming_plan(kind, input.include_usage);
    let cut = run_stream(&mut cut_plan.response, &input.chunks());
    assert!(
        whole == cut,
        "cut:\n{}\nwhole:\n{}",
        String::from_utf8_lossy(&cut),
        String::from_utf8_lossy(&whole)
    );
    let usage = whole_plan.response.usage();
    assert_eq!(cut_plan.response.usage(), usage);
    check_usage_sums(200, &usage);
    (whole, usage)
}

/// A buffered answer, as a body target reads it from its input and the gateway handled it.
pub struct Buffered<'a> {
    /// The provider's status, picked from [`STATUSES`] by the input's first byte.
    pub status: u16,
    /// The provider's body: the rest of the input.
    pub body: &'a [u8],
    /// The plan, after [`ResponseHandler::on_complete_body`].
    pub plan: RequestPlan,
    /// What that returned.
    pub completed: CompletedBody,
}

/// Runs the buffered answer of `data` through a fresh `kind` plan and checks the usage's
/// sums; `None` for an empty input.
pub fn run_buffered(kind: proto::ProviderKind, data: &[u8]) -> Option<Buffered<'_>> {
    let (&pick, body) = data.split_first()?;
    let status = STATUSES[usize::from(pick) % STATUSES.len()];
    let mut plan = buffered_plan(kind, status);
    let completed = plan.response.on_complete_body(body);
    check_usage_sums(status, &plan.response.usage());
    Some(Buffered {
        status,
        body,
        plan,
        completed,
    })
}

/// OpenAI's usage object, read apart from the core's reader, for the references.
#[derive(Deserialize)]
pub struct ReferenceUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<ReferenceDetails>,
    completion_tokens_details: Option<ReferenceCompletionDetails>,
}

#[derive(Deserialize)]
struct ReferenceDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ReferenceCompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl From<ReferenceUsage> for Usage {
    fn from(reported: ReferenceUsage) -> Self {
        Usage {
            prompt_tokens: reported.prompt_tokens,
            completion_tokens: reported.completion_tokens,
            cached_prompt_tokens: reported
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens),
            cache_creation_tokens: None,
            reasoning_tokens: reported
                .completion_tokens_details
                .and_then(|details| details.reasoning_tokens),
        }
    }
}

/// The plan of a buffered request to a `kind` deployment, after the provider answered
/// `status` with JSON.
pub fn buffered_plan(kind: proto::ProviderKind, status: u16) -> RequestPlan {
    let state = state_serving(MODEL, kind);
    let request = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let mut plan = plan_chat_request(&state, request.to_string().as_bytes(), &CONTEXT)
        .unwrap_or_else(|error| panic!("the fixed request is refused: {error}"));
    assert_eq!(
        plan.response.on_headers(status, Some("application/json")),
        ResponseMode::Buffer
    );
    plan
}

/// Input of the stream targets: one byte of options, one of chunking, then the stream.
#[derive(Debug)]
pub struct StreamInput<'a> {
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The stream's end comes as a separate empty chunk, as Envoy may deliver it.
    pub separate_end: bool,
    /// How the stream is cut (see [`chunks`]).
    pub chunking: u8,
    /// The provider's bytes.
    pub stream: &'a [u8],
}

impl<'a> StreamInput<'a> {
    /// Reads the input; `None` when it is too short to hold the two option bytes.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&options, rest) = data.split_first()?;
        let (&chunking, stream) = rest.split_first()?;
        Some(StreamInput {
            include_usage: options & 1 != 0,
            separate_end: options & 2 != 0,
            chunking,
            stream,
        })
    }

    /// The stream cut as the input says, with the empty end chunk when it asks for one.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut chunks = chunks(self.chunking, self.stream);
        if self.separate_end {
            chunks.push(&[]);
        }
        chunks
    }
}

/// Cuts `data` into chunks: one byte each for `seed` 0, else chunks of 0 to `4 * seed` bytes
/// drawn from a generator seeded by `seed` and the length, so the cut is a function of the
/// input and a crash replays. There is always one chunk at least (a stream has an end).
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if data.is_empty() {
        return vec![data];
    }
    if seed == 0 {
        return data.chunks(1).collect();
    }
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ (u64::from(seed) << 32) ^ data.len() as u64);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let size = (random.next() % (4 * u64::from(seed) + 1)) as usize;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Feeds `chunks` to the stream side of `handler` (the last chunk ends the stream) and
/// returns what the client gets: each chunk itself or its replacement.
pub fn run_stream(handler: &mut ResponseHandler, chunks: &[&[u8]]) -> Vec<u8> {
    let mut client = Vec::new();
    let mut out = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        out.clear();
        let end_of_stream = index + 1 == chunks.len();
        match handler.on_stream_chunk(chunk, end_of_stream, &mut out) {
            ChunkOutput::Unchanged => {
                assert!(out.is_empty(), "an unchanged chunk came with output");
                client.extend_from_slice(chunk);
            }
            ChunkOutput::Replaced => client.extend_from_slice(&out),
        }
    }
    client
}

/// The payloads of a stream the gateway wrote, which must be nothing but complete
/// `data: <payload>\n\n` events with one-line payloads.
pub fn data_events(stream: &[u8]) -> Vec<&str> {
    let text = std::str::from_utf8(stream)
        .unwrap_or_else(|error| panic!("the gateway wrote a stream that is not UTF-8: {error}"));
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "the stream ends inside an event: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "a multi-line event: {event:?}");
            payload
        })
        .collect()
}

/// The sums made of a response's usage: its total, and the stats' counters after this
/// response and one more like it. The provider chose the numbers: no sum may overflow.
pub fn check_usage_sums(status: u16, usage: &Usage) {
    if let Some(total) = usage.total_tokens() {
        assert!(total >= usage.prompt_tokens.unwrap_or(0));
    }
    let one = TokenCounts::of_response(status, usage);
    let mut counts = TokenCounts::default();
    counts.add(one);
    counts.add(one);
    assert!(counts.prompt >= one.prompt && counts.completion >= one.completion);
}

/// Parses `text` as one JSON object.
pub fn json_object(text: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(text) {
        Ok(Value::Object(object)) => object,
        Ok(other) => panic!("not a JSON object: {other}"),
        Err(error) => panic!("not JSON ({error}): {}", String::from_utf8_lossy(text)),
    }
}

/// Checks an OpenAI error body: `{"error": {"message": "<string>", ...}}`.
pub fn assert_openai_error(body: &[u8]) {
    let object = json_object(body);
    let message = object
        .get("error")
        .and_then(|error| error.get("message"))
        .and_then(Value::as_str);
    assert!(
        message.is_some(),
        "not an OpenAI error: {}",
        String::from_utf8_lossy(body)
    );
}
