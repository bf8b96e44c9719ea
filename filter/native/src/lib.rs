//! Tollgate as an Envoy dynamic module: the same filter as the proxy-wasm one
//! (`tollgate-filter`), driving the same [`tollgate_core::exchange::Exchange`], but loaded as
//! a native shared library. No Wasm runtime: no per-worker VM and copy of every snapshot, no
//! copies of headers and bodies into a VM's memory, no JIT-compiled code.
//!
//! Envoy calls the `envoy_dynamic_module_on_*` functions below (its ABI, `abi.rs`). One
//! configuration is shared by every worker, and by every other filter configuration of the
//! same bytes (the gateway listener's and the attempts listener's; `registry.rs`): it holds
//! the newest snapshot, which a thread of the module's own keeps current over a gRPC stream
//! to the control plane (`sync.rs`), and the queue of usage records that thread sends back.
// A panic kills a worker's VM (Wasm) or Envoy itself (native): no index or slice that can be
// out of bounds outside tests; `get` and friends make each bound explicit.
#![deny(clippy::indexing_slicing, clippy::string_slice)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]
// The module's interface is C functions and raw pointers; `envoy.rs` wraps them. Its only
// caller is Envoy, which passes back the pointers the module gave it.
#![allow(unsafe_code, clippy::not_unsafe_ptr_arg_deref)]

mod abi;
mod envoy;
mod registry;
mod shared;
mod sync;

use std::ffi::c_void;
use std::os::raw::c_char;
use std::sync::Arc;

use abi::{ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr};
use envoy::{Direction, Filter, NativeHost, RequestScheduler};
use registry::FilterConfig;
use tollgate_core::exchange::{Exchange, Host, RequestHeaders, Verdict};
use tollgate_core::gateway::ROUTE_HEADER;
use tollgate_core::usage::RecordIds;
use tollgate_core::GatewayError;

/// The ABI version Envoy 1.40 expects.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Called once when Envoy loads the module; returns the ABI version it was built against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

/// A filter configuration: the JSON [`tollgate_core::PluginConfig`] (empty for defaults).
/// Defines the stats, and joins the running state of the same bytes or starts the
/// control-plane thread of a new one; null (Envoy rejects the configuration) when the JSON
/// is invalid.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy owns the configuration bytes for this call; they are read (and copied
    // when they are new) here.
    let bytes = unsafe { config.bytes() };
    match FilterConfig::new(envoy::Config::new(config_envoy), bytes) {
        Some(config) => Arc::into_raw(Arc::new(config)).cast(),
        None => std::ptr::null(),
    }
}

/// Main thread, when the control-plane thread asked for it: hand the counters to Envoy.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: *const c_void,
    _event_id: u64,
) {
    // SAFETY: `config` came from `Arc::into_raw` in `config_new` and Envoy only schedules for
    // a configuration that is alive; it is borrowed, not taken.
    let config = unsafe { &*config.cast::<FilterConfig>() };
    config
        .shared()
        .flush_stats(envoy::Config::new(config_envoy), &config.metrics);
}

/// The configuration is gone: drop its scheduler and Envoy's reference; the control-plane
/// thread stops if no other configuration of the same bytes is left.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    // SAFETY: the pointer came from `Arc::into_raw` in `config_new`; Envoy destroys it once.
    let config = unsafe { Arc::from_raw(config.cast::<FilterConfig>()) };
    config.destroy();
}

/// One request's filter.
struct TollgateFilter {
    config: Arc<FilterConfig>,
    exchange: Exchange,
    /// This request's number in the module (its key among the waiting requests).
    id: u64,
}

/// Numbers the requests, so that the ones waiting for a lease can be told apart.
static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A filter for a new request.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: `config` came from `Arc::into_raw` and Envoy keeps it alive while it makes
    // filters from it; the count is raised before `from_raw` takes a reference.
    let config = unsafe {
        Arc::increment_strong_count(config.cast::<FilterConfig>());
        Arc::from_raw(config.cast::<FilterConfig>())
    };
    let attempts_route = config.shared().config.attempts_route;
    let filter = Box::new(TollgateFilter {
        config,
        exchange: Exchange::with_routing(module_routing(), attempts_route),
        id: NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    });
    Box::into_raw(filter).cast_const().cast()
}

/// # Safety
/// `filter` must come from [`envoy_dynamic_module_on_http_filter_new`] and not be destroyed;
/// Envoy calls a filter's hooks one at a time on its worker thread.
unsafe fn filter<'a>(filter: *const c_void) -> &'a mut TollgateFilter {
    // SAFETY: see above.
    unsafe { &mut *(filter.cast_mut().cast::<TollgateFilter>()) }
}

/// Runs a hook's body, catching a panic, which would otherwise unwind into Envoy and abort
/// the whole process. After a panic on the request side the request is answered with a 500
/// (it must not go upstream unchecked); on the response side the response goes on.
fn guarded(
    hook: &str,
    filter_envoy: FilterEnvoyPtr,
    request_side: bool,
    body: impl FnOnce() -> u32,
) -> u32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(_) => {
            envoy::log_error(&format!("tollgate: bug: the {hook} hook panicked"));
            if request_side {
                let error = GatewayError::Internal;
                NativeHost::new(Filter::new(filter_envoy)).send_json_response(
                    error.status(),
                    &[],
                    &error.to_json(),
                );
                // Both request-side stop codes are 1 (StopIteration, StopIterationAndBuffer).
                abi::HEADERS_STOP_ITERATION
            } else {
                abi::CONTINUE
            }
        }
    }
}

fn headers_status(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Continue => abi::HEADERS_CONTINUE,
        Verdict::Pause => abi::HEADERS_STOP_ITERATION,
    }
}

fn body_status(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Continue => abi::BODY_CONTINUE,
        Verdict::Pause => abi::BODY_STOP_ITERATION_AND_BUFFER,
    }
}

/// The request headers the exchange reads, as bytes: a client's bytes need not be UTF-8.
fn scan(headers: &[EnvoyHttpHeader]) -> RequestHeaders<'_> {
    RequestHeaders::scan(headers.iter().map(|header| {
        // SAFETY: the buffers are Envoy's header bytes, read in the current hook; the caller
        // drops them before it changes a header.
        unsafe { (header.key.bytes(), header.value.bytes()) }
    }))
}

/// The request headers.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("request headers", filter_envoy, true, || {
        // SAFETY: Envoy passes the pointer `filter_new` returned.
        let this = unsafe { filter(filter_module) };
        let envoy_filter = Filter::new(filter_envoy);
        let all = envoy_filter.headers(abi::REQUEST_HEADERS);
        let headers = scan(&all);
        if !headers.route_header {
            return this.on_request_headers(envoy_filter, &headers, end_of_stream);
        }
        // Only the filter may choose an upstream cluster. Removing a header may move the others'
        // bytes, so the map is read again before anything else is looked at.
        drop(all);
        NativeHost::new(envoy_filter).remove_request_header(ROUTE_HEADER);
        let all = envoy_filter.headers(abi::REQUEST_HEADERS);
        this.on_request_headers(envoy_filter, &scan(&all), end_of_stream)
    })
}

impl TollgateFilter {
    fn on_request_headers(
        &mut self,
        envoy_filter: Filter,
        headers: &RequestHeaders<'_>,
        end_of_stream: bool,
    ) -> u32 {
        let state = self.config.shared().state();
        headers_status(self.exchange.on_request_headers(
            &mut NativeHost::new(envoy_filter),
            state.as_ref(),
            headers,
            end_of_stream,
        ))
    }
}

/// Request body data.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    on_body(
        filter_envoy,
        filter_module,
        end_of_stream,
        Direction::Request,
    )
}

/// The response headers.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guarded("response headers", filter_envoy, false, || {
        // SAFETY: Envoy passes the pointer `filter_new` returned.
        let this = unsafe { filter(filter_module) };
        if !this.exchange.is_upstream() {
            return abi::HEADERS_CONTINUE;
        }
        let envoy_filter = Filter::new(filter_envoy);
        let status = envoy_filter
            .header(abi::RESPONSE_HEADERS, ":status")
            .and_then(|value| value.parse::<u16>().ok());
        // Read before the exchange changes a response header (it only removes content-length,
        // after it is done with the content type).
        let content_type = envoy_filter.header(abi::RESPONSE_HEADERS, "content-type");
        let attempts = envoy_filter.header(abi::RESPONSE_HEADERS, "x-envoy-attempt-count");
        headers_status(this.exchange.on_response_headers_with(
            &mut NativeHost::new(envoy_filter),
            status,
            content_type,
            attempts,
            end_of_stream,
        ))
    })
}

/// Response body data.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    on_body(
        filter_envoy,
        filter_module,
        end_of_stream,
        Direction::Response,
    )
}

/// Body data of either direction, when the exchange wants it.
fn on_body(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    end_of_stream: bool,
    direction: Direction,
) -> u32 {
    let request = direction == Direction::Request;
    let hook = if request {
        "request body"
    } else {
        "response body"
    };
    guarded(hook, filter_envoy, request, || {
        // SAFETY: Envoy passes the pointer `filter_new` returned.
        let this = unsafe { filter(filter_module) };
        let wanted = if request {
            this.exchange.awaits_body()
        } else {
            this.exchange.is_upstream()
        };
        if !wanted {
            return abi::BODY_CONTINUE;
        }
        let envoy_filter = Filter::in_body_hook(filter_envoy);
        let size = envoy_filter.body_size(direction);
        let shared = this.config.shared().as_ref();
        let generation = shared.quota_generation();
        let host = &mut NativeHost::with_spend(envoy_filter, shared);
        let verdict = if request {
            this.exchange.on_request_body(host, size, end_of_stream)
        } else {
            this.exchange.on_response_body(host, size, end_of_stream)
        };
        if request && this.exchange.awaits_quota() {
            this.wait_for_quota(envoy_filter, generation);
        }
        body_status(verdict)
    })
}

impl TollgateFilter {
    /// The request waits for a rate-limit lease: the control-plane thread wakes it through
    /// its scheduler when one comes.
    /// `generation` is the module's wake-up count from before the request asked.
    fn wait_for_quota(&self, envoy_filter: Filter, generation: u64) {
        let shared = self.config.shared();
        match RequestScheduler::new(envoy_filter) {
            Some(scheduler) => shared.wakers.wait(self.id, scheduler),
            None => envoy::log_error("tollgate: Envoy gave no scheduler for a request"),
        }
        // A grant that came between the ask and now woke the others, not this one.
        if shared.quota_generation() != generation {
            shared.wakers.wake_all();
        }
    }
}

/// A request that waits for a lease was woken (a grant came, or the wait ended): it is
/// admitted and resumed, refused, or waits on.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
    _event_id: u64,
) {
    guarded("scheduled", filter_envoy, true, || {
        // SAFETY: Envoy passes the pointer `filter_new` returned, on the request's worker.
        let this = unsafe { filter(filter_module) };
        if !this.exchange.awaits_quota() {
            return abi::CONTINUE;
        }
        let envoy_filter = Filter::new(filter_envoy);
        let shared = this.config.shared().as_ref();
        let generation = shared.quota_generation();
        let host = &mut NativeHost::with_spend(envoy_filter, shared);
        if this.exchange.on_quota(host) == Verdict::Continue {
            envoy::continue_request(envoy_filter);
        } else if this.exchange.awaits_quota() {
            this.wait_for_quota(envoy_filter, generation);
        }
        abi::CONTINUE
    });
}

/// Request trailers: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: *const c_void,
) -> u32 {
    abi::CONTINUE
}

/// Response trailers: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: *const c_void,
) -> u32 {
    abi::CONTINUE
}

thread_local! {
    /// Usage-record ids of this worker thread, from a seed drawn once per thread: no lock
    /// shared by the workers, and no system call per request.
    static RECORD_IDS: std::cell::RefCell<RecordIds> =
        std::cell::RefCell::new(RecordIds::new(random_seed()));
}

/// The module's routing state (routing book, attempts ledger), one for every worker and
/// every filter configuration: the gateway's listener and the attempts listener have
/// configurations of their own, and an attempt must find the entry its relaying side
/// opened; the workers share what they learn of each deployment at once.
fn module_routing() -> Arc<std::sync::Mutex<tollgate_core::routing::attempts::Routing>> {
    static ROUTING: std::sync::OnceLock<
        Arc<std::sync::Mutex<tollgate_core::routing::attempts::Routing>>,
    > = std::sync::OnceLock::new();
    Arc::clone(ROUTING.get_or_init(|| {
        Arc::new(std::sync::Mutex::new(
            tollgate_core::routing::attempts::Routing::new(random_seed(), envoy::now_ms()),
        ))
    }))
}

/// Random bits from the OS; a thread that gets none still numbers its records, from the
/// clock and an address on its own stack (which no other live thread shares).
fn random_seed() -> u128 {
    let mut seed = [0u8; 16];
    match getrandom::getrandom(&mut seed) {
        Ok(()) => u128::from_le_bytes(seed),
        Err(error) => {
            envoy::log_warn(&format!(
                "tollgate: no random seed for usage ids ({error}); using the clock"
            ));
            let on_this_stack = 0u8;
            let address = std::ptr::addr_of!(on_this_stack) as usize;
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
                ^ (u128::from(address as u64) << 64)
        }
    }
}

/// The request is over: metrics and the usage record.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter_module: *const c_void,
) {
    guarded("stream complete", filter_envoy, false, || {
        // SAFETY: Envoy passes the pointer `filter_new` returned.
        let this = unsafe { filter(filter_module) };
        let now_ms = envoy::now_ms();
        this.exchange.finish(now_ms);
        let outcome = RECORD_IDS.with_borrow_mut(|ids| this.exchange.outcome(now_ms, ids));
        if let Some(outcome) = outcome {
            this.config.shared().record_outcome(
                Filter::new(filter_envoy),
                &this.config.metrics,
                outcome,
            );
        }
        abi::CONTINUE
    });
}

/// The filter is gone.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: *const c_void) {
    // SAFETY: the pointer came from `Box::into_raw` in `filter_new`; Envoy destroys it once.
    let this = unsafe { Box::from_raw(filter_module.cast_mut().cast::<TollgateFilter>()) };
    if this.exchange.awaits_quota() {
        this.config.shared().wakers.forget(this.id);
    }
}

/// The client reads slower than the response arrives: nothing to do (Envoy applies
/// backpressure itself).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: *const c_void,
) {
}

/// The client caught up: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: *const c_void,
) {
}

/// A local reply (the filter's own, or another filter's): let it go out.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: *const c_void,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    abi::CONTINUE
}

macro_rules! never_called_hooks {
    ($($name:ident),* $(,)?) => {$(
        /// Looked up when Envoy loads the module; never called: the filter starts no callout,
        /// stream or timer and has no per-route configuration. (A C caller passing arguments to
        /// a function that takes none is harmless in the C calling convention.)
        #[no_mangle]
        pub extern "C" fn $name() -> usize {
            0
        }
    )*};
}

never_called_hooks!(
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
    envoy_dynamic_module_on_http_filter_per_route_config_new,
);
