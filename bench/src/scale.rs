//! Snapshot scale: Envoy's memory with 100,000 virtual keys and 1,000 deployments in each
//! build, and the time a change to one of those keys takes to reach the filter.
//!
//! A control plane of its own gets the keys straight into its database before it starts
//! (the management API would take minutes for them), so each Envoy's first snapshot holds
//! them all. Then single keys are blocked through the management API, one at a time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tollgate_e2e::{bulk_key, insert_keys};

use super::{
    bench_config, binary, free_port, load, local, models_listed, vm_rss_kb, wait_until, BenchEnvoy,
    Proc, MASTER_KEY,
};

/// Keys changed one after another (and timed) per run.
const CHANGES: usize = 20;
/// Answers in a row that must refuse a blocked key before it counts as refused everywhere
/// (each on a new connection).
pub const REFUSALS_IN_A_ROW: usize = 3;

/// What [`measure`] found, for the Wasm filter and for the native module.
pub struct Scale {
    /// Keys in the snapshot.
    pub keys: usize,
    /// From Envoy's start until the last key is served.
    pub first_snapshot: [Duration; 2],
    /// VmRSS once the snapshot is installed, idle.
    pub idle_kb: [u64; 2],
    /// VmRSS after the changes.
    pub after_changes_kb: [u64; 2],
    /// For each change: from sending `POST /key/block` until the gateway refuses the key.
    pub propagation: [Vec<Duration>; 2],
    /// For each change: how long the management API took to answer (the change committed;
    /// the filter may refuse the key before the answer is back).
    pub api_answer: Vec<Duration>,
    /// The filter's counters after the changes: full snapshots, deltas, resyncs.
    pub counters: [[u64; 3]; 2],
}

/// The builds measured, in [`Scale`]'s order.
pub const BUILDS: [&str; 2] = ["Wasm filter", "native module"];

/// Starts a control plane with `keys` keys and one Envoy per build (in `dir`/scale), and
/// measures them.
pub async fn measure(dir: &Path, mock_port: u16, keys: usize) -> Result<Scale> {
    let dir = dir.join("scale");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, bench_config(mock_port))?;
    let database = format!("sqlite://{}?mode=rwc", dir.join("tollgate.db").display());
    let (grpc, http) = (free_port()?, free_port()?);
    let serve = |run: &str| -> Result<Proc> {
        let mut command = Command::new(binary("tollgate"));
        command
            .arg("serve")
            // The bench config holds provider keys, which serve stores only encrypted.
            .env("LITELLM_SALT_KEY", "tollgate-bench-salt-key")
            .env_remove("TOLLGATE_SALT_KEY")
            .arg("--config")
            .arg(&config)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--database-url", &database])
            .current_dir(&dir);
        Proc::start(
            "tollgate serve (scale)",
            command,
            &dir.join(format!("control-plane-{run}.log")),
        )
    };
    let listening = || async {
        tokio::net::TcpStream::connect(local(grpc)).await.is_ok()
            && tokio::net::TcpStream::connect(local(http)).await.is_ok()
    };
    // The first run creates the schema; the keys go in before the second.
    let first_run = serve("schema")?;
    wait_until("the control plane", Duration::from_secs(60), listening).await?;
    drop(first_run);
    let inserted = Instant::now();
    let url = database.clone();
    tokio::task::spawn_blocking(move || insert_keys(&url, 0..keys)).await??;
    eprintln!(
        "    {keys} keys into the database in {:.1} s",
        inserted.elapsed().as_secs_f64()
    );
    let _control_plane = serve("keys")?;
    wait_until("the control plane", Duration::from_secs(120), listening)
        .await
        .with_context(|| {
            std::fs::read_to_string(dir.join("control-plane-keys.log")).unwrap_or_default()
        })?;

    let mut envoys = Vec::new();
    let last = bulk_key(keys - 1);
    let mut first_snapshot = [Duration::ZERO; 2];
    for (index, native) in [false, true].into_iter().enumerate() {
        let started = Instant::now();
        let name = if native { "scale-native" } else { "scale-wasm" };
        let (envoy, _) =
            BenchEnvoy::tollgate_with_http(&dir, name, (grpc, Some(http)), Some(&config), native)?;
        wait_until(
            "the last key in the first snapshot",
            Duration::from_secs(120),
            || models_listed(envoy.port, &last),
        )
        .await
        .with_context(|| {
            std::fs::read_to_string(dir.join(format!("envoy-{name}.log"))).unwrap_or_default()
        })?;
        first_snapshot[index] = started.elapsed();
        envoys.push(envoy);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = |envoys: &[BenchEnvoy]| {
        let mut kb = [0; 2];
        for (slot, envoy) in kb.iter_mut().zip(envoys) {
            *slot = vm_rss_kb(envoy.envoy.pid()).unwrap_or(0);
        }
        kb
    };
    let idle_kb = rss(&envoys);

    // The first write after the bulk insert checkpoints SQLite's write-ahead log (about
    // 15 MB): a change made once, not timed.
    block(&envoys, &bulk_key(keys - 2)).await?;
    let mut propagation = [Vec::new(), Vec::new()];
    let mut api_answer = Vec::new();
    for change in 0..CHANGES {
        let key = bulk_key((change * 7919 + 11) % (keys - 2));
        let (answered, [wasm, native]) = block(&envoys, &key).await?;
        api_answer.push(answered);
        propagation[0].push(wasm);
        propagation[1].push(native);
    }
    // Counters reach Envoy at the filter's next tick.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut counters = [[0; 3]; 2];
    for (slot, envoy) in counters.iter_mut().zip(&envoys) {
        *slot = snapshot_counters(envoy.admin).await?;
    }
    Ok(Scale {
        keys,
        first_snapshot,
        idle_kb,
        after_changes_kb: rss(&envoys),
        propagation,
        api_answer,
        counters,
    })
}

/// Blocks `key` with the management API (through the first Envoy) and waits until both
/// Envoys refuse it; returns the time the API took to answer and, per Envoy, the time from
/// sending the request until the key was refused.
async fn block(envoys: &[BenchEnvoy], key: &str) -> Result<(Duration, [Duration; 2])> {
    let [wasm, native] = envoys else {
        bail!("expected two Envoys");
    };
    let body = Bytes::from(format!(r#"{{"key":"{key}"}}"#));
    let auth = format!("Bearer {MASTER_KEY}");
    let sent = Instant::now();
    let (status, answer) = load::call(
        local(wasm.port),
        "POST",
        "/key/block",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await?;
    if status != 200 {
        bail!(
            "POST /key/block: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let answered = sent.elapsed();
    let (on_wasm, on_native) = tokio::join!(
        until_refused(wasm.port, key, sent),
        until_refused(native.port, key, sent)
    );
    Ok((answered, [on_wasm?, on_native?]))
}

/// Polls `GET /v1/models` with `key` on new connections, 1 ms apart, until
/// [`REFUSALS_IN_A_ROW`] answers refuse it; returns the time from `since` to the first of
/// them.
async fn until_refused(port: u16, key: &str, since: Instant) -> Result<Duration> {
    let auth = format!("Bearer {key}");
    let mut first_refusal = None;
    let mut refusals = 0;
    while since.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        let (status, _) = load::call(
            local(port),
            "GET",
            "/v1/models",
            &[("authorization", auth.as_str())],
            Bytes::new(),
        )
        .await?;
        if status == 401 {
            let first = *first_refusal.get_or_insert(asked);
            refusals += 1;
            if refusals == REFUSALS_IN_A_ROW {
                return Ok(first.saturating_duration_since(since));
            }
        } else {
            first_refusal = None;
            refusals = 0;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("the blocked key was still served after 30 s (port {port})")
}

/// The filter's snapshot counters from Envoy's `/stats`: full snapshots, deltas, resyncs.
async fn snapshot_counters(admin: u16) -> Result<[u64; 3]> {
    let admin_url = format!("http://{}", local(admin));
    tokio::task::spawn_blocking(move || {
        let read = |name| tollgate_e2e::counter(&admin_url, name);
        Ok([
            read("tollgate.snapshots_installed")?,
            read("tollgate.snapshot_deltas_installed")?,
            read("tollgate.snapshot_resyncs")?,
        ])
    })
    .await?
}

/// Median and largest of `times`, in ms.
pub fn median_and_max_ms(times: &[Duration]) -> (f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN);
    (median, ms.last().copied().unwrap_or(f64::NAN))
}
