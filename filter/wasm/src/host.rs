//! Host calls that report failure instead of panicking. The SDK's trait helpers `unwrap()`
//! host results, and a panic kills the worker's VM with every request on it, so the glue
//! calls these instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use tollgate_core::channel::{FilterToken, FILTER_TOKEN_METADATA};

use crate::header_map::{self, HeaderPairs};

/// Logs a failed host call; there is nothing else a filter can do about one.
fn report<T>(what: &str, result: Result<T, proxy_wasm::types::Status>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(status) => {
            log::warn!("tollgate: host call {what} failed: {status:?}");
            None
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    /// The proxy-wasm ABI call behind the SDK's `get_map`: the whole map, serialized, in
    /// memory the host allocates through the SDK's `proxy_on_memory_allocate`.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// A whole header map in one host call (cheaper than one call per header: each host call
/// crosses the VM boundary), as bytes: see [`header_map`] for why not the SDK's readers.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn header_pairs(map: MapType) -> HeaderPairs {
    const STATUS_OK: u32 = 0;
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two locals. On success the
    // pointer is null or owns `size` bytes allocated by `proxy_on_memory_allocate` (a boxed
    // slice of exactly `size` bytes), so a Vec with that length and capacity may own it.
    let serialized = unsafe {
        if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != STATUS_OK
            || data.is_null()
        {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    };
    header_map::decode(&serialized).unwrap_or_else(|| {
        log::warn!("tollgate: the host's header map could not be read");
        Vec::new()
    })
}

/// Off Wasm (unit tests and clippy of the host build) there is no Envoy to ask.
#[cfg(not(target_arch = "wasm32"))]
fn header_pairs(_map: MapType) -> HeaderPairs {
    header_map::decode(&[]).unwrap_or_default()
}

/// Every request header, as bytes.
pub fn request_headers() -> HeaderPairs {
    header_pairs(MapType::HttpRequestHeaders)
}

/// Replaces the whole request header map (one host call for any number of changes); values
/// are bytes, passed on as they came.
pub fn set_request_headers(headers: Vec<(&str, &[u8])>) {
    report(
        "set request headers",
        hostcalls::set_map_bytes(MapType::HttpRequestHeaders, headers),
    );
}

/// Every response header, as bytes (an upstream's header bytes are not trusted either).
pub fn response_headers() -> HeaderPairs {
    header_pairs(MapType::HttpResponseHeaders)
}

/// Sets (or with `None` removes) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    report(
        "set request header",
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value),
    );
}

/// Sets (or with `None` removes) a response header.
pub fn set_response_header(name: &str, value: Option<&str>) {
    report(
        "set response header",
        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value),
    );
}

/// Bytes `[0, size)` of a body buffer.
pub fn body(buffer: BufferType, size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    report("get body", hostcalls::get_buffer(buffer, 0, size))
        .flatten()
        .unwrap_or_default()
}

/// Replaces bytes `[0, size)` of a body buffer.
pub fn replace_body(buffer: BufferType, size: usize, value: &[u8]) {
    report("set body", hostcalls::set_buffer(buffer, 0, size, value));
}

/// Answers the request locally.
pub fn send_response(status: u16, headers: Vec<(&str, &str)>, body: &[u8]) {
    report(
        "send response",
        hostcalls::send_http_response(u32::from(status), headers, Some(body)),
    );
}

/// Wall-clock time from the host.
pub fn now() -> SystemTime {
    report("get time", hostcalls::get_current_time()).unwrap_or(UNIX_EPOCH)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Plugin configuration bytes.
pub fn plugin_configuration() -> Vec<u8> {
    report(
        "get configuration",
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX),
    )
    .flatten()
    .unwrap_or_default()
}

/// Bytes of the gRPC message being delivered.
pub fn grpc_message(size: usize) -> Option<Vec<u8>> {
    report(
        "get grpc message",
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size),
    )
    .flatten()
}

/// Opens the control-plane stream, presenting `token` in its initial metadata.
pub fn open_stream(cluster: &str, token: Option<&FilterToken>) -> Option<u32> {
    let metadata: Vec<(&str, &[u8])> = token
        .map(|token| (FILTER_TOKEN_METADATA, token.expose().as_bytes()))
        .into_iter()
        .collect();
    report(
        "open grpc stream",
        hostcalls::open_grpc_stream(cluster, "tollgate.v1.FilterSync", "Sync", metadata),
    )
}

/// Ends the stream from this side (no close callback follows).
pub fn cancel_stream(token: u32) {
    report("cancel grpc stream", hostcalls::cancel_grpc_stream(token));
}

/// Sends one message on the stream; false when the host refused it.
pub fn send_stream_message(token: u32, message: &[u8]) -> bool {
    report(
        "send grpc message",
        hostcalls::send_grpc_stream_message(token, Some(message), false),
    )
    .is_some()
}

/// Makes the host calls that follow act on context `id` (a request, from the root context;
/// the root, from a request) until the next switch or the end of this callback.
pub fn set_effective_context(id: u32) {
    report(
        "set effective context",
        hostcalls::set_effective_context(id),
    );
}

/// Lets a paused request go on (on the effective context).
pub fn resume_request() {
    report("resume request", hostcalls::resume_http_request());
}

/// Sets the tick period.
pub fn set_tick_period(period: Duration) {
    report("set tick period", hostcalls::set_tick_period(period));
}

/// Defines a metric (idempotent in the host: the same name gives the same id).
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    report("define metric", hostcalls::define_metric(kind, name))
}

/// Adds to a counter. Envoy refuses an offset of 0, so that is skipped here.
pub fn increment_metric(id: u32, offset: u64) {
    if offset == 0 {
        return;
    }
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    report("increment metric", hostcalls::increment_metric(id, offset));
}

/// Records a histogram sample.
pub fn record_metric(id: u32, value: u64) {
    report("record metric", hostcalls::record_metric(id, value));
}
