//! Envoy bootstrap rendering from `envoy/tollgate.yaml.tmpl`.

use std::path::Path;

/// The bootstrap template, compiled in so the binary works from any directory.
pub const TEMPLATE: &str = include_str!("../../envoy/tollgate.yaml.tmpl");

/// Name of the cluster the filter opens its stream on (the template defines it).
pub const CONTROL_PLANE_CLUSTER: &str = "tollgate_control_plane";

/// The filter's request limit when the config sets none (`filter/core` uses the same).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// The filter's default limit of a buffered (non-streaming) response body (the filter's
/// `DEFAULT_MAX_RESPONSE_BODY_BYTES`).
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Headroom of Envoy's buffers over the filter's request limit, so the filter, not Envoy,
/// answers oversized bodies (with an OpenAI-shaped 413).
const BUFFER_HEADROOM_BYTES: u64 = 1024 * 1024;
const MIN_BUFFER_LIMIT_BYTES: u64 = 2 * 1024 * 1024;

/// CA bundles of the common distributions, most common first.
pub const CA_BUNDLE_CANDIDATES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// How Envoy loads the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterBuild {
    /// The proxy-wasm filter: the `.wasm` file, as Envoy sees it.
    Wasm {
        /// Path of `tollgate_filter.wasm`.
        path: String,
    },
    /// The native dynamic module, `lib<module>.so` in the directory Envoy's
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` names.
    Native {
        /// The module's name (`tollgate_native` for `libtollgate_native.so`).
        module: String,
    },
}

impl FilterBuild {
    /// How many streams one Envoy with `workers` worker threads opens to the control plane:
    /// one per Wasm VM (each worker's and the main thread's; the gateway's and the attempts
    /// listener's filters share a VM's root context), or the native module's one (its filter
    /// configurations of the same bytes, the gateway listener's and the attempts listener's,
    /// share one stream and snapshot).
    pub fn control_plane_streams(&self, workers: u32) -> usize {
        match self {
            FilterBuild::Wasm { .. } => usize::try_from(workers)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            FilterBuild::Native { .. } => 1,
        }
    }
}

/// Name of the native module's library (`lib` + this + `.so`).
pub const NATIVE_MODULE: &str = "tollgate_native";

/// TLS from Envoy (the Wasm filter's cluster, or the native module's own client) to the
/// control plane. Paths are as Envoy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// PEM CA bundle the control plane's certificate must chain to.
    pub ca_file: String,
    /// Name the control plane's certificate must carry (a DNS name or an IP address);
    /// `None`: the control plane host.
    pub server_name: Option<String>,
    /// Client certificate and key for mutual TLS.
    pub client: Option<ClientCertificate>,
}

/// A client certificate for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// Everything that varies between rendered bootstraps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    /// Envoy node id, also reported by the filter in its Hello.
    pub node_id: String,
    /// Envoy admin port (bound on 127.0.0.1).
    pub admin_port: u16,
    /// Address the gateway listener binds.
    pub listen_address: String,
    /// Gateway port.
    pub listen_port: u16,
    /// The filter's request limit (`general_settings.max_request_size_mb`); `None` leaves
    /// the filter's default, and sizes Envoy's buffers for it.
    pub max_request_body_bytes: Option<u64>,
    /// The filter's buffered-response limit (`general_settings.max_response_size_mb`); sizes
    /// Envoy's buffers only (the limit itself reaches the filter in snapshots).
    pub max_response_body_bytes: Option<u64>,
    /// Envoy's stream idle timeout on the gateway's and the attempts listener
    /// (`router_settings.stream_idle_timeout`), in milliseconds.
    pub stream_idle_timeout_ms: u64,
    /// The filter, and how Envoy loads it.
    pub filter: FilterBuild,
    /// Trusted CAs for HTTPS providers.
    pub ca_bundle: String,
    /// Control plane gRPC host, as Envoy resolves it.
    pub control_plane_host: String,
    /// Control plane gRPC port.
    pub control_plane_port: u16,
    /// Control plane HTTP (management API) port; same host as gRPC.
    pub control_plane_http_port: u16,
    /// Environment variable of Envoy's process holding the filter token; the filter reads
    /// it there (never from this file, which `/config_dump` shows).
    pub filter_token_env: String,
    /// TLS to the control plane; `None` for plain HTTP/2.
    pub control_plane_tls: Option<ControlPlaneTls>,
}

impl BootstrapParams {
    /// The parameters of `envoy/standalone.yaml`.
    pub fn standalone() -> Self {
        BootstrapParams {
            node_id: "tollgate-standalone".to_string(),
            admin_port: 9901,
            listen_address: "0.0.0.0".to_string(),
            listen_port: 4000,
            max_request_body_bytes: None,
            max_response_body_bytes: None,
            stream_idle_timeout_ms: crate::config::DEFAULT_STREAM_IDLE_TIMEOUT_MS,
            filter: FilterBuild::Wasm {
                path: "/etc/tollgate/tollgate_filter.wasm".to_string(),
            },
            ca_bundle: CA_BUNDLE_CANDIDATES[0].to_string(),
            control_plane_host: "127.0.0.1".to_string(),
            control_plane_port: 50051,
            control_plane_http_port: 4001,
            filter_token_env: crate::channel::FILTER_TOKEN_ENV.to_string(),
            control_plane_tls: None,
        }
    }

    /// The name the control plane's certificate must carry.
    fn control_plane_server_name(&self) -> &str {
        self.control_plane_tls
            .as_ref()
            .and_then(|tls| tls.server_name.as_deref())
            .unwrap_or(&self.control_plane_host)
    }

    /// Envoy's per-connection buffer limit: the larger of the request and the buffered
    /// response limit plus headroom (so the filter, not Envoy, refuses a body over its limit,
    /// in OpenAI's shape), at least 2 MiB, and at most what Envoy's 32-bit field holds.
    pub fn buffer_limit_bytes(&self) -> u64 {
        let request = self
            .max_request_body_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES);
        let response = self
            .max_response_body_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BODY_BYTES);
        request
            .max(response)
            .saturating_add(BUFFER_HEADROOM_BYTES)
            .max(MIN_BUFFER_LIMIT_BYTES)
            .min(u64::from(u32::MAX))
    }

    /// The filter's plugin configuration (JSON). The Wasm filter reaches the control plane
    /// through an Envoy cluster, the native module directly.
    pub fn plugin_config_json(&self) -> String {
        let mut config = serde_json::Map::new();
        match &self.filter {
            FilterBuild::Wasm { .. } => {
                config.insert("control_plane_cluster".into(), CONTROL_PLANE_CLUSTER.into());
            }
            FilterBuild::Native { .. } => {
                let scheme = if self.control_plane_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let url = format!(
                    "{scheme}://{}:{}",
                    self.control_plane_host, self.control_plane_port
                );
                config.insert("control_plane_url".into(), url.into());
                if let Some(tls) = &self.control_plane_tls {
                    let mut native_tls = serde_json::Map::new();
                    native_tls.insert("ca_file".into(), tls.ca_file.clone().into());
                    if let Some(client) = &tls.client {
                        native_tls
                            .insert("client_cert_file".into(), client.cert_file.clone().into());
                        native_tls.insert("client_key_file".into(), client.key_file.clone().into());
                    }
                    if let Some(name) = &tls.server_name {
                        native_tls.insert("server_name".into(), name.clone().into());
                    }
                    config.insert("control_plane_tls".into(), native_tls.into());
                }
            }
        }
        // The template has the attempts route and listener (retries and fallbacks).
        config.insert("attempts_route".into(), true.into());
        config.insert(
            "control_plane_token_env".into(),
            self.filter_token_env.clone().into(),
        );
        config.insert("node_id".into(), self.node_id.clone().into());
        if let Some(bytes) = self.max_request_body_bytes {
            config.insert("max_request_body_bytes".into(), bytes.into());
        }
        serde_json::Value::Object(config).to_string()
    }
}

/// The first CA bundle that exists on this machine (the first candidate if none does, so
/// Envoy's error names a conventional path).
pub fn default_ca_bundle() -> String {
    CA_BUNDLE_CANDIDATES
        .iter()
        .find(|path| Path::new(path).is_file())
        .unwrap_or(&CA_BUNDLE_CANDIDATES[0])
        .to_string()
}

/// Why a bootstrap could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template has a placeholder this code does not fill (template and code drifted).
    #[error("the Envoy template still contains {0} after rendering")]
    UnfilledPlaceholder(String),
}

/// A plain YAML scalar when `value` is one, else a double-quoted one (JSON string syntax is
/// valid YAML), so paths with spaces or colons cannot break the document.
fn yaml_scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
        && !value.starts_with(['-', '.'])
        && !matches!(
            value,
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "~"
        );
    if plain {
        value.to_string()
    } else {
        serde_json::Value::String(value.to_string()).to_string()
    }
}

/// A protobuf Duration in YAML (`1.250s`) of `ms` milliseconds.
fn duration(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// Renders the bootstrap. Values are YAML-quoted when needed; the plugin configuration is
/// JSON inside a single-quoted scalar, where `'` is written `''`.
pub fn render_bootstrap(params: &BootstrapParams) -> Result<String, RenderError> {
    let (wasm_path, native_module, filter_block) = match &params.filter {
        FilterBuild::Wasm { path } => (path.as_str(), NATIVE_MODULE, "wasm"),
        FilterBuild::Native { module } => ("", module.as_str(), "native"),
    };
    let mut kept = vec![filter_block];
    let tls = params.control_plane_tls.as_ref();
    if tls.is_some() {
        kept.push("control-plane-tls");
    }
    let client = tls.and_then(|tls| tls.client.as_ref());
    if client.is_some() {
        kept.push("control-plane-mtls");
    }
    // Envoy checks no host name unless told which: the certificate must name the control
    // plane, as a DNS name (also sent as SNI) or an IP address (SNI cannot carry one).
    let server_name = params.control_plane_server_name();
    let by_ip = server_name.parse::<std::net::IpAddr>().is_ok();
    let replacements: [(&str, String); 20] = [
        ("{{NODE_ID}}", yaml_scalar(&params.node_id)),
        ("{{ADMIN_PORT}}", params.admin_port.to_string()),
        ("{{LISTEN_ADDRESS}}", yaml_scalar(&params.listen_address)),
        ("{{LISTEN_PORT}}", params.listen_port.to_string()),
        (
            "{{BUFFER_LIMIT_BYTES}}",
            params.buffer_limit_bytes().to_string(),
        ),
        (
            "{{PLUGIN_CONFIG_JSON}}",
            params.plugin_config_json().replace('\'', "''"),
        ),
        (
            "{{STREAM_IDLE_TIMEOUT}}",
            duration(params.stream_idle_timeout_ms),
        ),
        ("{{WASM_PATH}}", yaml_scalar(wasm_path)),
        ("{{NATIVE_MODULE}}", yaml_scalar(native_module)),
        ("{{CA_BUNDLE}}", yaml_scalar(&params.ca_bundle)),
        (
            "{{CONTROL_PLANE_HOST}}",
            yaml_scalar(&params.control_plane_host),
        ),
        (
            "{{CONTROL_PLANE_PORT}}",
            params.control_plane_port.to_string(),
        ),
        (
            "{{CONTROL_PLANE_HTTP_PORT}}",
            params.control_plane_http_port.to_string(),
        ),
        (
            "{{FILTER_TOKEN_ENV}}",
            yaml_scalar(&params.filter_token_env),
        ),
        (
            "{{CONTROL_PLANE_CA}}",
            yaml_scalar(tls.map_or("", |tls| tls.ca_file.as_str())),
        ),
        ("{{CONTROL_PLANE_SERVER_NAME}}", yaml_scalar(server_name)),
        (
            "{{CONTROL_PLANE_SAN_TYPE}}",
            if by_ip { "IP_ADDRESS" } else { "DNS" }.to_string(),
        ),
        (
            "{{CONTROL_PLANE_SNI}}",
            yaml_scalar(if by_ip { "" } else { server_name }),
        ),
        (
            "{{CONTROL_PLANE_CLIENT_CERT}}",
            yaml_scalar(client.map_or("", |client| client.cert_file.as_str())),
        ),
        (
            "{{CONTROL_PLANE_CLIENT_KEY}}",
            yaml_scalar(client.map_or("", |client| client.key_file.as_str())),
        ),
    ];
    let mut rendered = keep_blocks(TEMPLATE, &kept);
    for (placeholder, value) in &replacements {
        rendered = rendered.replace(placeholder, value);
    }
    // Only placeholders count: the template's comments may mention `{{PLACEHOLDERS}}` in
    // prose, so look for `{{` followed by an upper-case identifier and `}}`.
    if let Some(left) = find_placeholder(&rendered) {
        return Err(RenderError::UnfilledPlaceholder(left));
    }
    Ok(rendered)
}

/// Marks the start of an optional block in the template: a filter build (`wasm` or
/// `native`), or `control-plane-tls` and `control-plane-mtls`; the next marker starts the
/// next block, and `end` returns to lines that are always kept.
const BLOCK_MARKER: &str = "# tollgate-block: ";

/// The template with only the `kept` blocks, and no block markers.
fn keep_blocks(template: &str, kept: &[&str]) -> String {
    let mut block: Option<&str> = None;
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        if let Some(name) = line.trim().strip_prefix(BLOCK_MARKER) {
            block = (name != "end").then_some(name);
            continue;
        }
        if block.is_none_or(|name| kept.contains(&name)) {
            out.push_str(line);
        }
    }
    out
}

fn find_placeholder(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        if let Some(end) = after.find("}}") {
            let name = &after[..end];
            let is_placeholder = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            // The template's header comment talks about "{{PLACEHOLDERS}}" generically.
            if is_placeholder && !line_is_comment(text, text.len() - after.len()) {
                return Some(format!("{{{{{name}}}}}"));
            }
        }
        rest = after;
    }
    None
}

/// Whether the byte at `offset` sits on a `#` comment line.
fn line_is_comment(text: &str, offset: usize) -> bool {
    let line_start = text[..offset].rfind('\n').map_or(0, |index| index + 1);
    text[line_start..].trim_start().starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_yaml_is_the_rendered_template() {
        let checked_in = include_str!("../../envoy/standalone.yaml");
        let rendered = render_bootstrap(&BootstrapParams::standalone()).unwrap();
        assert!(
            checked_in == rendered,
            "envoy/standalone.yaml is out of date: regenerate it with \
             `cargo run -p tollgate -- envoy-config --ca-bundle /etc/ssl/certs/ca-certificates.crt > envoy/standalone.yaml`"
        );
    }

    #[test]
    fn renders_every_placeholder() {
        let params = BootstrapParams {
            node_id: "node-1".into(),
            admin_port: 19901,
            listen_address: "127.0.0.1".into(),
            listen_port: 14000,
            max_request_body_bytes: Some(5 * 1024 * 1024),
            max_response_body_bytes: Some(4 * 1024 * 1024),
            stream_idle_timeout_ms: 1_500,
            filter: FilterBuild::Wasm {
                path: "/opt/t/filter.wasm".into(),
            },
            ca_bundle: "/etc/ssl/cert.pem".into(),
            control_plane_host: "cp.internal".into(),
            control_plane_port: 15051,
            control_plane_http_port: 15052,
            filter_token_env: "TOLLGATE_FILTER_TOKEN".into(),
            control_plane_tls: None,
        };
        let yaml = render_bootstrap(&params).unwrap();
        assert!(!yaml
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("{{")));
        assert!(yaml.contains("  id: node-1\n"));
        assert!(yaml.contains("port_value: 19901"));
        assert!(yaml.contains("{ address: 127.0.0.1, port_value: 14000 }"));
        assert!(yaml.contains("per_connection_buffer_limit_bytes: 6291456\n"));
        // Both listeners (the gateway's and the attempts listener).
        assert_eq!(yaml.matches("stream_idle_timeout: 1.500s\n").count(), 2);
        assert!(yaml.contains("filename: /opt/t/filter.wasm\n"));
        assert!(yaml.contains("trusted_ca: { filename: /etc/ssl/cert.pem }"));
        assert!(yaml.contains("{ address: cp.internal, port_value: 15051 }"));
        assert!(yaml.contains("{ address: cp.internal, port_value: 15052 }"));
        // Management paths go to the control plane, before the catch-all 404.
        let routes = &document_routes(&yaml);
        let position = |needle: &str| routes.iter().position(|r| r == needle).unwrap();
        for prefix in crate::http_api::ROUTED_PREFIXES {
            assert!(
                position(&format!("prefix {prefix} -> tollgate_control_plane_http"))
                    < position("prefix / -> 404")
            );
        }
        assert!(yaml.contains(
            r#"value: '{"attempts_route":true,"control_plane_cluster":"tollgate_control_plane","control_plane_token_env":"TOLLGATE_FILTER_TOKEN","max_request_body_bytes":5242880,"node_id":"node-1"}'"#
        ));
        let document: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let plugin = &document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"][0]["typed_config"]["config"]["configuration"]
            ["value"];
        let json: serde_json::Value = serde_json::from_str(plugin.as_str().unwrap()).unwrap();
        assert_eq!(json["node_id"], "node-1");
        assert_eq!(json["control_plane_cluster"], CONTROL_PLANE_CLUSTER);
    }

    /// The routes of the rendered bootstrap as "prefix P -> cluster" lines.
    fn document_routes(yaml: &str) -> Vec<String> {
        let document: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let routes = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_sequence()
            .unwrap()
            .clone();
        routes
            .iter()
            .map(|route| {
                let matcher = route["match"]["prefix"]
                    .as_str()
                    .map(|p| format!("prefix {p}"))
                    .or_else(|| route["match"]["path"].as_str().map(|p| format!("path {p}")))
                    .unwrap_or_default();
                let target = route["route"]["cluster"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| "404".to_string());
                format!("{matcher} -> {target}")
            })
            .collect()
    }

    #[test]
    fn awkward_values_stay_valid_yaml() {
        let params = BootstrapParams {
            node_id: "it's: a node".into(),
            filter: FilterBuild::Wasm {
                path: "/tmp/with space/f.wasm".into(),
            },
            listen_address: "::".into(),
            ..BootstrapParams::standalone()
        };
        let yaml = render_bootstrap(&params).unwrap();
        let document: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(document["node"]["id"].as_str(), Some("it's: a node"));
        assert_eq!(
            document["static_resources"]["listeners"][0]["address"]["socket_address"]["address"]
                .as_str(),
            Some("::")
        );
        let plugin = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        let json: serde_json::Value = serde_json::from_str(&plugin).unwrap();
        assert_eq!(json["node_id"], "it's: a node");
        let wasm = &document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]
            ["local"]["filename"];
        assert_eq!(wasm.as_str(), Some("/tmp/with space/f.wasm"));
    }

    #[test]
    fn renders_the_native_module_instead_of_the_wasm_filter() {
        let params = BootstrapParams {
            filter: FilterBuild::Native {
                module: NATIVE_MODULE.into(),
            },
            control_plane_host: "cp.internal".into(),
            control_plane_port: 15051,
            ..BootstrapParams::standalone()
        };
        let yaml = render_bootstrap(&params).unwrap();
        assert!(!yaml.contains("tollgate-block:"), "block markers stay out");
        assert!(!yaml.contains("envoy.filters.http.wasm.v3.Wasm"));
        let document: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let filters = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"]
            .as_sequence()
            .unwrap();
        let names: Vec<_> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tollgate",
                "envoy.filters.http.dynamic_forward_proxy",
                "envoy.filters.http.router"
            ]
        );
        let native = &filters[0]["typed_config"];
        assert_eq!(
            native["@type"].as_str(),
            Some("type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter")
        );
        assert_eq!(
            native["dynamic_module_config"]["name"].as_str(),
            Some(NATIVE_MODULE)
        );
        let json: serde_json::Value =
            serde_json::from_str(native["filter_config"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(json["control_plane_url"], "http://cp.internal:15051");
        assert_eq!(json["node_id"], "tollgate-standalone");
        // The attempts listener runs the same filter, with the same configuration.
        let attempts = &document["static_resources"]["listeners"][1];
        assert_eq!(attempts["name"].as_str(), Some("tollgate_attempts"));
        assert_eq!(
            attempts["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0],
            filters[0]
        );
        assert_eq!(json["attempts_route"], true);
        // The Wasm rendering keeps exactly one filter named tollgate per listener too.
        let wasm = render_bootstrap(&BootstrapParams::standalone()).unwrap();
        assert_eq!(
            wasm.matches("- name: tollgate\n").count(),
            3,
            "virtual host + the filter on both listeners"
        );
        assert!(!wasm.contains("DynamicModuleFilter"));
    }

    /// The rendered control-plane cluster and the filter's plugin configuration.
    fn cluster_and_plugin(params: &BootstrapParams) -> (serde_yaml::Value, serde_json::Value) {
        let yaml = render_bootstrap(params).unwrap();
        let document: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let cluster = document["static_resources"]["clusters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|cluster| cluster["name"].as_str() == Some(CONTROL_PLANE_CLUSTER))
            .unwrap()
            .clone();
        let filter = &document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"][0]["typed_config"];
        let value = filter["config"]["configuration"]["value"]
            .as_str()
            .or_else(|| filter["filter_config"]["value"].as_str())
            .unwrap();
        (cluster, serde_json::from_str(value).unwrap())
    }

    #[test]
    fn the_filter_token_is_named_never_rendered() {
        let params = BootstrapParams {
            filter_token_env: "MY_TOKEN".into(),
            ..BootstrapParams::standalone()
        };
        let yaml = render_bootstrap(&params).unwrap();
        let document: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let vm = &document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"];
        assert_eq!(
            vm["environment_variables"]["host_env_keys"],
            serde_yaml::from_str::<serde_yaml::Value>("[MY_TOKEN]").unwrap()
        );
        let (cluster, plugin) = cluster_and_plugin(&params);
        assert_eq!(plugin["control_plane_token_env"], "MY_TOKEN");
        // Plain HTTP/2 without TLS parameters.
        assert!(cluster.get("transport_socket").is_none());
    }

    #[test]
    fn renders_tls_to_the_control_plane_for_both_builds() {
        let tls = ControlPlaneTls {
            ca_file: "/etc/tollgate/ca.pem".into(),
            server_name: None,
            client: None,
        };
        let params = BootstrapParams {
            control_plane_host: "cp.internal".into(),
            control_plane_tls: Some(tls.clone()),
            ..BootstrapParams::standalone()
        };
        let (cluster, plugin) = cluster_and_plugin(&params);
        let context = &cluster["transport_socket"]["typed_config"];
        assert_eq!(context["sni"].as_str(), Some("cp.internal"));
        let common = &context["common_tls_context"];
        assert_eq!(common["alpn_protocols"][0].as_str(), Some("h2"));
        assert_eq!(
            common["validation_context"]["trusted_ca"]["filename"].as_str(),
            Some("/etc/tollgate/ca.pem")
        );
        let san = &common["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"].as_str(), Some("DNS"));
        assert_eq!(san["matcher"]["exact"].as_str(), Some("cp.internal"));
        assert!(common.get("tls_certificates").is_none());
        assert!(
            plugin.get("control_plane_tls").is_none(),
            "Wasm: the cluster does TLS"
        );

        // An IP address is matched as one, and cannot be sent as SNI; mutual TLS adds
        // Envoy's certificate.
        let params = BootstrapParams {
            control_plane_host: "10.0.0.7".into(),
            control_plane_tls: Some(ControlPlaneTls {
                client: Some(ClientCertificate {
                    cert_file: "/etc/tollgate/envoy.pem".into(),
                    key_file: "/etc/tollgate/envoy-key.pem".into(),
                }),
                ..tls.clone()
            }),
            ..BootstrapParams::standalone()
        };
        let (cluster, _) = cluster_and_plugin(&params);
        let context = &cluster["transport_socket"]["typed_config"];
        assert_eq!(context["sni"].as_str(), Some(""));
        let common = &context["common_tls_context"];
        let san = &common["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"].as_str(), Some("IP_ADDRESS"));
        assert_eq!(san["matcher"]["exact"].as_str(), Some("10.0.0.7"));
        let certificate = &common["tls_certificates"][0];
        assert_eq!(
            certificate["certificate_chain"]["filename"].as_str(),
            Some("/etc/tollgate/envoy.pem")
        );
        assert_eq!(
            certificate["private_key"]["filename"].as_str(),
            Some("/etc/tollgate/envoy-key.pem")
        );

        // The native module connects itself: https, with the same files and name.
        let params = BootstrapParams {
            filter: FilterBuild::Native {
                module: NATIVE_MODULE.into(),
            },
            ..params
        };
        let (_, plugin) = cluster_and_plugin(&params);
        assert_eq!(plugin["control_plane_url"], "https://10.0.0.7:50051");
        assert_eq!(
            plugin["control_plane_tls"],
            serde_json::json!({
                "ca_file": "/etc/tollgate/ca.pem",
                "client_cert_file": "/etc/tollgate/envoy.pem",
                "client_key_file": "/etc/tollgate/envoy-key.pem",
            })
        );
        let named = BootstrapParams {
            control_plane_tls: Some(ControlPlaneTls {
                server_name: Some("cp.example".into()),
                ..tls
            }),
            ..params
        };
        let (cluster, plugin) = cluster_and_plugin(&named);
        assert_eq!(plugin["control_plane_tls"]["server_name"], "cp.example");
        assert_eq!(
            cluster["transport_socket"]["typed_config"]["sni"].as_str(),
            Some("cp.example")
        );
    }

    #[test]
    fn buffer_limit_has_headroom_and_a_floor() {
        let mut params = BootstrapParams::standalone();
        assert_eq!(params.buffer_limit_bytes(), 11 * 1024 * 1024);
        params.max_request_body_bytes = Some(1024);
        params.max_response_body_bytes = Some(1024);
        assert_eq!(params.buffer_limit_bytes(), 2 * 1024 * 1024);
        params.max_response_body_bytes = Some(20 * 1024 * 1024);
        assert_eq!(params.buffer_limit_bytes(), 21 * 1024 * 1024);
        params.max_request_body_bytes = Some(u64::MAX);
        assert_eq!(params.buffer_limit_bytes(), u64::from(u32::MAX));
    }

    #[test]
    fn detects_leftover_placeholders() {
        assert_eq!(find_placeholder("a: {{FOO}}\n"), Some("{{FOO}}".into()));
        assert_eq!(find_placeholder("# the {{PLACEHOLDERS}}\na: 1\n"), None);
        assert_eq!(find_placeholder("a: '{{not one}}'\n"), None);
    }

    #[test]
    fn ca_bundle_default_exists_or_is_conventional() {
        let bundle = default_ca_bundle();
        assert!(CA_BUNDLE_CANDIDATES.contains(&bundle.as_str()));
    }
}
