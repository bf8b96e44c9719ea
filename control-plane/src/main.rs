//! The `tollgate` command: `up`, `serve`, `envoy-config`, `check-config`.

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
use tollgate::config::{self, ConfigError, LoadedConfig};
use tollgate::envoy::{self, BootstrapParams};
use tollgate::sync::{self, SyncHub};
use tollgate::up::{self, EnvoyCommand, EnvoyProcess, Readiness};

/// Time Envoy gets to drain after SIGTERM before it is killed.
const ENVOY_STOP_GRACE: Duration = Duration::from_secs(10);
/// Time the gRPC server gets to close its streams on shutdown.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

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
    /// Address the gateway listens on.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Filter build (default: TOLLGATE_WASM, next to this binary, or target/wasm32-wasip1/release).
    #[arg(long)]
    wasm: Option<PathBuf>,
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
}

#[derive(Args)]
struct ServeArgs {
    /// LiteLLM-format config.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Address of the gRPC server the filters connect to.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Database URL (sqlite:... or postgres://...); default sqlite://tollgate.db?mode=rwc.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
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
    /// Control plane host, as Envoy resolves it.
    #[arg(long, default_value = "127.0.0.1")]
    control_plane_host: String,
    /// Address the gateway listens on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Filter build, as seen by Envoy.
    #[arg(long, default_value = "/etc/tollgate/tollgate_filter.wasm")]
    wasm: String,
    /// Envoy node id.
    #[arg(long, default_value = "tollgate-standalone")]
    node_id: String,
    /// CA bundle for HTTPS providers (default: the first that exists on this machine).
    #[arg(long)]
    ca_bundle: Option<String>,
    /// Config whose general_settings.max_request_size_mb sizes Envoy's buffers.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct CheckConfigArgs {
    /// LiteLLM-format config.yaml.
    #[arg(long)]
    config: PathBuf,
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
    task: JoinHandle<Result<(), sync::ServeError>>,
}

impl GrpcServer {
    async fn start(hub: Arc<SyncHub>, address: SocketAddr) -> Result<GrpcServer> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for the control plane"))?;
        tracing::info!("control plane listening on {address}");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sync::serve(hub, listener, async {
            let _ = stopped.await;
        }));
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

async fn run_serve(args: ServeArgs) -> Result<ExitCode> {
    let mut signals = Signals::register()?;
    let loaded = load_config(&args.config)?;
    let database = Database::choose(
        args.database_url.as_deref(),
        loaded.config.general.database_url.as_deref(),
        Database::Url("sqlite://tollgate.db?mode=rwc".into()),
    );
    tracing::info!("database: {}", database.describe());
    let store = database.open().await?;
    let hub = start_control_plane(store.clone(), &loaded).await?;
    let mut server = GrpcServer::start(hub, args.grpc_addr).await?;
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
    let loaded = load_config(&args.config)?;
    let envoy_env = std::env::var("TOLLGATE_ENVOY").ok();
    let wasm_env = std::env::var("TOLLGATE_WASM").ok();
    let envoy_binary = up::find_envoy(args.envoy.as_deref(), envoy_env.as_deref())?;
    let wasm = up::find_wasm(args.wasm.as_deref(), wasm_env.as_deref())?;
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
    let store = database.open().await?;
    let hub = start_control_plane(store.clone(), &loaded).await?;
    let server = GrpcServer::start(hub.clone(), grpc_address).await?;

    let params = BootstrapParams {
        node_id: args
            .node_id
            .clone()
            .unwrap_or_else(|| format!("tollgate-up-{}", args.port)),
        admin_port: args.admin_port,
        listen_address: args.host.to_string(),
        listen_port: args.port,
        max_request_body_bytes: loaded.config.general.max_request_body_bytes(),
        wasm_path: wasm.display().to_string(),
        ca_bundle: envoy::default_ca_bundle(),
        control_plane_host: grpc_address.ip().to_string(),
        control_plane_port: grpc_address.port(),
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
        expected_streams: usize::try_from(args.concurrency)
            .unwrap_or(usize::MAX)
            .saturating_add(1),
        settle: Duration::from_secs(2),
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
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => {
            envoy_process.stop(ENVOY_STOP_GRACE).await;
            server.stop().await;
            return Err(error.into());
        }
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "Tollgate is ready on http://127.0.0.1:{} (control plane 127.0.0.1:{}, Envoy admin http://127.0.0.1:{})",
            args.port, args.grpc_port, args.admin_port
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
    store.close().await;
    outcome
}

fn run_envoy_config(args: EnvoyConfigArgs) -> Result<ExitCode> {
    let max_request_body_bytes = match &args.config {
        Some(path) => load_config(path)?.config.general.max_request_body_bytes(),
        None => None,
    };
    let params = BootstrapParams {
        node_id: args.node_id,
        admin_port: args.admin_port,
        listen_address: args.host,
        listen_port: args.port,
        max_request_body_bytes,
        wasm_path: args.wasm,
        ca_bundle: args.ca_bundle.unwrap_or_else(envoy::default_ca_bundle),
        control_plane_host: args.control_plane_host,
        control_plane_port: args.grpc_port,
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
        Ok(loaded) => {
            for warning in &loaded.warnings {
                println!("warning: {warning}");
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
