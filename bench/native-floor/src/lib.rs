//! `make bench` only: an empty HTTP filter for Envoy's dynamic modules (a native shared
//! library, no Wasm runtime). Every event hook lets the request continue, so the benchmark's
//! memory row shows what loading a native filter costs, next to the empty Wasm filter's.
//!
//! Written from Envoy's dynamic-module ABI (`source/extensions/dynamic_modules/abi/abi.h`):
//! C functions Envoy looks up by name. Envoy 1.40 checks the ABI version string and looks up
//! every HTTP filter hook when it loads the module, so the hooks an empty filter never sees
//! called (callouts, scheduling, watermarks, per-route configuration) are present as no-ops.

// The module's whole interface is functions exported by their C names.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::raw::c_char;

/// The ABI version Envoy 1.40 expects ("Dynamic module ABI version v0.2.0 matched").
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Any non-null pointer will do as the configuration and filter handles: nothing is stored.
static HANDLE: u8 = 0;

fn handle() -> *const c_void {
    std::ptr::addr_of!(HANDLE).cast()
}

/// Called once when Envoy loads the module; returns the ABI version it was built against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

/// A filter configuration. The name and configuration arrive as two `{ptr, length}` buffers
/// passed by value, which the C calling convention passes as four arguments.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *mut c_void,
    _name: *const c_char,
    _name_length: usize,
    _config: *const c_char,
    _config_length: usize,
) -> *const c_void {
    handle()
}

/// The configuration is gone.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: *const c_void) {}

/// A filter for one request.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    handle()
}

/// `Continue`, the first value of every status enum of the ABI.
const CONTINUE: u32 = 0;

macro_rules! headers_and_body_hooks {
    ($($name:ident),* $(,)?) => {$(
        /// Headers or body of the request or response: continue.
        #[no_mangle]
        pub extern "C" fn $name(
            _filter_envoy: *mut c_void,
            _filter: *const c_void,
            _end_of_stream: bool,
        ) -> u32 {
            CONTINUE
        }
    )*};
}

headers_and_body_hooks!(
    envoy_dynamic_module_on_http_filter_request_headers,
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_body,
);

macro_rules! trailers_hooks {
    ($($name:ident),* $(,)?) => {$(
        /// Trailers: continue.
        #[no_mangle]
        pub extern "C" fn $name(_filter_envoy: *mut c_void, _filter: *const c_void) -> u32 {
            CONTINUE
        }
    )*};
}

trailers_hooks!(
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_trailers,
);

/// The request is over.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) {
}

/// The filter is gone.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: *const c_void) {}

macro_rules! never_called_hooks {
    ($($name:ident),* $(,)?) => {$(
        /// Looked up at load; never called for a filter that starts no callout, stream or
        /// timer and has no per-route configuration.
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
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
    envoy_dynamic_module_on_http_filter_per_route_config_new,
    envoy_dynamic_module_on_http_filter_scheduled,
);
