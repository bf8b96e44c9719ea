//! Safe wrappers over the callbacks into Envoy: every `unsafe` call of the module is here,
//! each relying on what the ABI promises (see `abi.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::c_void;
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_core::exchange::Host;
use tollgate_core::gateway::ROUTE_HEADER;
use tollgate_core::ratelimit::{Admission, Need, RateHeaders};
use tollgate_core::usage::TokenCounts;
use tollgate_core::{metrics, proto, RequestPlan};

use crate::abi::{
    self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, ModuleBuffer,
};

fn log(level: u32, message: &str) {
    // SAFETY: a plain function of Envoy's; the message is copied during the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::new(message.as_bytes())) }
}

/// Logs at info level, to Envoy's `dynamic_modules` logger.
pub fn log_info(message: &str) {
    log(abi::LOG_INFO, message);
}

/// Logs at warning level.
pub fn log_warn(message: &str) {
    log(abi::LOG_WARN, message);
}

/// Logs at error level.
pub fn log_error(message: &str) {
    log(abi::LOG_ERROR, message);
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Envoy's side of one request, valid from `on_http_filter_new` to `on_http_filter_destroy`
/// (Envoy's promise); the hooks hand it over on every call.
/// The flag: whether the hook is a body hook (it has a part of the body it received, empty
/// on an end-of-stream call without data).
#[derive(Clone, Copy)]
pub struct Filter(FilterEnvoyPtr, bool);

impl Filter {
    /// Wraps the pointer a hook other than a body hook received.
    pub fn new(pointer: FilterEnvoyPtr) -> Self {
        Filter(pointer, false)
    }

    /// Wraps the pointer a body hook received.
    pub fn in_body_hook(pointer: FilterEnvoyPtr) -> Self {
        Filter(pointer, true)
    }

    /// Every header of a map (`abi::REQUEST_HEADERS` or `abi::RESPONSE_HEADERS`), as Envoy's
    /// own bytes: valid until this hook returns or a header of the map is changed.
    pub fn headers(self, map: u32) -> Vec<EnvoyHttpHeader> {
        // SAFETY: `self.0` is live during the hook; Envoy writes as many entries as it counted.
        unsafe {
            envoy_array(
                EnvoyHttpHeader::NULL,
                abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, map),
                |headers| abi::envoy_dynamic_module_callback_http_get_headers(self.0, map, headers),
            )
        }
    }

    /// The first value of a header, if present and UTF-8.
    pub fn header(&self, map: u32, name: &str) -> Option<&str> {
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: `self.0` is live during the hook; `value` is a valid out-pointer and the
        // size pointer may be null. The bytes stay Envoy's until a setter is called, which
        // takes `&mut self` while the returned `&str` borrows `self`.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.0,
                map,
                ModuleBuffer::new(name.as_bytes()),
                &mut value,
                0,
                std::ptr::null_mut(),
            )
        };
        if !found {
            return None;
        }
        // SAFETY: see above.
        std::str::from_utf8(unsafe { value.bytes() }).ok()
    }

    /// Removes every value of a header named by bytes (a client's header name need not be
    /// UTF-8).
    pub fn remove_header(&mut self, map: u32, name: &[u8]) {
        // SAFETY: `self.0` is live; Envoy copies the name.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                map,
                ModuleBuffer::new(name),
                ModuleBuffer::NULL,
            );
        }
    }

    /// The names of the request headers that must not reach the provider `plan` sends to
    /// ([`RequestPlan::drops_client_header`]), copied out of Envoy's map (a removal may move
    /// its bytes), each once.
    fn client_headers_to_drop(&self, plan: &RequestPlan) -> Vec<Vec<u8>> {
        let mut dropped: Vec<Vec<u8>> = Vec::new();
        for header in self.headers(abi::REQUEST_HEADERS) {
            // SAFETY: the map was read in this hook and nothing has changed it since.
            let name = unsafe { header.key.bytes() };
            if plan.drops_client_header(name) && !dropped.iter().any(|seen| seen == name) {
                dropped.push(name.to_vec());
            }
        }
        dropped
    }

    /// Sets a header (replacing every value), or removes it when `value` is `None`.
    pub fn set_header(&mut self, map: u32, name: &str, value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::NULL, |value| {
            ModuleBuffer::new(value.as_bytes())
        });
        // SAFETY: `self.0` is live; Envoy copies both buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                map,
                ModuleBuffer::new(name.as_bytes()),
                value,
            );
        }
    }

    /// Makes Envoy choose the route again, from the headers as they are now.
    fn clear_route_cache(&mut self) {
        // SAFETY: `self.0` is live.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// The whole body of `direction` so far: Envoy's buffered part, then the current hook's
    /// part (unless the two are the same buffer). One chunk is borrowed; several are joined.
    /// A streamed response is never buffered, so for it this is the current chunk.
    fn body(&mut self, direction: Direction) -> Cow<'_, [u8]> {
        let mut chunks = self.body_chunks(direction.buffered());
        if !self.received_is_buffered(direction) {
            chunks.extend(self.body_chunks(direction.received()));
        }
        // SAFETY: the chunks are Envoy's until this hook returns or a body setter is called;
        // the setters take `&mut self`, which the returned value borrows.
        let mut slices = chunks
            .iter()
            .map(|chunk| unsafe { chunk.bytes() })
            .filter(|bytes| !bytes.is_empty());
        match (slices.next(), slices.next()) {
            (None, _) => Cow::Borrowed(&[]),
            (Some(only), None) => Cow::Borrowed(only),
            (Some(first), Some(second)) => {
                let mut joined = Vec::with_capacity(first.len() + second.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(second);
                for rest in slices {
                    joined.extend_from_slice(rest);
                }
                Cow::Owned(joined)
            }
        }
    }

    fn body_chunks(&self, body: u32) -> Vec<EnvoyBuffer> {
        // SAFETY: `self.0` is live; Envoy writes as many chunks as it counted.
        unsafe {
            envoy_array(
                EnvoyBuffer::NULL,
                abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body),
                |chunks| {
                    abi::envoy_dynamic_module_callback_http_get_body_chunks(self.0, body, chunks)
                },
            )
        }
    }

    fn buffer_size(&self, body: u32) -> usize {
        // SAFETY: `self.0` is live.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.0, body) }
    }

    /// Replaces the whole body of `direction` so far with `new_body`: both parts are drained
    /// and the new bytes go into the current hook's part, which Envoy passes on (after the
    /// buffered part, now empty).
    fn replace_body(&mut self, direction: Direction, new_body: &[u8]) {
        let (buffered, received) = (direction.buffered(), direction.received());
        let received_is_buffered = self.received_is_buffered(direction);
        // SAFETY: `self.0` is live; Envoy copies `new_body`.
        unsafe {
            let buffered_size = self.buffer_size(buffered);
            abi::envoy_dynamic_module_callback_http_drain_body(self.0, buffered, buffered_size);
            // Outside a body hook (a request resumed from its scheduled hook) there is no
            // received data: the whole body is Envoy's buffered one, and goes back there. In
            // a body hook the new bytes go into the received part, even an empty one (an
            // end-of-stream call without data): Envoy does not pass on bytes appended to the
            // buffered part of a body it streams, so a stream's last words would be lost.
            let target = if received_is_buffered || !self.1 {
                buffered
            } else {
                let received_size = self.buffer_size(received);
                abi::envoy_dynamic_module_callback_http_drain_body(self.0, received, received_size);
                received
            };
            abi::envoy_dynamic_module_callback_http_append_body(
                self.0,
                target,
                ModuleBuffer::new(new_body),
            );
        }
    }

    /// Whether the current body hook's data is Envoy's buffered body itself.
    fn received_is_buffered(&self, direction: Direction) -> bool {
        // SAFETY: `self.0` is live.
        unsafe {
            match direction {
                Direction::Request => {
                    abi::envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
                }
                Direction::Response => {
                    abi::envoy_dynamic_module_callback_http_received_buffered_response_body(self.0)
                }
            }
        }
    }

    /// Size of the body of `direction` so far (buffered and current part).
    pub fn body_size(&self, direction: Direction) -> usize {
        let buffered = self.buffer_size(direction.buffered());
        if self.received_is_buffered(direction) {
            buffered
        } else {
            buffered + self.buffer_size(direction.received())
        }
    }
}

/// Which body a hook is about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client's request.
    Request,
    /// The upstream's response.
    Response,
}

impl Direction {
    /// Envoy's buffered body of this direction.
    fn buffered(self) -> u32 {
        match self {
            Direction::Request => abi::BUFFERED_REQUEST_BODY,
            Direction::Response => abi::BUFFERED_RESPONSE_BODY,
        }
    }

    /// The current body hook's data of this direction.
    fn received(self) -> u32 {
        match self {
            Direction::Request => abi::RECEIVED_REQUEST_BODY,
            Direction::Response => abi::RECEIVED_RESPONSE_BODY,
        }
    }
}

/// An array Envoy fills: `count` entries (Envoy's own count), written by `fill`; empty when
/// `fill` fails.
///
/// # Safety
/// `fill` must write at most `count` entries through the pointer it gets.
unsafe fn envoy_array<T: Copy>(
    empty: T,
    count: usize,
    fill: impl FnOnce(*mut T) -> bool,
) -> Vec<T> {
    let mut entries = vec![empty; count];
    if count == 0 || !fill(entries.as_mut_ptr()) {
        entries.clear();
    }
    entries
}

/// [`Host`] for the native module, for one hook call.
pub struct NativeHost<'s> {
    filter: Filter,
    /// Where budgets and rate limits are checked: the module's spend and quota books (only
    /// the request body and scheduled hooks check them).
    spend: Option<&'s dyn SpendSource>,
}

/// What a scope has spent in its budget window, and the rate-limit leases, as the module
/// knows them.
pub trait SpendSource {
    /// See [`Host::spend`].
    fn spend(&self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64;
    /// See [`Host::admit`].
    fn admit(&self, needs: &[Need], now_ms: u64) -> Admission;
}

impl NativeHost<'static> {
    /// The host of one hook call that checks no budget.
    pub fn new(filter: Filter) -> Self {
        NativeHost {
            filter,
            spend: None,
        }
    }
}

impl<'s> NativeHost<'s> {
    /// The host of one hook call that may check budgets against `spend`.
    pub fn with_spend(filter: Filter, spend: &'s dyn SpendSource) -> Self {
        NativeHost {
            filter,
            spend: Some(spend),
        }
    }
}

impl Host for NativeHost<'_> {
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }

    // The only request header removed this way is the client's routing header, and Envoy
    // picked the route before the filters ran, with it.
    fn remove_request_header(&mut self, name: &str) {
        self.filter.set_header(abi::REQUEST_HEADERS, name, None);
        self.filter.clear_route_cache();
    }

    fn send_json_response(&mut self, status: u16, extra: &[(&'static str, String)], body: &[u8]) {
        let header = |name: &str, value: &str| abi::ModuleHttpHeader {
            key_ptr: name.as_ptr().cast(),
            key_length: name.len(),
            value_ptr: value.as_ptr().cast(),
            value_length: value.len(),
        };
        let mut headers = Vec::with_capacity(1 + extra.len());
        headers.push(header("content-type", "application/json"));
        headers.extend(extra.iter().map(|(name, value)| header(name, value)));
        // SAFETY: the filter is live; Envoy copies the headers, body and details.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.filter.0,
                u32::from(status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::new(body),
                ModuleBuffer::new(b"tollgate"),
            );
        }
    }

    fn request_body(&mut self, _size: usize) -> Cow<'_, [u8]> {
        self.filter.body(Direction::Request)
    }

    fn write_upstream_request(&mut self, plan: &RequestPlan, _body_size: usize) {
        let filter = &mut self.filter;
        // Each header edit is a call into Envoy: remove only what the client sent, is not
        // allowlisted, and the plan does not set anyway.
        for name in filter.client_headers_to_drop(plan) {
            filter.remove_header(abi::REQUEST_HEADERS, &name);
        }
        filter.set_header(abi::REQUEST_HEADERS, ":path", Some(&plan.path));
        filter.set_header(abi::REQUEST_HEADERS, ":authority", Some(&plan.authority));
        filter.set_header(
            abi::REQUEST_HEADERS,
            "content-length",
            Some(&plan.body_length),
        );
        filter.set_header(abi::REQUEST_HEADERS, ROUTE_HEADER, Some(plan.route_value));
        for (name, value) in &plan.headers {
            filter.set_header(abi::REQUEST_HEADERS, name, Some(value));
        }
        if !plan.keeps_body {
            filter.replace_body(Direction::Request, &plan.body);
        }
        // Envoy chose the route before the filters ran, without the routing header.
        filter.clear_route_cache();
    }

    fn remove_response_header(&mut self, name: &str) {
        self.filter.set_header(abi::RESPONSE_HEADERS, name, None);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.filter
            .set_header(abi::RESPONSE_HEADERS, name, Some(value));
    }

    fn response_body(&mut self, _size: usize) -> Cow<'_, [u8]> {
        self.filter.body(Direction::Response)
    }

    fn replace_response_body(&mut self, _size: usize, body: &[u8]) {
        self.filter.replace_body(Direction::Response, body);
    }

    fn spend(&mut self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64 {
        self.spend
            .map_or(0.0, |source| source.spend(scope, id, now_ms))
    }

    fn admit(&mut self, needs: &[Need], now_ms: u64) -> Admission {
        self.spend
            .map_or(Admission::Admitted(RateHeaders::default()), |source| {
                source.admit(needs, now_ms)
            })
    }
}

/// A request's own scheduler: makes Envoy call `on_http_filter_scheduled` for the request
/// on its worker thread. Committed by the control-plane thread when a lease came for a
/// request that waits for one; deleted with the request (see [`RequestWakers`]).
pub struct RequestScheduler(*mut c_void);

// SAFETY: Envoy's scheduler may be committed from any thread (it posts to the request's
// worker); [`RequestWakers`] keeps commit and delete apart with its mutex.
unsafe impl Send for RequestScheduler {}

impl RequestScheduler {
    /// A scheduler for the request of this hook (its worker thread).
    pub fn new(filter: Filter) -> Option<Self> {
        // SAFETY: the filter is live (in one of its hooks).
        let pointer =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(filter.0) };
        (!pointer.is_null()).then_some(RequestScheduler(pointer))
    }

    /// Asks for the request's scheduled hook to run soon.
    fn commit(&self) {
        // SAFETY: not deleted (its owner holds the wakers' lock, or owns it); commit is safe
        // from any thread, and runs nothing once the request is gone.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, 0) }
    }

    /// Frees it (the request is being destroyed, or no longer waits).
    fn delete(self) {
        // SAFETY: Envoy allocated it; `self` is consumed, so it is deleted once.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// The requests waiting for a rate-limit lease, by the module's request number, so that the
/// control-plane thread can wake them when a lease comes; each request's scheduler is
/// deleted under the same lock, so no commit runs on a deleted one.
#[derive(Default)]
pub struct RequestWakers {
    waiting: std::sync::Mutex<HashMap<u64, RequestScheduler>>,
}

impl RequestWakers {
    /// Remembers that request `id` waits; `scheduler` is what wakes it.
    pub fn wait(&self, id: u64, scheduler: RequestScheduler) {
        let previous = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, scheduler);
        if let Some(previous) = previous {
            previous.delete();
        }
    }

    /// Wakes every waiting request (each runs its scheduled hook, tries again, and waits
    /// again if it must).
    pub fn wake_all(&self) {
        let waiting = std::mem::take(
            &mut *self
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (_, scheduler) in waiting {
            scheduler.commit();
            scheduler.delete();
        }
    }

    /// Request `id` is gone (or resumed): forget it.
    pub fn forget(&self, id: u64) {
        let removed = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(scheduler) = removed {
            scheduler.delete();
        }
    }
}

/// Resumes a request stopped in its headers or body hook (from its scheduled hook).
pub fn continue_request(filter: Filter) {
    // SAFETY: the filter is live (in its scheduled hook, on its worker thread).
    unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(filter.0) }
}

/// Envoy's filter-configuration object, on the main thread (while Envoy creates the
/// configuration, or in its scheduled hook).
#[derive(Clone, Copy)]
pub struct Config(ConfigEnvoyPtr);

impl Config {
    /// Wraps the pointer a hook received.
    pub fn new(pointer: ConfigEnvoyPtr) -> Self {
        Config(pointer)
    }
}

/// A handle that makes Envoy call `on_http_filter_config_scheduled` on its main thread; any
/// thread may use it, and it is deleted once (`delete`), never while in use (the mutex).
pub struct Scheduler(std::sync::Mutex<Option<SchedulerPtr>>);

struct SchedulerPtr(*mut c_void);

// SAFETY: Envoy's scheduler may be committed from any thread (it posts to the main thread's
// dispatcher); the mutex keeps commit and delete apart.
unsafe impl Send for SchedulerPtr {}

impl Scheduler {
    /// A scheduler for the configuration Envoy is creating (main thread).
    pub fn new(config: Config) -> Self {
        // SAFETY: `config` is the configuration being created.
        let pointer = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0)
        };
        Scheduler(std::sync::Mutex::new(
            (!pointer.is_null()).then_some(SchedulerPtr(pointer)),
        ))
    }

    /// Asks for the scheduled hook to run on the main thread, soon.
    pub fn commit(&self) {
        let scheduler = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(SchedulerPtr(pointer)) = &*scheduler {
            // SAFETY: not deleted (the mutex is held); commit is safe from any thread.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(*pointer, 0)
            }
        }
    }

    /// Frees the handle; later commits do nothing.
    pub fn delete(&self) {
        let taken = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(SchedulerPtr(pointer)) = taken {
            // SAFETY: Envoy allocated it, it is deleted once (taken out of the mutex).
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(pointer)
            }
        }
    }
}

/// The filter's stats, defined once per configuration with labels; Envoy turns the labels
/// into tags (Prometheus labels) itself. Counters are added up in the module and handed to
/// Envoy from the main thread (see `Shared::flush_stats`): a labelled stat costs Envoy a
/// lookup by name per call, too much for every request. Histograms take each sample as it
/// comes. Ids are 0 when Envoy refused a definition; those stats are skipped.
pub struct Metrics {
    requests: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
    usage_missing: usize,
    usage_records_dropped: usize,
    responses_too_large: usize,
    snapshots_installed: usize,
    snapshot_deltas_installed: usize,
    snapshot_resyncs: usize,
    upstream_latency: usize,
    time_to_first_token: usize,
}

const MODEL_PROVIDER: [&str; 2] = ["model", "provider"];
const MODEL_PROVIDER_STATUS: [&str; 3] = ["model", "provider", "status"];

impl Metrics {
    /// Defines the stats; only possible while Envoy creates the configuration.
    pub fn define(config: Config) -> Self {
        let config = config.0;
        Metrics {
            requests: define(config, false, metrics::REQUESTS, &MODEL_PROVIDER_STATUS),
            prompt_tokens: define(config, false, metrics::PROMPT_TOKENS, &MODEL_PROVIDER),
            completion_tokens: define(config, false, metrics::COMPLETION_TOKENS, &MODEL_PROVIDER),
            usage_missing: define(config, false, metrics::USAGE_MISSING, &MODEL_PROVIDER),
            usage_records_dropped: define(config, false, metrics::USAGE_RECORDS_DROPPED, &[]),
            responses_too_large: define(config, false, metrics::RESPONSES_TOO_LARGE, &[]),
            snapshots_installed: define(config, false, metrics::SNAPSHOTS_INSTALLED, &[]),
            snapshot_deltas_installed: define(
                config,
                false,
                metrics::SNAPSHOT_DELTAS_INSTALLED,
                &[],
            ),
            snapshot_resyncs: define(config, false, metrics::SNAPSHOT_RESYNCS, &[]),
            upstream_latency: define(config, true, metrics::UPSTREAM_LATENCY_MS, &MODEL_PROVIDER),
            time_to_first_token: define(
                config,
                true,
                metrics::TIME_TO_FIRST_TOKEN_MS,
                &MODEL_PROVIDER,
            ),
        }
    }

    /// Finished requests.
    pub fn count_requests(
        &self,
        config: Config,
        model: &str,
        provider: &str,
        status: u16,
        count: u64,
    ) {
        let status = status.to_string();
        increment(config, self.requests, &[model, provider, &status], count);
    }

    /// Tokens providers reported, and successful responses without usage.
    pub fn count_tokens(&self, config: Config, model: &str, provider: &str, tokens: TokenCounts) {
        increment(
            config,
            self.prompt_tokens,
            &[model, provider],
            tokens.prompt,
        );
        increment(
            config,
            self.completion_tokens,
            &[model, provider],
            tokens.completion,
        );
        increment(
            config,
            self.usage_missing,
            &[model, provider],
            tokens.usage_missing,
        );
    }

    /// Usage records dropped from the full queue.
    pub fn count_usage_dropped(&self, config: Config, count: u64) {
        increment(config, self.usage_records_dropped, &[], count);
    }

    /// Buffered answers refused for their size.
    pub fn count_responses_too_large(&self, config: Config, count: u64) {
        increment(config, self.responses_too_large, &[], count);
    }

    /// Full snapshots and deltas installed, and streams dropped to get a full snapshot.
    pub fn count_snapshot_updates(
        &self,
        config: Config,
        snapshots: u64,
        deltas: u64,
        resyncs: u64,
    ) {
        increment(config, self.snapshots_installed, &[], snapshots);
        increment(config, self.snapshot_deltas_installed, &[], deltas);
        increment(config, self.snapshot_resyncs, &[], resyncs);
    }

    /// Upstream latency and, for streams, time to the first byte (worker thread).
    pub fn record_latency(
        &self,
        filter: Filter,
        model: &str,
        provider: &str,
        upstream_ms: u64,
        first_byte_ms: Option<u64>,
    ) {
        record(
            filter,
            self.upstream_latency,
            &[model, provider],
            upstream_ms,
        );
        if let Some(first_byte_ms) = first_byte_ms {
            record(
                filter,
                self.time_to_first_token,
                &[model, provider],
                first_byte_ms,
            );
        }
    }
}

fn module_buffers(values: &[&str]) -> [ModuleBuffer; 3] {
    let mut buffers = [ModuleBuffer::NULL; 3];
    for (buffer, value) in buffers.iter_mut().zip(values) {
        *buffer = ModuleBuffer::new(value.as_bytes());
    }
    buffers
}

fn define(config: ConfigEnvoyPtr, histogram: bool, name: &str, labels: &[&str]) -> usize {
    let mut label_names = module_buffers(labels);
    let count = labels.len().min(label_names.len());
    let mut id = 0;
    // SAFETY: `config` is the configuration Envoy is creating; Envoy copies the name and
    // label names and writes the id through the valid pointer.
    let result = unsafe {
        let define = if histogram {
            abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter
        };
        define(
            config,
            ModuleBuffer::new(name.as_bytes()),
            label_names.as_mut_ptr(),
            count,
            &mut id,
        )
    };
    if result != abi::METRICS_SUCCESS {
        log_warn(&format!(
            "tollgate: Envoy refused to define the stat {name} (result {result})"
        ));
        return 0;
    }
    id
}

fn increment(config: Config, id: usize, labels: &[&str], value: u64) {
    if id == 0 || value == 0 {
        return;
    }
    let mut label_values = module_buffers(labels);
    let count = labels.len().min(label_values.len());
    // SAFETY: the configuration is live (main thread, in its scheduled hook); Envoy reads
    // `count` label values during the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config.0,
            id,
            label_values.as_mut_ptr(),
            count,
            value,
        );
    }
}

fn record(filter: Filter, id: usize, labels: &[&str], value: u64) {
    if id == 0 {
        return;
    }
    let mut label_values = module_buffers(labels);
    let count = labels.len().min(label_values.len());
    // SAFETY: the filter is live; Envoy reads `count` label values during the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
            filter.0,
            id,
            label_values.as_mut_ptr(),
            count,
            value,
        );
    }
}
