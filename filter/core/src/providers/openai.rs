//! OpenAI and every OpenAI-compatible server (vLLM, Ollama's /v1, LM Studio, Groq ...).
//!
//! The request passes through with two surgical edits and no re-serialisation: the model
//! name becomes the deployment's, and streams get `stream_options.include_usage` forced on so
//! tokens are always counted. When the client did not ask for that usage chunk, the response
//! side removes it again; when it did and the deployment is priced, the chunk gets the
//! response's cost as `usage.cost` (a stream's headers leave before the cost is known).

use serde::Deserialize;

use crate::pricing::{cost_header_value, stream_cost, Prices};
use crate::providers::{
    openai_shaped_error, push_path_segment, ChunkOutput, ProviderResponse, UpstreamRequest,
};
use crate::request::{apply_edits, object_insert_point, ChatRequestSummary, Edit};
use crate::snapshot::Deployment;
use std::ops::Range;
use tollgate_catalogue::{Auth, ChatPath};

use crate::sse::SseParser;
use crate::{GatewayError, Usage};

/// Builds the upstream request.
pub fn build_request(
    summary: &ChatRequestSummary<'_>,
    body: &[u8],
    deployment: &Deployment,
) -> Result<UpstreamRequest, GatewayError> {
    let mut edits = Vec::with_capacity(2 + summary.routing.spans.len());
    // LiteLLM's routing parameters are the gateway's: a provider would refuse them.
    edits.extend(summary.routing.spans.iter().map(|span| Edit {
        range: span.clone(),
        bytes: Vec::new(),
    }));
    if summary.model != deployment.upstream_model {
        edits.push(Edit {
            range: summary.model_span.clone(),
            bytes: json_string(&deployment.upstream_model),
        });
    }
    if summary.stream && !summary.include_usage {
        match (&summary.stream_options_span, summary.stream_options) {
            (Some(span), Some(raw)) => {
                // An object, or `null` (no options).
                let mut options: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str::<Option<_>>(raw.get())
                        .map_err(|_| {
                            GatewayError::invalid(
                                "stream_options",
                                "stream_options must be an object",
                            )
                        })?
                        .unwrap_or_default();
                options.insert("include_usage".into(), serde_json::Value::Bool(true));
                edits.push(Edit {
                    range: span.clone(),
                    bytes: serde_json::to_vec(&options).map_err(|error| {
                        GatewayError::invalid("stream_options", error.to_string())
                    })?,
                });
            }
            _ => {
                let at = object_insert_point(body);
                edits.push(Edit {
                    range: at..at,
                    bytes: br#""stream_options":{"include_usage":true},"#.to_vec(),
                });
            }
        }
    }
    let body = if edits.is_empty() {
        body.to_vec()
    } else {
        apply_edits(body, &mut edits)
    };
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !deployment.api_key.is_empty() {
        headers.push(match deployment.spec.auth {
            Auth::Bearer => ("authorization", ["Bearer ", &deployment.api_key].concat()),
            Auth::Header(name) => (name, deployment.api_key.clone()),
        });
    }
    Ok(UpstreamRequest {
        path: chat_path(deployment),
        headers,
        body,
    })
}

/// Where the deployment serves chat completions, below its base path.
fn chat_path(deployment: &Deployment) -> String {
    match deployment.spec.chat_path {
        ChatPath::OpenAi => "/chat/completions".to_string(),
        ChatPath::AzureDeployment => {
            let mut path = String::with_capacity(64 + deployment.upstream_model.len());
            path.push_str("/openai/deployments/");
            push_path_segment(&mut path, &deployment.upstream_model);
            path.push_str("/chat/completions");
            if !deployment.api_version.is_empty() {
                path.push_str("?api-version=");
                push_path_segment(&mut path, &deployment.api_version);
            }
            path
        }
    }
}

fn json_string(value: &str) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// OpenAI's usage object.
#[derive(Debug, Deserialize)]
pub struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
    completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptTokensDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionTokensDetails {
    reasoning_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(usage: OpenAiUsage) -> Self {
        Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_prompt_tokens: usage
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens),
            // OpenAI does not report cache writes: they are priced as plain input.
            cache_creation_tokens: None,
            reasoning_tokens: usage
                .completion_tokens_details
                .and_then(|details| details.reasoning_tokens),
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    usage: Option<OpenAiUsage>,
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// The top-level `usage` of a buffered answer.
fn buffered_usage(body: &[u8]) -> Option<OpenAiUsage> {
    match top_level_usage_in_tail(body) {
        Some(found) => found,
        None => serde_json::from_slice::<UsageOnly>(body).ok()?.usage,
    }
}

/// OpenAI writes `usage` after `choices`, so the last `"usage"` key of the body is read
/// together with the members after it, instead of running the whole answer's text through
/// the parser. `None` when that key is absent, nested or not followed by a well-formed tail
/// of the top-level object: the caller then parses the whole body.
///
/// A `"usage"` whose opening quote is escaped is inside a string (a key or value such as
/// `"x\"usage"`), and is left to the full parse; a nested `usage` object fails the tail
/// check, since its parent object closes before the end.
fn top_level_usage_in_tail(body: &[u8]) -> Option<Option<OpenAiUsage>> {
    let key = memchr::memmem::rfind(body, b"\"usage\"")?;
    if is_escaped(body, key) {
        return None;
    }
    let value = body
        .get(key + b"\"usage\"".len()..)?
        .trim_ascii_start()
        .strip_prefix(b":")?;
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Option<OpenAiUsage>>();
    let usage = values.next()?.ok()?;
    let after = value.get(values.byte_offset()..)?;
    closes_object(after).then_some(usage)
}

/// Whether `after` (what follows a member's value) is the rest of the object: its closing
/// brace, or later members and the closing brace, and nothing else but whitespace.
fn closes_object(after: &[u8]) -> bool {
    let after = after.trim_ascii();
    if after == b"}" {
        return true;
    }
    // Later members: they and the closing brace must form the rest of one object.
    let Some(members) = after.strip_prefix(b",") else {
        return false;
    };
    let mut rest = Vec::with_capacity(members.len() + 1);
    rest.push(b'{');
    rest.extend_from_slice(members);
    serde_json::from_slice::<serde::de::IgnoredAny>(&rest).is_ok()
}

/// What follows a `"usage"` seen in the bytes of an event that has not ended yet.
#[derive(Debug, PartialEq, Eq)]
enum AfterUsage {
    /// `: null`: a chunk without usage (OpenAI's every chunk but the last).
    Null,
    /// Not `:`: a string value, not the key.
    NotAKey,
    /// Another value, or the bytes stop before it is known.
    MayBeUsage,
}

fn after_usage(rest: &[u8]) -> AfterUsage {
    let rest = rest.trim_ascii_start();
    let Some(value) = rest.strip_prefix(b":") else {
        return if rest.is_empty() {
            AfterUsage::MayBeUsage
        } else {
            AfterUsage::NotAKey
        };
    };
    let value = value.trim_ascii_start();
    if value.starts_with(b"null") {
        AfterUsage::Null
    } else {
        AfterUsage::MayBeUsage
    }
}

/// Where to start holding back the bytes of an event that has not ended yet (`open`, from
/// the event's start or from where the last chunk left it): at the first `"usage"` that may
/// be the key of a usage object, or at the end of the bytes if they stop inside something
/// that may become one (`"us`, a backslash that may escape the quote after it). Everything
/// before goes out now; the usage object, into which the cost goes once the event ends, is
/// never among it. A backslash run before the quote is held with it, so that whether the
/// quote is escaped can be told from the held bytes alone. `open.len()`: nothing to hold.
fn hold_point(open: &[u8]) -> usize {
    const KEY: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(found) = open
        .get(from..)
        .and_then(|rest| memchr::memmem::find(rest, KEY))
    {
        let at = from + found;
        match after_usage(open.get(at + KEY.len()..).unwrap_or_default()) {
            AfterUsage::MayBeUsage => return backslash_run_start(open, at),
            AfterUsage::Null | AfterUsage::NotAKey => from = at + KEY.len(),
        }
    }
    // The key may be cut by the end of the chunk: `"`, `"u` ... `"usage`.
    let cut = (1..KEY.len())
        .filter_map(|len| open.len().checked_sub(len))
        .find(|at| {
            let suffix = open.get(*at..).unwrap_or_default();
            KEY.starts_with(suffix)
        });
    backslash_run_start(open, cut.unwrap_or(open.len()))
}

/// `at`, moved back over the backslashes right before it.
fn backslash_run_start(data: &[u8], at: usize) -> usize {
    let run = data
        .get(..at)
        .unwrap_or_default()
        .iter()
        .rev()
        .take_while(|byte| **byte == b'\\')
        .count();
    at - run
}

/// Where the cost goes in the raw bytes of a usage chunk's event (from its start, or from
/// where the gateway started holding it back, to its end): the offset of the closing brace
/// of the top-level `usage` object, and whether that object is empty. The last `"usage"`
/// key of a line whose value is an object and whose rest closes the top-level object is
/// that one (as in [`top_level_usage_in_tail`]); keys inside strings have an escaped quote.
/// `None` when no such key is found (the usage object is spread over several `data:` lines,
/// or is not valid UTF-8): the chunk then goes out as it came, without a cost.
fn usage_close_brace(event: &[u8]) -> Option<(usize, bool)> {
    const KEY: &[u8] = b"\"usage\"";
    memchr::memmem::rfind_iter(event, KEY).find_map(|at| {
        if is_escaped(event, at) {
            return None;
        }
        let after_key = at + KEY.len();
        let line_end = event
            .get(after_key..)
            .and_then(|rest| memchr::memchr2(b'\n', b'\r', rest))
            .map_or(event.len(), |found| after_key + found);
        let rest = event.get(after_key..line_end)?;
        let colon = after_key + (rest.len() - rest.trim_ascii_start().len());
        if event.get(colon) != Some(&b':') {
            return None;
        }
        let rest = event.get(colon + 1..line_end)?;
        let open = colon + 1 + (rest.len() - rest.trim_ascii_start().len());
        let value = event.get(open..line_end)?;
        if value.first() != Some(&b'{') {
            return None;
        }
        let mut values =
            serde_json::Deserializer::from_slice(value).into_iter::<serde::de::IgnoredAny>();
        values.next()?.ok()?;
        let length = values.byte_offset();
        if !closes_object(value.get(length..)?) {
            return None;
        }
        let inside = value.get(1..length.checked_sub(1)?)?;
        Some((open + length - 1, inside.trim_ascii().is_empty()))
    })
}

/// Writes the cost member into the usage object of the event at `event` in `out`.
fn insert_cost(out: &mut Vec<u8>, event: Range<usize>, cost: f64) {
    let Some((brace, empty)) = out.get(event.clone()).and_then(usage_close_brace) else {
        return;
    };
    let mut member = Vec::with_capacity(32);
    if !empty {
        member.push(b',');
    }
    member.extend_from_slice(b"\"cost\":");
    member.extend_from_slice(cost_header_value(cost).as_bytes());
    let at = event.start + brace;
    if at < out.len() {
        out.splice(at..at, member);
    }
}

/// Whether a stream chunk may report usage: it has a `"usage"` key whose value is not
/// `null` (OpenAI sends `"usage":null` on every chunk when include_usage is on).
fn may_carry_usage(data: &[u8]) -> bool {
    // With include_usage on, OpenAI ends every chunk but the last with `"usage":null}`: the
    // object's last member, so the top-level one, and no search is needed.
    let trimmed = data.trim_ascii_end();
    if let Some(head) = trimmed.strip_suffix(br#""usage":null}"#) {
        if !is_escaped(trimmed, head.len()) {
            return false;
        }
    }
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        if is_escaped(data, at) {
            // Inside a string: not a key.
            return false;
        }
        let rest = data.get(at + 7..).unwrap_or_default().trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            return true;
        };
        !rest.trim_ascii_start().starts_with(b"null")
    })
}

/// Whether the byte at `at` is escaped: preceded by an odd number of backslashes, so a quote
/// there is inside a string rather than its start.
fn is_escaped(data: &[u8], at: usize) -> bool {
    let backslashes = data
        .get(..at)
        .unwrap_or_default()
        .iter()
        .rev()
        .take_while(|byte| **byte == b'\\')
        .count();
    backslashes % 2 == 1
}

/// Response side of an OpenAI-compatible request.
///
/// Streams are forwarded byte for byte. When the gateway forced `include_usage` on, the
/// usage-only chunk must not reach the client, so the bytes of an event are held back until
/// the event has ended and it is known not to be that chunk. When the client asked for the
/// usage chunk and the deployment is priced, a chunk with a usage object gets `"cost"` in
/// it: only the bytes from a `"usage"` key on are held back until their event ends, so the
/// other chunks go out as they come.
#[derive(Debug)]
pub struct OpenAiResponse {
    /// The gateway forced include_usage; the usage-only chunk must not reach the client.
    strip_usage_chunk: bool,
    /// The deployment's prices, when the client gets the usage chunk (it then carries the
    /// cost).
    cost_prices: Option<Prices>,
    parser: SseParser,
    /// Bytes of an event that has not ended yet (when stripping: from its start; when
    /// pricing: from where it may carry a usage object).
    held: Vec<u8>,
    /// Ranges of the current chunk that belong to the usage-only chunk (only when stripping);
    /// a field so its capacity is reused from chunk to chunk.
    stripped: Vec<Range<usize>>,
    /// Events ending in the current chunk whose usage object gets a cost (only when
    /// pricing): where they start in the chunk (`None`: in an earlier one), where they end,
    /// and the cost.
    priced: Vec<(Option<usize>, usize, f64)>,
}

impl OpenAiResponse {
    /// Response side for a request sent with `stream` and the client's `include_usage`, to a
    /// deployment with these `prices`.
    pub fn new(stream: bool, client_include_usage: bool, prices: Option<Prices>) -> Self {
        OpenAiResponse {
            strip_usage_chunk: stream && !client_include_usage,
            cost_prices: prices.filter(|_| stream && client_include_usage),
            parser: SseParser::default(),
            held: Vec::new(),
            stripped: Vec::new(),
            priced: Vec::new(),
        }
    }

    /// The end of [`ProviderResponse::translate_stream`] when the usage chunk gets the cost:
    /// the events of `chunk` have been read (and `self.priced` says which get a cost).
    fn write_priced(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> ChunkOutput {
        let ended = self.parser.last_event_end();
        // Bytes from here on belong to an event still open, and may be held back.
        let open = ended.unwrap_or(0);
        if ended.is_none() && !self.held.is_empty() && !end_of_stream {
            // The held event goes on.
            self.held.extend_from_slice(chunk);
            return ChunkOutput::Replaced;
        }
        let hold_from = if end_of_stream {
            // A stream that ends inside an event still delivers that event's bytes.
            chunk.len()
        } else {
            open + hold_point(chunk.get(open..).unwrap_or_default())
        };
        if self.priced.is_empty() && self.held.is_empty() && hold_from == chunk.len() {
            return ChunkOutput::Unchanged;
        }
        let base = self.held.len();
        out.append(&mut self.held);
        out.extend_from_slice(chunk.get(..hold_from).unwrap_or_default());
        // From the last, so that an insertion moves no event still to be written into.
        for (start, end, cost) in self.priced.iter().rev() {
            // An event that started in an earlier chunk begins at what was held of it (or,
            // when nothing was, its rest is at the start of this chunk).
            let from = start.map_or(0, |start| base + start);
            insert_cost(out, from..base + end, *cost);
        }
        self.held
            .extend_from_slice(chunk.get(hold_from..).unwrap_or_default());
        ChunkOutput::Replaced
    }
}

impl ProviderResponse for OpenAiResponse {
    fn rewrites_body(&self) -> bool {
        false
    }

    fn translate_body(
        &mut self,
        body: &[u8],
        usage: &mut Usage,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        // A compatible server's odd body still reaches the client; only the count is lost.
        if let Some(reported) = buffered_usage(body) {
            usage.merge(reported.into());
        }
        Ok(None)
    }

    fn translate_error(&self, status: u16, body: &[u8]) -> Vec<u8> {
        openai_shaped_error(status, body)
    }

    fn translate_stream(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
        usage: &mut Usage,
    ) -> Result<ChunkOutput, GatewayError> {
        let strip = self.strip_usage_chunk;
        let prices = self.cost_prices;
        let held_before = !self.held.is_empty();
        // Whether the held bytes (the start of an event from earlier chunks) are the start of
        // the usage-only chunk, and so go with it.
        let mut held_stripped = false;
        self.stripped.clear();
        self.priced.clear();
        let stripped = &mut self.stripped;
        let priced = &mut self.priced;
        self.parser.feed(chunk, |event| {
            let mut usage_only_chunk = false;
            // Most chunks carry no usage (or `"usage":null`); skip the parse for them.
            if may_carry_usage(event.data.as_bytes()) {
                if let Ok(parsed) = serde_json::from_str::<ChunkUsage>(event.data) {
                    if let Some(reported) = parsed.usage {
                        usage.merge(reported.into());
                        usage_only_chunk = parsed.choices.is_some_and(|choices| choices.is_empty());
                        if let Some(cost) = stream_cost(prices.as_ref(), usage) {
                            priced.push((event.start, event.end, cost));
                        }
                    }
                }
            }
            if strip && usage_only_chunk {
                held_stripped |= event.start.is_none() && held_before;
                stripped.push(event.start.unwrap_or(0)..event.end);
            }
            Ok::<(), GatewayError>(())
        })?;
        if prices.is_some() {
            return Ok(self.write_priced(chunk, end_of_stream, out));
        }
        if !strip {
            return Ok(ChunkOutput::Unchanged);
        }
        // Every event that ends in this chunk (comment-only ones too) ends before this offset;
        // what follows belongs to an event still open.
        let ended = self.parser.last_event_end();
        let event_start = ended.unwrap_or(0);
        let ends_on_event = event_start == chunk.len() || end_of_stream;
        if self.stripped.is_empty() && !held_before && ends_on_event {
            return Ok(ChunkOutput::Unchanged);
        }
        if ended.is_none() && !end_of_stream {
            self.held.extend_from_slice(chunk);
            return Ok(ChunkOutput::Replaced);
        }
        if !held_stripped {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
        let mut from = 0;
        for range in &self.stripped {
            out.extend_from_slice(chunk.get(from..range.start).unwrap_or_default());
            from = range.end;
        }
        // A stream that ends inside an event still delivers that event's bytes.
        let until = if end_of_stream {
            chunk.len()
        } else {
            event_start
        };
        out.extend_from_slice(chunk.get(from..until).unwrap_or_default());
        self.held
            .extend_from_slice(chunk.get(until..).unwrap_or_default());
        Ok(ChunkOutput::Replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        buffered_usage, hold_point, may_carry_usage, top_level_usage_in_tail, usage_close_brace,
        OpenAiResponse,
    };
    use crate::pricing::Prices;
    use crate::providers::{ChunkOutput, ProviderResponse};
    use crate::Usage;

    /// $1e-6 per input token, $2e-6 per output token.
    const PRICES: Prices = Prices {
        input: Some(1e-6),
        output: Some(2e-6),
        cache_read: None,
        cache_creation: None,
        reasoning: None,
    };

    /// Feeds `chunks` to a priced response whose client asked for usage; gives what the
    /// client gets and what each chunk became.
    fn priced(chunks: &[&[u8]]) -> (String, Vec<ChunkOutput>, Usage) {
        let mut response = OpenAiResponse::new(true, true, Some(PRICES));
        let mut usage = Usage::default();
        let mut client = Vec::new();
        let mut outputs = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            let mut out = Vec::new();
            let output = response
                .translate_stream(chunk, index + 1 == chunks.len(), &mut out, &mut usage)
                .unwrap();
            match output {
                ChunkOutput::Unchanged => client.extend_from_slice(chunk),
                ChunkOutput::Replaced => client.extend_from_slice(&out),
            }
            outputs.push(output);
        }
        (String::from_utf8(client).unwrap(), outputs, usage)
    }

    /// 1000 input and 50 output tokens: 0.0011 dollars.
    const USAGE: &str = r#""usage":{"prompt_tokens":1000,"completion_tokens":50}"#;

    #[test]
    fn the_usage_chunk_gets_the_cost_inside_its_usage_object() {
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
        let last = format!("data: {{\"choices\":[],{USAGE}}}\n\ndata: [DONE]\n\n");
        let (client, outputs, usage) = priced(&[content.as_bytes(), last.as_bytes()]);
        assert_eq!(
            client,
            format!(
                "{content}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1000,\"completion_tokens\":50,\"cost\":0.0011}}}}\n\ndata: [DONE]\n\n"
            )
        );
        // The content chunk went through as it came; only the usage chunk was rewritten.
        assert_eq!(outputs, [ChunkOutput::Unchanged, ChunkOutput::Replaced]);
        assert_eq!(usage.prompt_tokens, Some(1000));
        // Members after the usage object stay where they were, and so does the rest.
        let (client, _, _) =
            priced(&[
                format!("data: {{\"choices\":[],{USAGE},\"obfuscation\":\"}}\"}}\r\n\r\n")
                    .as_bytes(),
            ]);
        assert_eq!(
            client,
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":50,\"cost\":0.0011},\"obfuscation\":\"}\"}\r\n\r\n"
        );
    }

    #[test]
    fn a_usage_key_inside_a_string_is_not_the_usage_object() {
        // "usage" as a string value, a key ending in an escaped `"usage"`, and quoted text
        // that looks like the key: the cost goes into the top-level usage only.
        let chunk = format!(
            "data: {{\"choices\":[],\"note\":\"usage\",{USAGE},\"x\\\"usage\":{{\"prompt_tokens\":9}},\"t\":\"\\\"usage\\\":{{}}\"}}\n\n"
        );
        let (client, _, usage) = priced(&[chunk.as_bytes()]);
        assert_eq!(
            client,
            "data: {\"choices\":[],\"note\":\"usage\",\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":50,\"cost\":0.0011},\"x\\\"usage\":{\"prompt_tokens\":9},\"t\":\"\\\"usage\\\":{}\"}\n\n"
        );
        assert_eq!(usage.prompt_tokens, Some(1000));
        let value: serde_json::Value =
            serde_json::from_str(client.trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(value["usage"]["cost"], 0.0011);
        assert_eq!(value["x\"usage"]["prompt_tokens"], 9);
    }

    #[test]
    fn whitespace_around_the_usage_object_is_kept() {
        let chunk = "data: { \"choices\" : [ ] , \"usage\" :\t{ \"prompt_tokens\" : 1000 ,\"completion_tokens\":50 } }\n\n";
        let (client, _, _) = priced(&[chunk.as_bytes()]);
        assert_eq!(
            client,
            "data: { \"choices\" : [ ] , \"usage\" :\t{ \"prompt_tokens\" : 1000 ,\"completion_tokens\":50 ,\"cost\":0.0011} }\n\n"
        );
        // An empty object gets the member without a comma (and here, nothing was reported,
        // so there is no cost to give).
        assert_eq!(
            usage_close_brace(b"data: {\"usage\": { } }\n\n"),
            Some((18, true))
        );
        let (client, _, _) = priced(&[b"data: {\"choices\":[],\"usage\":{ }}\n\n"]);
        assert_eq!(client, "data: {\"choices\":[],\"usage\":{ }}\n\n");
    }

    #[test]
    fn only_the_bytes_from_a_usage_key_on_are_held_back() {
        // A chunk cut inside an event with no usage in sight: out at once, untouched.
        let (client, outputs, _) = priced(&[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel",
            b"lo\"}}],\"usage\":null",
            b"}\n\ndata: {\"choices\":[],",
            b"\"usage\":{\"prompt_tokens\":1000,\"completion",
            b"_tokens\":50}}\n",
            b"\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            outputs,
            [
                ChunkOutput::Unchanged,
                ChunkOutput::Unchanged,
                ChunkOutput::Unchanged,
                ChunkOutput::Replaced,
                ChunkOutput::Replaced,
                ChunkOutput::Replaced,
            ]
        );
        assert_eq!(
            client,
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":50,\"cost\":0.0011}}\n\ndata: [DONE]\n\n"
        );
        // Where holding starts in the bytes of an open event.
        assert_eq!(hold_point(b"data: {\"a\":1"), 12);
        // `"usage":null` is passed over; a closing quote at the end may open `"usage"`.
        assert_eq!(hold_point(b"data: {\"a\":1,\"usage\":null,\"b\""), 28);
        assert_eq!(hold_point(b"data: {\"a\":\"usage\",\"b\""), 21);
        assert_eq!(hold_point(b"data: {\"usage\":{"), 7);
        assert_eq!(hold_point(b"data: {\"usage\" "), 7);
        assert_eq!(hold_point(b"data: {\"usage\":nu"), 7);
        assert_eq!(hold_point(b"data: {\"a\":1,\"usa"), 13);
        // Backslashes are held with what follows them.
        assert_eq!(hold_point(b"data: {\"a\":\"x\\\\"), 13);
        assert_eq!(hold_point(b"data: {\"a\":\"x\\\\\\\"usage\":{"), 13);
    }

    #[test]
    fn an_unpriced_or_unreported_stream_passes_untouched() {
        let stream: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut unpriced = OpenAiResponse::new(true, true, None);
        let mut usage = Usage::default();
        let mut out = Vec::new();
        assert_eq!(
            unpriced
                .translate_stream(stream, true, &mut out, &mut usage)
                .unwrap(),
            ChunkOutput::Unchanged
        );
        // Priced, but the tokens of an unpriced kind were used: unknown, not 0.
        let input_only = Prices {
            output: None,
            ..PRICES
        };
        let mut response = OpenAiResponse::new(true, true, Some(input_only));
        assert_eq!(
            response
                .translate_stream(stream, true, &mut out, &mut usage)
                .unwrap(),
            ChunkOutput::Unchanged
        );
        // A usage object spread over two data lines: counted, sent as it came, no cost.
        let (client, _, usage) = priced(&[
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\ndata: \"completion_tokens\":50}}\n\n",
        ]);
        assert_eq!(
            client,
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\ndata: \"completion_tokens\":50}}\n\n"
        );
        assert_eq!(usage.completion_tokens, Some(50));
    }

    #[test]
    fn a_priced_stream_cut_anywhere_gives_the_same_bytes() {
        let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\\\\\"usage\\\"\"}}],\"usage\":null}\r\n\r\n: c\n\ndata: {\"choices\":[],\"usage\" : {\"prompt_tokens\":1000,\"completion_tokens\":50},\"z\":\"\\\\\"}\n\ndata: [DONE]\n\n";
        let (whole, _, _) = priced(&[stream]);
        assert!(
            whole.contains(r#""completion_tokens":50,"cost":0.0011},"z""#),
            "{whole}"
        );
        for first in 0..=stream.len() {
            for second in first..=stream.len() {
                let chunks = [&stream[..first], &stream[first..second], &stream[second..]];
                let (client, _, usage) = priced(&chunks);
                assert_eq!(client, whole, "cut at {first} and {second}");
                assert_eq!(usage.completion_tokens, Some(50));
            }
        }
    }

    #[test]
    fn a_tiny_cost_is_written_in_plain_decimal() {
        let chunk =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":0}}\n\n";
        let mut response = OpenAiResponse::new(
            true,
            true,
            Some(Prices {
                input: Some(1e-8),
                ..PRICES
            }),
        );
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(chunk, false, &mut out, &mut usage)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":0,\"cost\":0.00000001}}\n\n"
        );
    }

    #[test]
    fn a_stripped_usage_chunk_gets_no_cost() {
        // The gateway forced include_usage on: the chunk goes, priced or not.
        let mut response = OpenAiResponse::new(true, false, Some(PRICES));
        let (mut out, mut usage) = (Vec::new(), Usage::default());
        response
            .translate_stream(
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":50}}\n\ndata: [DONE]\n\n",
                true,
                &mut out,
                &mut usage,
            )
            .unwrap();
        assert_eq!(out, b"data: [DONE]\n\n");
        assert_eq!(usage.prompt_tokens, Some(1000));
    }

    #[test]
    fn held_bytes_go_out_when_their_event_ends_or_the_stream_does() {
        let mut response = OpenAiResponse::new(true, false, None);
        let mut usage = Usage::default();
        let mut out = Vec::new();
        let mut feed = |chunk: &[u8], end: bool, out: &mut Vec<u8>| {
            out.clear();
            response
                .translate_stream(chunk, end, out, &mut usage)
                .unwrap()
        };
        // A whole event: forwarded untouched.
        assert_eq!(
            feed(b"data: {\"choices\":[{}]}\n\n", false, &mut out),
            ChunkOutput::Unchanged
        );
        // An event and the start of the next: the start is held.
        assert_eq!(
            feed(b"data: {\"choices\":[{}]}\n\ndata: {\"cho", false, &mut out),
            ChunkOutput::Replaced
        );
        assert_eq!(out, b"data: {\"choices\":[{}]}\n\n");
        // No event ends here: everything is held.
        assert_eq!(feed(b"ices\":", false, &mut out), ChunkOutput::Replaced);
        assert!(out.is_empty());
        // The held event turns out to be the usage chunk: dropped, the rest goes on.
        assert_eq!(
            feed(
                b"[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\ndata: {",
                false,
                &mut out
            ),
            ChunkOutput::Replaced
        );
        assert_eq!(out, b"data: [DONE]\n\n");
        // The stream is cut inside an event: its bytes still reach the client.
        assert_eq!(feed(b"\"x\":1", true, &mut out), ChunkOutput::Replaced);
        assert_eq!(out, b"data: {\"x\":1");
        assert_eq!(usage.prompt_tokens, Some(3));
    }

    #[test]
    fn comment_only_events_are_forwarded_not_held() {
        let mut response = OpenAiResponse::new(true, false, None);
        let mut usage = Usage::default();
        let mut out = Vec::new();
        // Keep-alive comments in chunks that each end inside the next comment: what ended goes
        // out at once, only the open comment is held, however long the stream idles.
        assert_eq!(
            response
                .translate_stream(b": ping\n\n: pi", false, &mut out, &mut usage)
                .unwrap(),
            ChunkOutput::Replaced
        );
        assert_eq!(out, b": ping\n\n");
        for _ in 0..10_000 {
            out.clear();
            response
                .translate_stream(b"ng\n\n: pi", false, &mut out, &mut usage)
                .unwrap();
            assert_eq!(out, b": ping\n\n");
            assert_eq!(response.held, b": pi");
        }
        // The usage chunk after a comment in the same chunk: only the usage chunk goes.
        out.clear();
        response
            .translate_stream(
                b"ng\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2}}\n\n",
                false,
                &mut out,
                &mut usage,
            )
            .unwrap();
        assert_eq!(out, b": ping\n\n");
        assert_eq!(usage.prompt_tokens, Some(2));
    }

    fn prompt_tokens(body: &str) -> Option<u64> {
        buffered_usage(body.as_bytes()).and_then(|usage| usage.prompt_tokens)
    }

    #[test]
    fn buffered_usage_is_read_from_the_tail() {
        let openai = r#"{"id":"c","choices":[{"message":{"content":"the \"usage\":{} text"}}],"usage":{"prompt_tokens":7,"completion_tokens":2},"service_tier":"default","system_fingerprint":"fp"}"#;
        assert_eq!(prompt_tokens(openai), Some(7));
        assert!(top_level_usage_in_tail(openai.as_bytes()).is_some());
        let last = r#"{"choices":[],"usage" : {"prompt_tokens":3} }  "#;
        assert_eq!(prompt_tokens(last), Some(3));
        assert!(top_level_usage_in_tail(last.as_bytes()).is_some());
    }

    #[test]
    fn a_nested_or_odd_usage_falls_back_to_the_whole_body() {
        // The last "usage" key is nested: the tail check refuses it, the full parse finds the
        // top-level one.
        let nested = r#"{"usage":{"prompt_tokens":5},"choices":[],"x_extra":{"usage":{"prompt_tokens":99}}}"#;
        assert!(top_level_usage_in_tail(nested.as_bytes()).is_none());
        assert_eq!(prompt_tokens(nested), Some(5));
        // "usage" as a string value, not a key.
        let value = r#"{"usage":{"prompt_tokens":4},"note":"usage"}"#;
        assert!(top_level_usage_in_tail(value.as_bytes()).is_none());
        assert_eq!(prompt_tokens(value), Some(4));
        // A broken tail is not trusted, and the broken body counts nothing.
        assert_eq!(prompt_tokens(r#"{"usage":{"prompt_tokens":4},"a":}"#), None);
        assert_eq!(
            prompt_tokens(r#"{"usage":{"prompt_tokens":4}} trailing"#),
            None
        );
        assert_eq!(prompt_tokens(r#"{"usage":null}"#), None);
        assert_eq!(prompt_tokens(r#"{"choices":[]}"#), None);
    }

    /// Checked by the `openai_body` and `openai_stream` fuzz targets: a key
    /// ending in an escaped quote and `usage` (`"x\"usage"`) matched the search for the
    /// `"usage"` key, so its value was taken for the usage, or its `null` hid the real one.
    #[test]
    fn a_key_ending_in_an_escaped_usage_is_not_the_usage() {
        let body = r#"{"usage":{"prompt_tokens":1},"x\"usage":{"prompt_tokens":9}}"#;
        assert_eq!(prompt_tokens(body), Some(1));
        let chunk = br#"{"choices":[],"usage":{"prompt_tokens":1},"a\"usage":null}"#;
        assert!(may_carry_usage(chunk));
        // An escaped backslash before the quote leaves the quote unescaped.
        assert!(!may_carry_usage(br#"{"choices":[],"a\\":1,"usage":null}"#));
    }

    #[test]
    fn usage_null_chunks_skip_the_parse() {
        assert!(!may_carry_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!may_carry_usage(br#"{"choices":[], "usage" : null }"#));
        assert!(!may_carry_usage(br#"{"choices":[]}"#));
        assert!(may_carry_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        // Text that mentions "usage" and a real usage object later.
        assert!(may_carry_usage(
            br#"{"choices":[{"delta":{"content":"\"usage\":null"}}],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(may_carry_usage(br#"{"usage""#));
    }
}
