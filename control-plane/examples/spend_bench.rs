//! `make bench-spend`: loads a synthetic ledger of 10 million usage records (1,000 keys, 100
//! users, 20 teams, 10 models, 50 tags, 200 end users over 30 days; see
//! `tollgate::store::synthetic_record`) into a scratch PostgreSQL database with the real
//! migrations, then times every spend query and prints p50 / p99 in ms, and PostgreSQL's
//! plan of each. The database is dropped at the end.
//!
//! Usage: `cargo run -p tollgate --example spend_bench -- [--rows N] [--iterations N]
//! [--url postgres://.../postgres] [--keep] [--plans]`. The URL is a database to connect to
//! for `CREATE DATABASE` (default: `TOLLGATE_BENCH_PG_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{Connection, Executor, PgConnection, Row};
use tollgate::store::{
    synthetic_key_hash, synthetic_record, ReportFilter, ReportGroup, SpendLogFilter, SpendQuery,
    SpendScope, Store, DAY_MS, SYNTHETIC_BASE_MS,
};

const BENCH_DATABASE: &str = "tollgate_spend_bench";
/// Where the bench's section of BENCHMARKS.md begins (it runs to the end of the file; `make
/// bench` keeps it).
const SECTION_START: &str = "<!-- spend-bench: written by make bench-spend -->";
/// Records per INSERT ... SELECT of the load (one transaction each).
const LOAD_CHUNK: u64 = 1_000_000;

struct Options {
    rows: u64,
    iterations: usize,
    url: String,
    keep: bool,
    plans: bool,
    /// BENCHMARKS.md to write the results into (its spend section, to the end of the file).
    write: Option<String>,
    /// Keep a bench database already loaded with `rows` records (from `--keep`).
    reuse: bool,
    /// Stop after loading (with `--keep`: load once, time many times).
    load_only: bool,
    /// Time only the cases whose name contains this.
    only: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        rows: 10_000_000,
        iterations: 50,
        url: std::env::var("TOLLGATE_BENCH_PG_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        keep: false,
        plans: false,
        write: None,
        reuse: false,
        load_only: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => options.rows = args.next().context("--rows N")?.parse()?,
            "--iterations" => {
                options.iterations = args.next().context("--iterations N")?.parse()?
            }
            "--url" => options.url = args.next().context("--url URL")?,
            "--keep" => options.keep = true,
            "--plans" => options.plans = true,
            "--reuse" => options.reuse = true,
            "--load-only" => options.load_only = true,
            "--only" => options.only = Some(args.next().context("--only TEXT")?),
            "--write" => options.write = Some(args.next().context("--write FILE")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if options.rows == 0 || options.iterations == 0 {
        bail!("--rows and --iterations must be positive");
    }
    Ok(options)
}

/// `base` with its database replaced by `database`.
fn database_url(base: &str, database: &str) -> anyhow::Result<String> {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, format!("?{query}")),
        None => (base, String::new()),
    };
    let scheme_end = without_query.find("://").context("not a URL")? + 3;
    let authority_end = without_query[scheme_end..]
        .find('/')
        .map_or(without_query.len(), |at| at + scheme_end);
    Ok(format!(
        "{}/{database}{query}",
        &without_query[..authority_end]
    ))
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// p50 and p99 of `samples` (nearest rank).
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let rank = |p: f64| {
        let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples.get(index).copied().map_or(0.0, ms)
    };
    (rank(0.50), rank(0.99))
}

/// One timed case: a name, how many times it runs, and the query.
struct Case {
    name: String,
    iterations: usize,
    query: SpendQuery,
}

async fn run(store: &Store, query: &SpendQuery) -> anyhow::Result<usize> {
    Ok(match query {
        SpendQuery::Logs(filter, offset, limit) => {
            store.spend_logs(filter, *offset, *limit).await?.len()
        }
        SpendQuery::Count(filter) => usize::try_from(store.spend_logs_count(filter).await?)?,
        SpendQuery::Report(start, end, group, restrict) => store
            .spend_report(*start, *end, *group, restrict)
            .await?
            .len(),
        SpendQuery::Tags(start, end) => store.spend_by_tag(*start, *end).await?.len(),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut admin = PgConnection::connect(&options.url).await.with_context(|| {
        format!(
            "cannot connect to {}",
            tollgate::store::redact_url(&options.url)
        )
    })?;
    let url = database_url(&options.url, BENCH_DATABASE)?;
    let loaded = if options.reuse {
        match PgConnection::connect(&url).await {
            Ok(mut bench) => {
                let count: Option<i64> = sqlx::query("SELECT COUNT(*) FROM usage_records")
                    .fetch_one(&mut bench)
                    .await
                    .ok()
                    .and_then(|row| row.try_get(0).ok());
                bench.close().await?;
                count == Some(i64::try_from(options.rows)?)
            }
            Err(_) => false,
        }
    } else {
        false
    };
    if !loaded {
        admin
            .execute(format!("DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("CREATE DATABASE {BENCH_DATABASE}").as_str())
            .await?;
    }
    let result = bench(&options, &url, loaded).await;
    if !options.keep {
        admin
            .execute(format!("DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)").as_str())
            .await?;
    }
    admin.close().await?;
    result
}

async fn bench(options: &Options, url: &str, loaded: bool) -> anyhow::Result<()> {
    // Connecting runs the migrations: on a database of an earlier run (`--reuse`) that
    // includes any added since, over its whole ledger.
    let started = Instant::now();
    let store = Store::connect(url).await?;
    let migrations = started.elapsed();
    let mut connection = PgConnection::connect(url).await?;
    let version: String = sqlx::query("SHOW server_version")
        .fetch_one(&mut connection)
        .await?
        .try_get(0)?;
    println!("PostgreSQL {version}; {} usage records", options.rows);

    let load_line = if loaded {
        let line = format!(
            "the database of an earlier run (--reuse); connecting (migrations) took {:.1} s",
            migrations.as_secs_f64()
        );
        println!("{line}");
        line
    } else {
        load(options, &store, &mut connection).await?
    };
    connection.close().await?;
    if options.load_only {
        store.close().await;
        return Ok(());
    }
    queries(options, &store, &version, &load_line).await
}

/// Loads the synthetic ledger; returns what it took, for the report.
async fn load(
    options: &Options,
    store: &Store,
    connection: &mut PgConnection,
) -> anyhow::Result<String> {
    // Load without the secondary indexes and build them afterwards (much faster than
    // maintaining them row by row); their definitions are the migrations' own.
    let indexes: Vec<(String, String)> = sqlx::query(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('usage_records', 'usage_tags') \
         AND indexname NOT IN (SELECT conname FROM pg_constraint)",
    )
    .fetch_all(&mut *connection)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    for (name, _) in &indexes {
        connection
            .execute(format!("DROP INDEX {name}").as_str())
            .await?;
    }
    let started = Instant::now();
    let mut first = 0;
    while first < options.rows {
        let end = (first + LOAD_CHUNK).min(options.rows);
        store.load_synthetic_usage(first, end, options.rows).await?;
        first = end;
        println!(
            "  loaded {first} records ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let load = started.elapsed();
    let started = Instant::now();
    for (_, definition) in &indexes {
        connection.execute(definition.as_str()).await?;
    }
    let indexing = started.elapsed();
    let started = Instant::now();
    store.rebuild_synthetic_totals().await?;
    store.analyze().await?;
    let finishing = started.elapsed();
    let size: String = sqlx::query(
        "SELECT pg_size_pretty(pg_total_relation_size('usage_records') + \
         pg_total_relation_size('usage_tags'))",
    )
    .fetch_one(&mut *connection)
    .await?
    .try_get(0)?;
    let load_line = format!(
        "load {:.0} s, {} indexes {:.0} s, spend_totals and daily rollups + VACUUM ANALYZE {:.0} s; tables with indexes: {size}",
        load.as_secs_f64(),
        indexes.len(),
        indexing.as_secs_f64(),
        finishing.as_secs_f64()
    );
    println!("{load_line}");
    Ok(load_line)
}

/// Records of one ingest batch, as a filter sends them ([`USAGE_BATCH`] of them, the
/// filter's batch size).
const USAGE_BATCH: u64 = 500;

/// Times what writers do to the loaded ledger: `insert_usage` of a filter's batch (500
/// records spread over the keys, models and tags as the synthetic ones are), then retention
/// deleting them again, 500 at a time. The batches are dated the day before the ledger, so
/// no timed query sees them and the ledger is as loaded afterwards (`--reuse` finds it).
async fn ingest(
    store: &Store,
    iterations: usize,
    wanted: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<(String, f64, f64, u64)>> {
    let insert_name = "ingest: insert_usage, batch of 500";
    let delete_name = "retention: delete batch of 500";
    if !wanted(insert_name) && !wanted(delete_name) {
        return Ok(Vec::new());
    }
    let before = i64::try_from(SYNTHETIC_BASE_MS)?;
    let mut inserts = Vec::with_capacity(iterations);
    for batch in 0..iterations as u64 {
        let records: Vec<_> = (0..USAGE_BATCH)
            .map(|j| {
                let i = batch * USAGE_BATCH + j;
                let mut record = synthetic_record(i, 1);
                record.id = format!("ingest-{i:08}");
                record.request_id = format!("ingest-req-{i}");
                record.started_unix_ms = SYNTHETIC_BASE_MS - 86_400_000 + i;
                record
            })
            .collect();
        let started = Instant::now();
        let stored = store.insert_usage(&records).await?;
        inserts.push(started.elapsed());
        if stored != USAGE_BATCH {
            bail!("batch {batch}: {stored} of {USAGE_BATCH} records stored");
        }
    }
    let mut deletes = Vec::with_capacity(iterations);
    loop {
        let started = Instant::now();
        let gone = store.delete_usage_batch(before, USAGE_BATCH).await?;
        if gone == 0 {
            break;
        }
        deletes.push(started.elapsed());
    }
    if deletes.len() != iterations {
        bail!("retention took {} batches for {iterations}", deletes.len());
    }
    let (insert_p50, insert_p99) = percentiles(&mut inserts);
    let (delete_p50, delete_p99) = percentiles(&mut deletes);
    Ok(vec![
        (insert_name.to_string(), insert_p50, insert_p99, USAGE_BATCH),
        (delete_name.to_string(), delete_p50, delete_p99, USAGE_BATCH),
    ])
}

/// Times every query; prints the table (and writes it with `--write`).
async fn queries(
    options: &Options,
    store: &Store,
    version: &str,
    load_line: &str,
) -> anyhow::Result<()> {
    let mut table =
        String::from("| query | runs | p50 ms | p99 ms | rows |\n|---|---:|---:|---:|---:|\n");

    let base = i64::try_from(SYNTHETIC_BASE_MS)?;
    let month = (base, base + 30 * DAY_MS);
    let day = (base + 10 * DAY_MS, base + 11 * DAY_MS);
    let key = synthetic_key_hash(42);
    let n = options.iterations;
    let few = (n / 10).max(3);
    let fewest = (n / 20).max(2);
    let by_key = SpendLogFilter {
        key_hash: Some(key.clone()),
        ..Default::default()
    };
    let by_key_count = options.rows / 1000;
    let mut cases = vec![
        (
            "logs: newest page (no filter)",
            SpendLogFilter::default(),
            0,
        ),
        ("logs: key, first page", by_key.clone(), 0),
        (
            "logs: key, deep page (middle)",
            by_key.clone(),
            by_key_count / 2,
        ),
        (
            "logs: user, first page",
            SpendLogFilter {
                user_id: Some("user-42".into()),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: team, first page",
            SpendLogFilter {
                team_id: Some("team-7".into()),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: team, deep page (offset 10,000)",
            SpendLogFilter {
                team_id: Some("team-7".into()),
                ..Default::default()
            },
            10_000,
        ),
        (
            "logs: model, first page",
            SpendLogFilter {
                model: Some("model-3".into()),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: one day, first page",
            SpendLogFilter {
                start_ms: Some(day.0),
                end_ms: Some(day.1),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: one day, deep page (offset 10,000)",
            SpendLogFilter {
                start_ms: Some(day.0),
                end_ms: Some(day.1),
                ..Default::default()
            },
            10_000,
        ),
        (
            "logs: key + 10 days, first page",
            SpendLogFilter {
                key_hash: Some(key.clone()),
                start_ms: Some(base + 5 * DAY_MS),
                end_ms: Some(base + 15 * DAY_MS),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: request_id (record id)",
            SpendLogFilter {
                request_id: Some(format!("r{:010}", options.rows / 3)),
                ..Default::default()
            },
            0,
        ),
        (
            "logs: request_id (x-request-id)",
            SpendLogFilter {
                request_id: Some(format!("req-{}", options.rows / 3)),
                ..Default::default()
            },
            0,
        ),
    ]
    .into_iter()
    .map(|(name, filter, offset)| Case {
        name: name.to_string(),
        iterations: n,
        query: SpendQuery::Logs(filter, offset, 50),
    })
    .collect::<Vec<_>>();
    for (name, filter) in [
        ("count (v2 total): key", by_key.clone()),
        (
            "count (v2 total): team",
            SpendLogFilter {
                team_id: Some("team-7".into()),
                ..Default::default()
            },
        ),
        (
            "count (v2 total): one day",
            SpendLogFilter {
                start_ms: Some(day.0),
                end_ms: Some(day.1),
                ..Default::default()
            },
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            iterations: n,
            query: SpendQuery::Count(filter),
        });
    }
    cases.push(Case {
        name: "count (v2 total): everything".into(),
        iterations: few,
        query: SpendQuery::Count(SpendLogFilter::default()),
    });
    let groups = [
        ("team", ReportGroup::Team),
        ("customer", ReportGroup::Customer),
        ("api_key", ReportGroup::ApiKey),
        ("user", ReportGroup::User),
        ("model", ReportGroup::Model),
        ("day", ReportGroup::Day),
    ];
    // A report aggregates every record of its range in PostgreSQL: seconds, so fewer runs.
    for (label, group) in groups {
        cases.push(Case {
            name: format!("report group_by={label}, one day"),
            iterations: few,
            query: SpendQuery::Report(day.0, day.1, group, ReportFilter::default()),
        });
    }
    cases.push(Case {
        name: "report api_key=<one key>, 30 days".into(),
        iterations: n,
        query: SpendQuery::Report(
            month.0,
            month.1,
            ReportGroup::ApiKey,
            ReportFilter {
                key_hash: Some(key.clone()),
                user_id: None,
            },
        ),
    });
    for (label, group) in groups {
        cases.push(Case {
            name: format!("report group_by={label}, 30 days"),
            iterations: fewest,
            query: SpendQuery::Report(month.0, month.1, group, ReportFilter::default()),
        });
    }
    cases.push(Case {
        name: "spend tags, one day".into(),
        iterations: n,
        query: SpendQuery::Tags(Some(day.0), Some(day.1)),
    });
    cases.push(Case {
        name: "spend tags, all time".into(),
        iterations: few,
        query: SpendQuery::Tags(None, None),
    });

    let wanted = |name: &str| {
        options
            .only
            .as_deref()
            .is_none_or(|only| name.contains(only))
    };
    println!();
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>8}",
        "query", "runs", "p50 ms", "p99 ms", "rows"
    );
    // Totals read from spend_totals (/global/spend, spend in /key/info ...).
    for (name, scope, id) in [
        (
            "global spend (spend_totals)",
            SpendScope::Global,
            String::new(),
        ),
        (
            "key/info spend (spend_totals)",
            SpendScope::Key,
            key.clone(),
        ),
    ] {
        if !wanted(name) {
            continue;
        }
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            store.spend_total(scope, &id).await?;
            samples.push(started.elapsed());
        }
        let (p50, p99) = percentiles(&mut samples);
        println!("{name:<44} {n:>6} {p50:>9.2} {p99:>9.2} {:>8}", 1);
        table.push_str(&format!("| {name} | {n} | {p50:.2} | {p99:.2} | 1 |\n"));
    }
    cases.retain(|case| wanted(&case.name));
    for case in &cases {
        let mut samples = Vec::with_capacity(case.iterations);
        let mut rows = 0;
        // One untimed run warms the cache as an interactive user's second click would.
        run(store, &case.query).await?;
        for _ in 0..case.iterations {
            let started = Instant::now();
            rows = run(store, &case.query).await?;
            samples.push(started.elapsed());
        }
        let (p50, p99) = percentiles(&mut samples);
        println!(
            "{:<44} {:>6} {p50:>9.2} {p99:>9.2} {rows:>8}",
            case.name, case.iterations
        );
        table.push_str(&format!(
            "| {} | {} | {p50:.2} | {p99:.2} | {rows} |\n",
            case.name, case.iterations
        ));
    }
    for (name, p50, p99, rows) in ingest(store, n, &wanted).await? {
        println!("{name:<44} {n:>6} {p50:>9.2} {p99:>9.2} {rows:>8}");
        table.push_str(&format!(
            "| {name} | {n} | {p50:.2} | {p99:.2} | {rows} |\n"
        ));
    }
    if let Some(path) = &options.write {
        let section = format!(
            "{SECTION_START}\n## Spend queries over {} usage records (PostgreSQL)\n\n\
             `make bench-spend` (PostgreSQL {}): a synthetic ledger (1,000 keys, 100 users, 20 teams, 10 \
             models, 50 tags, 200 end users, 30 days) in a scratch database with the real \
             migrations; each query through `tollgate::store` (the spend API's own calls), \
             after one untimed run. Pages are 50 rows; \"rows\" is what the query returned.\n\n\
             {load_line}\n\n{table}",
            options.rows, version
        );
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let kept = old
            .find(SECTION_START)
            .map_or(old.as_str(), |at| &old[..at]);
        std::fs::write(path, format!("{}\n\n{section}", kept.trim_end()))?;
        println!("wrote {path}");
    }
    if options.plans {
        for case in &cases {
            println!("\n== {}", case.name);
            for line in store.explain_spend_query(&case.query).await? {
                println!("  {line}");
            }
        }
    }
    store.close().await;
    Ok(())
}
