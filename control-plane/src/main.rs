//! The `tollgate` command: `up`, `serve`, `envoy-config`, `check-config`, and the management
//! commands (`models`, `keys`, `teams`, `users`) that talk to the HTTP API.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tollgate::app::{start_control_plane, Database};
use tollgate::channel::{ChannelSecurity, FilterToken, ServerTlsFiles, FILTER_TOKEN_ENV};
use tollgate::client::Client;
use tollgate::config::{self, ConfigError, LoadedConfig};
use tollgate::envoy::{self, BootstrapParams, ClientCertificate, ControlPlaneTls, FilterBuild};
use tollgate::http_api;
use tollgate::manage::Manager;
use tollgate::pricing::PriceTable;
use tollgate::secrets::CredentialKey;
use tollgate::server::{self, ServeError};
use tollgate::sync::SyncHub;
use tollgate::up::{self, EnvoyCommand, EnvoyProcess, Readiness};

/// Time Envoy gets to drain after SIGTERM before it is killed.
const ENVOY_STOP_GRACE: Duration = Duration::from_secs(10);
/// Time the gRPC server gets to close its streams on shutdown.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);
/// The credential key `up` creates in its state directory when none is in the environment.
const CREDENTIAL_KEY_FILE: &str = "credential.key";

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Tollgate: an OpenAI-compatible LLM gateway inside Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Control plane and Envoy with the filter, ready to serve on --port.
    Up(UpArgs),
    /// The control plane alone, for Envoys run some other way.
    Serve(ServeArgs),
    /// Print the Envoy bootstrap for running Envoy yourself.
    EnvoyConfig(EnvoyConfigArgs),
    /// Validate a config file: print its warnings and errors (exit 1 on errors).
    CheckConfig(CheckConfigArgs),
    /// Model deployments (management API).
    Models(ApiArgs<ModelsCommand>),
    /// Virtual keys (management API).
    Keys(ApiArgs<KeysCommand>),
    /// Teams (management API).
    Teams(ApiArgs<TeamsCommand>),
    /// Users (management API).
    Users(ApiArgs<UsersCommand>),
}

/// Where the management API is and how to authenticate, plus the subcommand.
#[derive(Args)]
struct ApiArgs<T: Subcommand> {
    /// Gateway (or control-plane HTTP) URL.
    #[arg(
        long,
        env = "TOLLGATE_URL",
        default_value = "http://127.0.0.1:4000",
        global = true
    )]
    url: String,
    /// Master key or admin key.
    #[arg(
        long,
        env = "TOLLGATE_MASTER_KEY",
        hide_env_values = true,
        global = true
    )]
    master_key: Option<String>,
    #[command(subcommand)]
    command: T,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Every deployment (GET /model/info).
    List,
    /// Add a deployment (POST /model/new).
    Add {
        /// Public model name.
        #[arg(long)]
        model_name: String,
        /// "<provider>/<model>".
        #[arg(long)]
        model: String,
        #[arg(long)]
        api_base: Option<String>,
        /// Provider key, or os.environ/NAME (resolved by the control plane).
        #[arg(long)]
        api_key: Option<String>,
        #[arg(long)]
        api_version: Option<String>,
        #[arg(long)]
        max_tokens: Option<u32>,
        /// model_info.id (generated if absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete an API-created deployment (POST /model/delete).
    Delete {
        /// model_info.id.
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key (POST /key/generate); the clear key is printed once.
    Generate {
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        team_id: Option<String>,
        /// Comma-separated model names.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// "30d", "12h", ...
        #[arg(long)]
        duration: Option<String>,
        /// JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List keys (GET /key/list).
    List {
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        team_id: Option<String>,
        /// Whole key objects instead of tokens.
        #[arg(long)]
        full: bool,
    },
    /// One key (GET /key/info).
    Info { key: String },
    /// Change a key (POST /key/update).
    Update {
        key: String,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        team_id: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(long)]
        blocked: Option<bool>,
    },
    /// New clear key for a key (POST /key/regenerate).
    Regenerate { key: String },
    /// Block a key (POST /key/block).
    Block { key: String },
    /// Unblock a key (POST /key/unblock).
    Unblock { key: String },
    /// Delete keys (POST /key/delete).
    Delete {
        keys: Vec<String>,
        /// Delete by alias too.
        #[arg(long = "alias")]
        aliases: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TeamsCommand {
    /// Create a team (POST /team/new).
    Create {
        #[arg(long)]
        team_id: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// USER_ID or USER_ID:ROLE (admin or user); repeatable.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// One team (GET /team/info).
    Info { team_id: String },
    /// Add a member (POST /team/member_add).
    AddMember {
        team_id: String,
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        user_email: Option<String>,
        /// admin or user.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create a user, and a key for it (POST /user/new).
    Create {
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        user_email: Option<String>,
        /// proxy_admin, internal_user, ...
        #[arg(long)]
        user_role: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Do not create a key.
        #[arg(long)]
        no_key: bool,
    },
    /// One user (GET /user/info).
    Info { user_id: String },
}

#[derive(Args)]
struct UpArgs {
    /// LiteLLM-format config.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Gateway port.
    #[arg(long, default_value_t = 4000)]
    port: u16,
    /// Envoy admin port (bound on 127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Control plane gRPC port (bound on 127.0.0.1).
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// Control plane HTTP management API port (bound on 127.0.0.1; also routed from the
    /// gateway port); default --grpc-port + 1.
    #[arg(long)]
    http_port: Option<u16>,
    /// Address the gateway listens on.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Filter build (default: TOLLGATE_WASM, next to this binary, or target/wasm32-wasip1/release).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Load the filter as a native Envoy dynamic module instead: the path of
    /// libtollgate_native.so (`cargo build -p tollgate-native --release`).
    #[arg(long, conflicts_with = "wasm")]
    native: Option<PathBuf>,
    /// Envoy binary (default: TOLLGATE_ENVOY, or `envoy` on PATH).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Where the rendered bootstrap, Envoy's log and the default SQLite database go.
    #[arg(long, default_value = ".tollgate")]
    state_dir: PathBuf,
    /// Database URL (sqlite:... or postgres://...); default <state-dir>/tollgate.db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Envoy node id (default tollgate-up-<port>).
    #[arg(long)]
    node_id: Option<String>,
    #[command(flatten)]
    token: FilterTokenArgs,
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    prices: PriceArgs,
}

/// Where prices come from besides the built-in table.
#[derive(Args)]
struct PriceArgs {
    /// Price table in LiteLLM's model_prices_and_context_window.json format, over the
    /// built-in one. Replaces general_settings.model_prices_file.
    #[arg(long, env = "TOLLGATE_MODEL_PRICES_FILE")]
    model_prices_file: Option<PathBuf>,
}

/// `--model-prices-file`, when given, replaces the config's `general_settings.model_prices_file`.
fn apply_model_prices_file(loaded: &mut LoadedConfig, args: &PriceArgs) {
    if let Some(file) = args
        .model_prices_file
        .as_ref()
        .filter(|file| !file.as_os_str().is_empty())
    {
        loaded.config.general.model_prices_file = Some(file.clone());
    }
}

/// The filter token every filter stream must present.
#[derive(Args)]
struct FilterTokenArgs {
    /// Filter token (at least 16 visible ASCII characters). Prefer the environment
    /// variable or --filter-token-file: a flag shows in `ps`.
    #[arg(
        long,
        env = "TOLLGATE_FILTER_TOKEN",
        hide_env_values = true,
        conflicts_with = "filter_token_file"
    )]
    filter_token: Option<String>,
    /// File holding the filter token.
    #[arg(long)]
    filter_token_file: Option<PathBuf>,
}

impl FilterTokenArgs {
    /// The token given, if any.
    fn token(&self) -> Result<Option<FilterToken>> {
        if let Some(path) = &self.filter_token_file {
            return Ok(Some(FilterToken::from_file(path)?));
        }
        match self.filter_token.as_deref() {
            Some(text) if !text.trim().is_empty() => Ok(Some(FilterToken::new(text)?)),
            _ => Ok(None),
        }
    }
}

/// TLS for the gRPC port.
#[derive(Args)]
struct GrpcTlsArgs {
    /// PEM certificate chain: serve the gRPC port (filters and management) over TLS.
    #[arg(long, requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(long, requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// PEM CA bundle: every client (filter or management) must present a certificate it
    /// signed (mutual TLS).
    #[arg(long, requires = "grpc_tls_cert")]
    grpc_client_ca: Option<PathBuf>,
}

impl GrpcTlsArgs {
    fn files(&self) -> Option<ServerTlsFiles> {
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.grpc_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// How Envoy reaches the control plane over TLS.
#[derive(Args)]
struct ControlPlaneTlsArgs {
    /// PEM CA bundle the control plane's certificate must chain to: connect over TLS.
    #[arg(long)]
    control_plane_ca: Option<String>,
    /// Name the control plane's certificate must carry (default --control-plane-host).
    #[arg(long, requires = "control_plane_ca")]
    control_plane_server_name: Option<String>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, requires_all = ["control_plane_ca", "control_plane_client_key"])]
    control_plane_client_cert: Option<String>,
    /// PEM private key of --control-plane-client-cert.
    #[arg(long, requires = "control_plane_client_cert")]
    control_plane_client_key: Option<String>,
}

impl ControlPlaneTlsArgs {
    fn tls(&self) -> Option<ControlPlaneTls> {
        let ca_file = self.control_plane_ca.clone()?;
        let client = match (
            &self.control_plane_client_cert,
            &self.control_plane_client_key,
        ) {
            (Some(cert), Some(key)) => Some(ClientCertificate {
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            _ => None,
        };
        Some(ControlPlaneTls {
            ca_file,
            server_name: self.control_plane_server_name.clone(),
            client,
        })
    }
}

/// How provider credentials are protected.
#[derive(Args)]
struct SecretArgs {
    /// Prefix of the environment variables the management API may read for credential
    /// fields (`"api_key": "os.environ/NAME"`); repeatable or comma-separated. Replaces
    /// general_settings.api_env_prefixes; default: none (the API refuses every os.environ/).
    #[arg(
        long = "api-env-prefix",
        env = "TOLLGATE_API_ENV_PREFIX",
        value_delimiter = ','
    )]
    api_env_prefixes: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// LiteLLM-format config.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Address of the gRPC server the filters connect to.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Address of the HTTP/JSON management API (LiteLLM-compatible paths).
    #[arg(long, default_value = "127.0.0.1:4001")]
    http_addr: SocketAddr,
    /// Database URL (sqlite:... or postgres://...); default sqlite://tollgate.db?mode=rwc.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    token: FilterTokenArgs,
    #[command(flatten)]
    tls: GrpcTlsArgs,
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    prices: PriceArgs,
}

#[derive(Args)]
struct EnvoyConfigArgs {
    /// Gateway port.
    #[arg(long, default_value_t = 4000)]
    port: u16,
    /// Envoy admin port.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Control plane gRPC port.
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// Control plane HTTP management API port.
    #[arg(long, default_value_t = 4001)]
    http_port: u16,
    /// Control plane host, as Envoy resolves it.
    #[arg(long, default_value = "127.0.0.1")]
    control_plane_host: String,
    /// Address the gateway listens on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Filter build, as seen by Envoy.
    #[arg(long, default_value = "/etc/tollgate/tollgate_filter.wasm")]
    wasm: String,
    /// Load the filter as the native dynamic module libtollgate_native.so instead of --wasm
    /// (start Envoy with ENVOY_DYNAMIC_MODULES_SEARCH_PATH set to the library's directory).
    #[arg(long)]
    native: bool,
    /// Envoy node id.
    #[arg(long, default_value = "tollgate-standalone")]
    node_id: String,
    /// CA bundle for HTTPS providers (default: the first that exists on this machine).
    #[arg(long)]
    ca_bundle: Option<String>,
    /// Config whose general_settings.max_request_size_mb sizes Envoy's buffers.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Environment variable of Envoy's process that holds the filter token.
    #[arg(long, default_value = FILTER_TOKEN_ENV)]
    filter_token_env: String,
    #[command(flatten)]
    control_plane_tls: ControlPlaneTlsArgs,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// LiteLLM-format config.yaml.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    prices: PriceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => run_up(args).await,
            Command::Serve(args) => run_serve(args).await,
            Command::EnvoyConfig(args) => run_envoy_config(args),
            Command::CheckConfig(args) => Ok(run_check_config(&args)),
            Command::Models(args) => {
                run_api(
                    &args.url,
                    args.master_key.clone(),
                    models_call(args.command),
                )
                .await
            }
            Command::Keys(args) => {
                run_api(&args.url, args.master_key.clone(), keys_call(args.command)).await
            }
            Command::Teams(args) => {
                run_api(&args.url, args.master_key.clone(), teams_call(args.command)).await
            }
            Command::Users(args) => {
                run_api(&args.url, args.master_key.clone(), users_call(args.command)).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Logs usually end up in files (`make run`, the tests); colour codes only help a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

/// Loads a config for `up`/`serve`: warnings logged with their paths, errors fatal.
fn load_config(path: &Path) -> Result<LoadedConfig> {
    let loaded = match config::load_file(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            // The warnings may explain the errors (a misspelt key next to a missing one).
            if let ConfigError::Invalid { warnings, .. } = &error {
                for warning in warnings {
                    tracing::warn!("{}: {warning}", path.display());
                }
            }
            return Err(error.into());
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    let models: std::collections::BTreeSet<&str> = loaded
        .config
        .deployments
        .iter()
        .map(|d| d.model_name.as_str())
        .collect();
    tracing::info!(
        "loaded {}: {} deployments of {} models",
        path.display(),
        loaded.config.deployments.len(),
        models.len()
    );
    Ok(loaded)
}

/// `--api-env-prefix`, when given, replaces the config's `general_settings.api_env_prefixes`.
fn apply_api_env_prefixes(loaded: &mut LoadedConfig, args: &SecretArgs) -> Result<()> {
    let prefixes: Vec<String> = args
        .api_env_prefixes
        .iter()
        .map(|prefix| prefix.trim().to_string())
        .filter(|prefix| !prefix.is_empty())
        .collect();
    if prefixes.is_empty() {
        return Ok(());
    }
    for prefix in &prefixes {
        config::check_env_prefix(prefix)
            .map_err(|message| anyhow::anyhow!("--api-env-prefix: {message}"))?;
    }
    loaded.config.general.api_env_prefixes = prefixes;
    Ok(())
}

/// The credential key from `LITELLM_SALT_KEY` / `TOLLGATE_SALT_KEY`, if set.
fn credential_key_from_env() -> Result<Option<CredentialKey>> {
    Ok(CredentialKey::from_env(&|name| std::env::var(name).ok())?)
}

/// SIGINT and SIGTERM, registered at once so a signal during startup is not missed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// A running gRPC server and the means to stop it.
struct GrpcServer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl GrpcServer {
    async fn start(
        hub: Arc<SyncHub>,
        address: SocketAddr,
        security: ChannelSecurity,
    ) -> Result<GrpcServer> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for the control plane"))?;
        tracing::info!(
            tls = security.tls.is_some(),
            filter_token = security.filter_token.is_some(),
            "control plane listening on {address}"
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve_secured(hub, listener, &security, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(GrpcServer {
            stop: Some(stop),
            task,
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(SERVER_STOP_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!("control plane stopped"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "control plane stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "control plane task failed"),
            Err(_) => {
                tracing::warn!("control plane did not stop in time");
                self.task.abort();
            }
        }
    }
}

/// The running HTTP management API.
struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    async fn start(hub: Arc<SyncHub>, address: SocketAddr) -> Result<HttpServer> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for the management API"))?;
        tracing::info!("management API listening on http://{address}");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(http_api::serve(Manager::new(hub), listener, async {
            let _ = stopped.await;
        }));
        Ok(HttpServer {
            stop: Some(stop),
            task,
        })
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SERVER_STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("management API did not stop in time");
            self.task.abort();
        }
    }
}

async fn run_serve(args: ServeArgs) -> Result<ExitCode> {
    let mut signals = Signals::register()?;
    let mut loaded = load_config(&args.config)?;
    apply_api_env_prefixes(&mut loaded, &args.secrets)?;
    apply_model_prices_file(&mut loaded, &args.prices);
    let security = ChannelSecurity {
        filter_token: args.token.token()?,
        tls: args.tls.files().map(|files| files.load()).transpose()?,
    };
    security.check_exposure(args.grpc_addr)?;
    // No key file here: serve runs where the operator manages secrets, and a key generated
    // next to a shared database would be lost with the machine.
    let credential_key = credential_key_from_env()?;
    let database = Database::choose(
        args.database_url.as_deref(),
        loaded.config.general.database_url.as_deref(),
        Database::Url("sqlite://tollgate.db?mode=rwc".into()),
    );
    tracing::info!("database: {}", database.describe());
    let store = database.open().await?.with_credential_key(credential_key);
    let hub = start_control_plane(store.clone(), &loaded).await?;
    let http = HttpServer::start(hub.clone(), args.http_addr).await?;
    let mut server = GrpcServer::start(hub.clone(), args.grpc_addr, security).await?;
    let outcome = tokio::select! {
        name = signals.recv() => {
            tracing::info!("{name} received, stopping");
            Ok(ExitCode::SUCCESS)
        }
        result = &mut server.task => match result {
            Ok(Ok(())) => Ok(ExitCode::SUCCESS),
            Ok(Err(error)) => Err(anyhow::Error::new(error)),
            Err(error) => Err(anyhow::Error::new(error).context("control plane task")),
        },
    };
    if !server.task.is_finished() {
        server.stop().await;
    }
    http.stop().await;
    // Also stops the change watcher, which holds a database connection.
    hub.close_streams();
    store.close().await;
    outcome
}

/// Fails early, with the port's purpose, when a port `up` needs is taken (Envoy would only
/// say so deep in its log).
async fn ensure_free(address: SocketAddr, what: &str) -> Result<()> {
    match TcpListener::bind(address).await {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(error) => bail!("cannot use {address} for {what}: {error}"),
    }
}

async fn run_up(args: UpArgs) -> Result<ExitCode> {
    let mut signals = Signals::register()?;
    let mut loaded = load_config(&args.config)?;
    apply_api_env_prefixes(&mut loaded, &args.secrets)?;
    apply_model_prices_file(&mut loaded, &args.prices);
    let envoy_env = std::env::var("TOLLGATE_ENVOY").ok();
    let wasm_env = std::env::var("TOLLGATE_WASM").ok();
    let envoy_binary = up::find_envoy(args.envoy.as_deref(), envoy_env.as_deref())?;
    let (filter, dynamic_modules_dir) = match &args.native {
        Some(library) => {
            let (dir, module) = up::native_module(library)?;
            (FilterBuild::Native { module }, Some(dir))
        }
        None => {
            let wasm = up::find_wasm(args.wasm.as_deref(), wasm_env.as_deref())?;
            let path = wasm.display().to_string();
            (FilterBuild::Wasm { path }, None)
        }
    };
    let filter_streams = filter.control_plane_streams(args.concurrency);
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    std::fs::create_dir_all(&args.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            args.state_dir.display()
        )
    })?;
    let state_dir = std::path::absolute(&args.state_dir)
        .with_context(|| format!("resolving {}", args.state_dir.display()))?;

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc_address = SocketAddr::new(loopback, args.grpc_port);
    let admin_address = SocketAddr::new(loopback, args.admin_port);
    let listen_address = SocketAddr::new(args.host, args.port);
    ensure_free(listen_address, "the gateway (--port)").await?;
    ensure_free(admin_address, "Envoy admin (--admin-port)").await?;

    let database = Database::choose(
        args.database_url.as_deref(),
        loaded.config.general.database_url.as_deref(),
        Database::SqliteFile(state_dir.join("tollgate.db")),
    );
    tracing::info!("database: {}", database.describe());
    // Zero setup: without a key in the environment, one is kept in the state directory.
    let credential_key = match credential_key_from_env()? {
        Some(key) => key,
        None => CredentialKey::from_key_file(&state_dir.join(CREDENTIAL_KEY_FILE))?,
    };
    let store = database
        .open()
        .await?
        .with_credential_key(Some(credential_key));
    let http_port = args.http_port.unwrap_or(args.grpc_port.saturating_add(1));
    let http_address = SocketAddr::new(loopback, http_port);
    // Envoy gets the token through its environment; without one given, each run makes its
    // own, so the channel is authenticated with zero setup.
    let filter_token = match args.token.token()? {
        Some(token) => token,
        None => FilterToken::generate()?,
    };
    let hub = start_control_plane(store.clone(), &loaded).await?;
    let http = HttpServer::start(hub.clone(), http_address).await?;
    let security = ChannelSecurity {
        filter_token: Some(filter_token.clone()),
        tls: None,
    };
    let server = GrpcServer::start(hub.clone(), grpc_address, security).await?;

    let params = BootstrapParams {
        node_id: args
            .node_id
            .clone()
            .unwrap_or_else(|| format!("tollgate-up-{}", args.port)),
        admin_port: args.admin_port,
        listen_address: args.host.to_string(),
        listen_port: args.port,
        max_request_body_bytes: loaded.config.general.max_request_body_bytes(),
        max_response_body_bytes: loaded.config.general.max_response_body_bytes(),
        stream_idle_timeout_ms: loaded.config.router.stream_idle_timeout_ms,
        filter,
        ca_bundle: envoy::default_ca_bundle(),
        control_plane_host: grpc_address.ip().to_string(),
        control_plane_port: grpc_address.port(),
        control_plane_http_port: http_port,
        filter_token_env: FILTER_TOKEN_ENV.to_string(),
        control_plane_tls: None,
    };
    let bootstrap = state_dir.join("envoy.yaml");
    let rendered = envoy::render_bootstrap(&params)?;
    std::fs::write(&bootstrap, rendered)
        .with_context(|| format!("cannot write {}", bootstrap.display()))?;
    let command = EnvoyCommand {
        envoy: envoy_binary,
        bootstrap,
        concurrency: args.concurrency,
        base_id: up::base_id_for_port(args.port),
        log: state_dir.join("envoy.log"),
        dynamic_modules_dir,
        filter_token: Some(filter_token),
    };
    tracing::info!(
        "starting {} (bootstrap {}, log {})",
        command.envoy.display(),
        command.bootstrap.display(),
        command.log.display()
    );
    let mut envoy_process = match EnvoyProcess::spawn(&command) {
        Ok(process) => process,
        Err(error) => {
            server.stop().await;
            http.stop().await;
            return Err(error.into());
        }
    };

    // The listener check connects where a client on this machine would.
    let probe_ip = if args.host.is_unspecified() {
        loopback
    } else {
        args.host
    };
    let readiness = Readiness {
        admin_url: format!("http://{admin_address}"),
        listener: SocketAddr::new(probe_ip, args.port),
        expected_streams: filter_streams,
        // Long enough for every worker's VM to install the snapshot on a loaded machine (a
        // request reaching a VM without one is answered 503 not_ready).
        settle: Duration::from_secs(8),
        ack_grace: Duration::from_millis(500),
        timeout: Duration::from_secs(60),
    };
    let ready = tokio::select! {
        result = up::wait_until_ready(&readiness, &hub, &mut envoy_process) => result.map(|()| true),
        name = signals.recv() => {
            tracing::info!("{name} received during startup, stopping");
            Ok(false)
        }
    };
    match ready {
        Ok(true) => {}
        Ok(false) => {
            envoy_process.stop(ENVOY_STOP_GRACE).await;
            server.stop().await;
            http.stop().await;
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => {
            envoy_process.stop(ENVOY_STOP_GRACE).await;
            server.stop().await;
            http.stop().await;
            return Err(error.into());
        }
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "Tollgate is ready on http://127.0.0.1:{} (control plane 127.0.0.1:{}, management API http://127.0.0.1:{}, Envoy admin http://127.0.0.1:{})",
            args.port, args.grpc_port, http_port, args.admin_port
        )
        .context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    tracing::info!(
        streams = hub.connected_streams(),
        envoy_pid = envoy_process.id().unwrap_or(0),
        "ready"
    );

    let outcome = tokio::select! {
        name = signals.recv() => {
            tracing::info!("{name} received, stopping Envoy and the control plane");
            envoy_process.stop(ENVOY_STOP_GRACE).await;
            Ok(ExitCode::SUCCESS)
        }
        error = envoy_process.exited() => Err(anyhow::Error::new(error)),
    };
    server.stop().await;
    http.stop().await;
    // Also stops the change watcher, which holds a database connection.
    hub.close_streams();
    store.close().await;
    outcome
}

/// One management API call: method, path, and body or query.
enum ApiCall {
    Get(&'static str, Vec<(&'static str, String)>),
    Post(&'static str, serde_json::Value),
}

fn json_arg(name: &str, text: Option<String>) -> Result<Option<serde_json::Value>> {
    text.map(|text| {
        serde_json::from_str(&text).with_context(|| format!("--{name} is not valid JSON"))
    })
    .transpose()
}

fn insert_some(
    map: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    value: Option<impl Into<serde_json::Value>>,
) {
    if let Some(value) = value {
        map.insert(name.to_string(), value.into());
    }
}

fn models_call(command: ModelsCommand) -> Result<ApiCall> {
    Ok(match command {
        ModelsCommand::List => ApiCall::Get("/model/info", Vec::new()),
        ModelsCommand::Add {
            model_name,
            model,
            api_base,
            api_key,
            api_version,
            max_tokens,
            id,
        } => {
            let mut params = serde_json::Map::new();
            params.insert("model".into(), model.into());
            insert_some(&mut params, "api_base", api_base);
            insert_some(&mut params, "api_key", api_key);
            insert_some(&mut params, "api_version", api_version);
            insert_some(&mut params, "max_tokens", max_tokens);
            let mut info = serde_json::Map::new();
            insert_some(&mut info, "id", id);
            ApiCall::Post(
                "/model/new",
                serde_json::json!({
                    "model_name": model_name,
                    "litellm_params": params,
                    "model_info": info,
                }),
            )
        }
        ModelsCommand::Delete { id } => {
            ApiCall::Post("/model/delete", serde_json::json!({ "id": id }))
        }
    })
}

fn keys_call(command: KeysCommand) -> Result<ApiCall> {
    Ok(match command {
        KeysCommand::Generate {
            alias,
            user_id,
            team_id,
            models,
            duration,
            metadata,
        } => {
            let mut body = serde_json::Map::new();
            insert_some(&mut body, "key_alias", alias);
            insert_some(&mut body, "user_id", user_id);
            insert_some(&mut body, "team_id", team_id);
            body.insert("models".into(), models.into());
            insert_some(&mut body, "duration", duration);
            insert_some(&mut body, "metadata", json_arg("metadata", metadata)?);
            ApiCall::Post("/key/generate", body.into())
        }
        KeysCommand::List {
            user_id,
            team_id,
            full,
        } => {
            let mut query = Vec::new();
            if let Some(user_id) = user_id {
                query.push(("user_id", user_id));
            }
            if let Some(team_id) = team_id {
                query.push(("team_id", team_id));
            }
            if full {
                query.push(("return_full_object", "true".to_string()));
            }
            ApiCall::Get("/key/list", query)
        }
        KeysCommand::Info { key } => ApiCall::Get("/key/info", vec![("key", key)]),
        KeysCommand::Update {
            key,
            alias,
            user_id,
            team_id,
            models,
            duration,
            metadata,
            blocked,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("key".into(), key.into());
            insert_some(&mut body, "key_alias", alias);
            insert_some(&mut body, "user_id", user_id);
            insert_some(&mut body, "team_id", team_id);
            insert_some(&mut body, "models", models);
            insert_some(&mut body, "duration", duration);
            insert_some(&mut body, "metadata", json_arg("metadata", metadata)?);
            insert_some(&mut body, "blocked", blocked);
            ApiCall::Post("/key/update", body.into())
        }
        KeysCommand::Regenerate { key } => {
            ApiCall::Post("/key/regenerate", serde_json::json!({ "key": key }))
        }
        KeysCommand::Block { key } => {
            ApiCall::Post("/key/block", serde_json::json!({ "key": key }))
        }
        KeysCommand::Unblock { key } => {
            ApiCall::Post("/key/unblock", serde_json::json!({ "key": key }))
        }
        KeysCommand::Delete { keys, aliases } => {
            if keys.is_empty() && aliases.is_empty() {
                bail!("name the keys to delete (or --alias ALIAS)");
            }
            ApiCall::Post(
                "/key/delete",
                serde_json::json!({ "keys": keys, "key_aliases": aliases }),
            )
        }
    })
}

fn teams_call(command: TeamsCommand) -> Result<ApiCall> {
    Ok(match command {
        TeamsCommand::Create {
            team_id,
            alias,
            models,
            members,
        } => {
            let mut body = serde_json::Map::new();
            insert_some(&mut body, "team_id", team_id);
            insert_some(&mut body, "team_alias", alias);
            body.insert("models".into(), models.into());
            let members: Vec<serde_json::Value> = members
                .iter()
                .map(|member| {
                    let (user_id, role) =
                        member.split_once(':').unwrap_or((member.as_str(), "user"));
                    serde_json::json!({ "user_id": user_id, "role": role })
                })
                .collect();
            body.insert("members_with_roles".into(), members.into());
            ApiCall::Post("/team/new", body.into())
        }
        TeamsCommand::Info { team_id } => ApiCall::Get("/team/info", vec![("team_id", team_id)]),
        TeamsCommand::AddMember {
            team_id,
            user_id,
            user_email,
            role,
        } => {
            if user_id.is_none() && user_email.is_none() {
                bail!("give --user-id or --user-email");
            }
            let mut member = serde_json::Map::new();
            insert_some(&mut member, "user_id", user_id);
            insert_some(&mut member, "user_email", user_email);
            member.insert("role".into(), role.into());
            ApiCall::Post(
                "/team/member_add",
                serde_json::json!({ "team_id": team_id, "member": member }),
            )
        }
    })
}

fn users_call(command: UsersCommand) -> Result<ApiCall> {
    Ok(match command {
        UsersCommand::Create {
            user_id,
            user_email,
            user_role,
            models,
            no_key,
        } => {
            let mut body = serde_json::Map::new();
            insert_some(&mut body, "user_id", user_id);
            insert_some(&mut body, "user_email", user_email);
            insert_some(&mut body, "user_role", user_role);
            body.insert("models".into(), models.into());
            body.insert("auto_create_key".into(), (!no_key).into());
            ApiCall::Post("/user/new", body.into())
        }
        UsersCommand::Info { user_id } => ApiCall::Get("/user/info", vec![("user_id", user_id)]),
    })
}

/// Runs one API call and prints its JSON answer; errors carry the API's message.
async fn run_api(url: &str, master_key: Option<String>, call: Result<ApiCall>) -> Result<ExitCode> {
    let client = Client::new(url, master_key);
    let answer = match call? {
        ApiCall::Get(path, query) => client.get(path, &query).await?,
        ApiCall::Post(path, body) => client.post(path, &body).await?,
    };
    let text = serde_json::to_string_pretty(&answer).context("formatting the answer")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn run_envoy_config(args: EnvoyConfigArgs) -> Result<ExitCode> {
    let (max_request_body_bytes, max_response_body_bytes, stream_idle_timeout_ms) =
        match &args.config {
            Some(path) => {
                let config = load_config(path)?.config;
                (
                    config.general.max_request_body_bytes(),
                    config.general.max_response_body_bytes(),
                    config.router.stream_idle_timeout_ms,
                )
            }
            None => (None, None, config::DEFAULT_STREAM_IDLE_TIMEOUT_MS),
        };
    let params = BootstrapParams {
        node_id: args.node_id,
        admin_port: args.admin_port,
        listen_address: args.host,
        listen_port: args.port,
        max_request_body_bytes,
        max_response_body_bytes,
        stream_idle_timeout_ms,
        filter: if args.native {
            FilterBuild::Native {
                module: envoy::NATIVE_MODULE.to_string(),
            }
        } else {
            FilterBuild::Wasm { path: args.wasm }
        },
        ca_bundle: args.ca_bundle.unwrap_or_else(envoy::default_ca_bundle),
        control_plane_host: args.control_plane_host,
        control_plane_port: args.grpc_port,
        control_plane_http_port: args.http_port,
        filter_token_env: args.filter_token_env,
        control_plane_tls: args.control_plane_tls.tls(),
    };
    let rendered = envoy::render_bootstrap(&params)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(rendered.as_bytes())
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn run_check_config(args: &CheckConfigArgs) -> ExitCode {
    let origin = args.config.display();
    match config::load_file(&args.config) {
        Ok(mut loaded) => {
            for warning in &loaded.warnings {
                println!("warning: {warning}");
            }
            apply_model_prices_file(&mut loaded, &args.prices);
            if let Some(file) = &loaded.config.general.model_prices_file {
                match PriceTable::load_file(file) {
                    Ok(table) => println!("{}: OK, {} models", file.display(), table.len()),
                    Err(error) => {
                        println!("error: {error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let models: std::collections::BTreeSet<&str> = loaded
                .config
                .deployments
                .iter()
                .map(|d| d.model_name.as_str())
                .collect();
            println!(
                "{origin}: OK, {} deployments of {} models, {} warnings",
                loaded.config.deployments.len(),
                models.len(),
                loaded.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid {
            errors, warnings, ..
        }) => {
            for warning in &warnings {
                println!("warning: {warning}");
            }
            for error in &errors {
                println!("error: {error}");
            }
            println!(
                "{origin}: {} errors, {} warnings",
                errors.len(),
                warnings.len()
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
