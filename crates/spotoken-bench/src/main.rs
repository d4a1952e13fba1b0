//! spotoken's benchmarks. Each prints a side-by-side ratio measured in one run
//! (the machine is noisy; absolute numbers drift, ratios hold). Run in release:
//!
//! ```text
//! cargo run --release -p spotoken-bench -- all
//! ```
//!
//! | bench | measures | against |
//! |---|---|---|
//! | `cached` | `access_token()` on a fresh cached token, calls/s on one core | a bare `Mutex<HashMap>` lookup + clone |
//! | `rotations` | durable refresh-token rotations/s (lock, re-read, commit) on SQLite and PostgreSQL | one writer at a time |
//! | `cli` | `spotoken token` with a cached token, medians of interleaved runs | `/bin/true` and `spotoken --version` |
//! | `storm` | 16 `spotoken token` processes on an expired account: wall time | one token round trip |
//! | `serve` | `/api/v1/me` through `spotoken serve` under `wrk -t2 -c64`; RSS with 10,000 sessions | nginx `proxy_pass` to the same emulator |
//! | `fleet` | 100,000 sessions (10% active) on 3 `spotoken serve` instances sharing PostgreSQL, token expiries spread over a scaled hour: freshness sampled through the proxy, duplicate refreshes, token-endpoint peak per 1 s and 30 s window, refresher CPU, resident memory per instance | the targets: refreshes ≈ active sessions, ≤ 150 MB per instance |
//! | `realistic` | the same over TLS to an upstream 20 ms away, `wrk -t2 -c256`: p50/p99, req/s, CPU per request, upstream connections and TLS handshakes (emulator counters); HTTP/1.1 and HTTP/2 upstream | nginx `proxy_pass` (keep-alive, `proxy_ssl_session_reuse on`) to the same upstream |

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spotoken::core::endpoint::Provider;
use spotoken::core::scope::Scopes;
use spotoken::store::{AccountState, Row, Sqlite, TokenStore, unix_now};
use spotoken::{Error, Tokens};
use spotoken_emulator::{DEFAULT_CLIENT_ID, Emulator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let all = which == "all";
    if all || which == "cached" {
        rt.block_on(cached())?;
    }
    if all || which == "rotations" {
        rt.block_on(rotations())?;
    }
    if all || which == "cli" {
        rt.block_on(cli())?;
    }
    if all || which == "storm" {
        rt.block_on(storm())?;
    }
    if all || which == "serve" {
        rt.block_on(serve())?;
    }
    if all || which == "realistic" {
        rt.block_on(realistic())?;
    }
    // Not part of `all`: it needs PostgreSQL and takes the length of its
    // scaled hour.
    if which == "fleet" {
        rt.block_on(fleet())?;
    }
    Ok(())
}

async fn logged_in(emu: &Emulator, home: &Path, offset: Arc<AtomicI64>) -> Result<Tokens, Error> {
    let tokens = Tokens::builder()
        .client_id(DEFAULT_CLIENT_ID)
        .provider(Provider::spotify_like(&emu.url(), &emu.url())?)
        .store(Sqlite::open(home.join("tokens.db"))?)
        .keys(spotoken::crypto::load_key_ring(
            &home.join("master.key"),
            None,
        )?)
        .clock(move || unix_now() + offset.load(Ordering::Relaxed))
        .build()?;
    let pending = tokens.begin_login(
        "http://127.0.0.1:8888/callback",
        &Scopes::parse("user-read-private"),
        spotoken::LoginOptions::default(),
    )?;
    let loc = emu
        .authorize(pending.url.as_str())
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    tokens.complete_login("default", &pending, &loc).await?;
    Ok(tokens)
}

/// Cached `access_token()` against the floor: a mutex-guarded map lookup and a copy.
async fn cached() -> Result<(), Box<dyn std::error::Error>> {
    let emu = Emulator::start().await?;
    let dir = tempfile::tempdir()?;
    let tokens = logged_in(&emu, dir.path(), Arc::new(AtomicI64::new(0))).await?;
    tokens.access_token("default").await?;
    let floor: Mutex<HashMap<String, String>> =
        Mutex::new(HashMap::from([("default".into(), "BQ".repeat(60))]));
    const N: u32 = 2_000_000;
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..N {
            let tok = tokens.access_token("default").await?;
            std::hint::black_box(tok);
        }
        let ours = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..N {
            let v = floor
                .lock()
                .map_err(|_| "poisoned")?
                .get("default")
                .cloned();
            std::hint::black_box(v);
        }
        let base = t.elapsed().as_secs_f64();
        best = (best.0.min(ours), best.1.min(base));
    }
    let per_s = f64::from(N) / best.0;
    println!(
        "cached access_token(): {:.2} M calls/s on one task ({:.0} ns/call); floor (Mutex<HashMap> get+clone): {:.0} ns/call; ratio {:.2}x",
        per_s / 1e6,
        best.0 / f64::from(N) * 1e9,
        best.1 / f64::from(N) * 1e9,
        best.0 / best.1
    );
    Ok(())
}

fn row(account: &str) -> Row {
    Row {
        account: account.into(),
        client_id: "bench".into(),
        user_id: Some("u".into()),
        display_name: None,
        scopes: Scopes::parse("user-read-private"),
        authorized_at: unix_now(),
        access_token: Some(vec![7; 140]),
        access_expires_at: unix_now() + 3600,
        refresh_token: vec![9; 170],
        last_refresh: None,
        state: AccountState::Active,
        version: 0,
        updated_at: 0,
        issuer: None,
    }
}

/// One rotation as the engine commits it: lock, re-read, write, release.
async fn rotate(store: &Arc<dyn TokenStore>, account: &str) -> Result<(), Error> {
    let mut lock = store.lock(account).await?;
    let mut r = lock
        .load()
        .await?
        .ok_or_else(|| Error::Internal("missing".into()))?;
    r.refresh_token[0] = r.refresh_token[0].wrapping_add(1);
    r.access_expires_at = unix_now() + 3600;
    lock.update(r)
        .await?
        .ok_or_else(|| Error::Internal("conflict".into()))?;
    lock.release().await
}

async fn rotations_on(
    name: &str,
    store: Arc<dyn TokenStore>,
) -> Result<(), Box<dyn std::error::Error>> {
    const ACCOUNTS: usize = 256;
    for i in 0..ACCOUNTS {
        store.upsert(row(&format!("acct{i}"))).await?;
    }
    // One writer at a time: every rotation pays its own commit.
    let n_serial: u32 = 300;
    let t = Instant::now();
    for i in 0..n_serial {
        rotate(&store, &format!("acct{}", i as usize % ACCOUNTS)).await?;
    }
    let serial = f64::from(n_serial) / t.elapsed().as_secs_f64();
    // Many accounts at once (the server's background refresher): commits are shared.
    let rounds = 8;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for i in 0..ACCOUNTS {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                rotate(&s, &format!("acct{i}")).await
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let concurrent = (rounds * ACCOUNTS) as f64 / t.elapsed().as_secs_f64();
    println!(
        "durable rotations on {name}: {concurrent:.0}/s with {ACCOUNTS} accounts in flight, {serial:.0}/s one at a time; ratio {:.1}x",
        concurrent / serial
    );
    Ok(())
}

async fn rotations() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    rotations_on(
        "SQLite (rollback journal, synchronous=FULL)",
        Arc::new(Sqlite::open(dir.path().join("r.db"))?),
    )
    .await?;
    match std::env::var("SPOTOKEN_TEST_DATABASE_URL") {
        Ok(url) => {
            let schema = format!("spotoken_bench_{}", std::process::id());
            let pg = spotoken::store::Postgres::connect_in_schema(&url, Some(&schema)).await?;
            rotations_on("PostgreSQL", Arc::new(pg)).await?;
            let _ = Command::new("psql")
                .arg(&url)
                .arg("-c")
                .arg(format!("DROP SCHEMA {schema} CASCADE"))
                .output();
        }
        Err(_) => {
            println!("durable rotations on PostgreSQL: skipped (SPOTOKEN_TEST_DATABASE_URL unset)")
        }
    }
    Ok(())
}

fn spotoken_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name("spotoken")
}

fn time_run(cmd: &mut Command) -> Result<Duration, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let out = cmd.output()?;
    let d = t.elapsed();
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(d)
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// `spotoken token` on a cached token vs `/bin/true` vs `spotoken --version`,
/// interleaved; with `SPOTOKEN_BENCH_COMPARE` naming another `spotoken`
/// executable (an older build, say), its `token` joins the same loop, so two
/// builds are compared side by side in one run.
async fn cli() -> Result<(), Box<dyn std::error::Error>> {
    let bin = spotoken_bin();
    if !bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p spotoken-cli first",
            bin.display()
        )
        .into());
    }
    let emu = Emulator::start().await?;
    let dir = tempfile::tempdir()?;
    logged_in(&emu, dir.path(), Arc::new(AtomicI64::new(0))).await?;
    let env = |c: &mut Command| {
        c.env("SPOTOKEN_HOME", dir.path())
            .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("SPOTOKEN_ACCOUNTS_URL", emu.url())
            .env("SPOTOKEN_API_URL", emu.url())
            .env_remove("RUST_LOG");
    };
    let before = emu.counters();
    let (mut t_true, mut t_version, mut t_token) = (Vec::new(), Vec::new(), Vec::new());
    let compare = std::env::var_os("SPOTOKEN_BENCH_COMPARE").map(PathBuf::from);
    let mut t_compare = Vec::new();
    let mut t_full = Vec::new();
    let full = bin.with_file_name("spotoken-full");
    for _ in 0..400 {
        t_true.push(time_run(&mut Command::new("/bin/true"))?);
        let mut v = Command::new(&bin);
        v.arg("--version");
        env(&mut v);
        t_version.push(time_run(&mut v)?);
        let mut t = Command::new(&bin);
        t.arg("token");
        env(&mut t);
        t_token.push(time_run(&mut t)?);
        if let Some(other) = &compare {
            let mut o = Command::new(other);
            o.arg("token");
            env(&mut o);
            t_compare.push(time_run(&mut o)?);
        }
    }
    // The same command answered by the whole program (one 16 MiB executable),
    // in a loop of its own so it does not disturb the comparison above.
    let mut t_true2 = Vec::new();
    for _ in 0..200 {
        t_true2.push(time_run(&mut Command::new("/bin/true"))?);
        let mut f = Command::new(&full);
        f.arg("token");
        env(&mut f);
        t_full.push(time_run(&mut f)?);
    }
    let after = emu.counters();
    let (a, b, c) = (median(t_true), median(t_version), median(t_token));
    if let Some(other) = &compare {
        let m = median(t_compare);
        println!(
            "{} token (cached, same loop): median {:.2} ms; {:.2}x /bin/true",
            other.display(),
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / a.as_secs_f64()
        );
    }
    let (d, e) = (median(t_full), median(t_true2));
    println!(
        "spotoken-full token (the whole program answering): median {:.2} ms; /bin/true {:.2} ms; {:.2}x /bin/true",
        d.as_secs_f64() * 1e3,
        e.as_secs_f64() * 1e3,
        d.as_secs_f64() / e.as_secs_f64()
    );
    println!(
        "spotoken token (cached): median {:.2} ms; /bin/true {:.2} ms; spotoken --version {:.2} ms; ratios {:.2}x /bin/true, {:.2}x --version; token requests during the run: {}",
        c.as_secs_f64() * 1e3,
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        c.as_secs_f64() / a.as_secs_f64(),
        c.as_secs_f64() / b.as_secs_f64(),
        after.token_requests_for("refresh_token") - before.token_requests_for("refresh_token")
    );
    Ok(())
}

/// 16 processes on an expired account, against one bare token round trip.
async fn storm() -> Result<(), Box<dyn std::error::Error>> {
    let bin = spotoken_bin();
    let emu = Emulator::start().await?;
    emu.update(|s| {
        s.access_token_lifetime_secs = 600;
        s.token_latency_ms = 50;
    });
    let dir = tempfile::tempdir()?;
    let tokens = logged_in(&emu, dir.path(), Arc::new(AtomicI64::new(0))).await?;
    // One round trip, measured in-process: a forced refresh.
    let t = Instant::now();
    tokens.force_refresh("default").await?;
    let round_trip = t.elapsed();
    let before = emu.counters().token_requests_for("refresh_token");
    let store = Sqlite::open(dir.path().join("tokens.db"))?;
    let keys = spotoken::crypto::load_key_ring(&dir.path().join("master.key"), None)?;
    let mut results = Vec::new();
    for _ in 0..5 {
        // Age the stored token: a minute left, last refreshed an hour ago. (A
        // token obtained in the last 30 s is used as it is, whatever is asked.)
        let mut row = store.load("default").await?.ok_or("no account")?;
        row.access_expires_at = unix_now() + 60;
        row.last_refresh = Some(unix_now() - 3540);
        row.carry_secrets_to_next_version(&keys)?;
        store
            .update(row)
            .await?
            .ok_or("the row changed meanwhile")?;
        let start = Instant::now();
        let mut children = Vec::new();
        for _ in 0..16 {
            children.push(
                tokio::process::Command::new(&bin)
                    .args(["token", "--min-valid", "15m"])
                    .env("SPOTOKEN_HOME", dir.path())
                    .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
                    .env("SPOTOKEN_ACCOUNTS_URL", emu.url())
                    .env("SPOTOKEN_API_URL", emu.url())
                    .env_remove("RUST_LOG")
                    .output(),
            );
        }
        for c in children {
            let o = c.await?;
            if !o.status.success() {
                return Err(String::from_utf8_lossy(&o.stderr).into_owned().into());
            }
        }
        results.push(start.elapsed());
    }
    let storms = results.len();
    let refreshes = emu.counters().token_requests_for("refresh_token") - before;
    let m = median(results);
    println!(
        "16 processes storming an expired account: median {:.0} ms wall for all 16; one token round trip (50 ms emulated latency) {:.0} ms; overhead beyond one round trip {:.0} ms; {refreshes} token requests in {storms} storms",
        m.as_secs_f64() * 1e3,
        round_trip.as_secs_f64() * 1e3,
        (m.saturating_sub(round_trip)).as_secs_f64() * 1e3
    );
    Ok(())
}

/// nginx's master process: asked to stop (SIGQUIT would wait for clients;
/// SIGTERM stops now) so that its workers go with it.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Whether wrk or nginx is missing (then `bench` says it is skipped).
fn missing_tools(bench: &str) -> Result<bool, Box<dyn std::error::Error>> {
    for tool in ["wrk", "nginx"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout
            .is_empty()
        {
            println!("{bench} bench: skipped ({tool} missing: apt-get install -y wrk nginx)");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Starts nginx with `conf` (written to `dir`) and waits for `port`.
async fn start_nginx(
    dir: &Path,
    conf: &str,
    port: u16,
) -> Result<Nginx, Box<dyn std::error::Error>> {
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let nginx = Nginx(
        Command::new("nginx")
            .args([
                "-c",
                &dir.join("nginx.conf").display().to_string(),
                "-p",
                &dir.display().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The workers start after the master listens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(nginx)
}

/// A spawned process that is killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` and returns it with the first line of its `stdout`/`stderr`
/// that contains `marker`.
fn spawn_until(
    cmd: Command,
    from_stderr: bool,
    marker: &str,
) -> Result<(Child, String), Box<dyn std::error::Error>> {
    let (child, mut lines) = spawn_collect(cmd, from_stderr, marker)?;
    Ok((child, lines.pop().unwrap_or_default()))
}

/// Spawns `cmd` and returns it with the lines of its `stdout`/`stderr` up
/// to the first that contains `marker` (the last one).
fn spawn_collect(
    mut cmd: Command,
    from_stderr: bool,
    marker: &str,
) -> Result<(Child, Vec<String>), Box<dyn std::error::Error>> {
    use std::io::BufRead as _;
    use std::process::Stdio;
    cmd.stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn()?;
    let reader: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().ok_or("no stderr")?)
    } else {
        Box::new(child.stdout.take().ok_or("no stdout")?)
    };
    let mut lines = std::io::BufReader::new(reader).lines();
    let child = Child(child);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line?;
        let found = line.contains(marker);
        seen.push(line);
        if found {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, seen));
        }
    }
    Err(format!("the process ended before printing {marker:?}").into())
}

/// Logs a browser in through `spotoken serve`; returns the session cookie value.
async fn bff_login(
    http: &reqwest::Client,
    server: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let loc = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let cookie_of = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                c.strip_prefix(&format!("{name}="))
                    .map(|v| v.split(';').next().unwrap_or("").to_owned())
            })
    };
    let r = http.get(format!("{server}/auth/login")).send().await?;
    let binding = cookie_of(&r, "__Host-spotoken_login").ok_or("no login cookie")?;
    let r = http.get(loc(&r)).send().await?;
    let r = http
        .get(loc(&r))
        .header("cookie", format!("__Host-spotoken_login={binding}"))
        .send()
        .await?;
    Ok(cookie_of(&r, "__Host-spotoken_session").ok_or("no session cookie")?)
}

/// The access token of a session, from the server's `/auth/token`.
async fn session_token(
    http: &reqwest::Client,
    server: &str,
    session: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let r = http
        .get(format!("{server}/auth/token"))
        .header("cookie", format!("__Host-spotoken_session={session}"))
        .header("x-requested-with", "bench")
        .send()
        .await?;
    let token: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
    Ok(token["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned())
}

fn wrk(url: &str, header: &str) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "-d8s", "--latency", "-H", header, url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"))?;
    let p50 = text
        .lines()
        .find(|l| l.trim_start().starts_with("50%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_wrk_latency)
        .ok_or("no 50% latency")?;
    if text.contains("Non-2xx") {
        return Err(format!("wrk saw errors: {text}").into());
    }
    Ok((rps, p50))
}

/// wrk latencies: "1.23ms", "456.00us", "1.2s" → milliseconds.
fn parse_wrk_latency(s: &str) -> f64 {
    let num = |suffix: &str| s.strip_suffix(suffix).and_then(|v| v.parse::<f64>().ok());
    num("us")
        .map(|v| v / 1000.0)
        .or_else(|| num("ms"))
        .or_else(|| num("s").map(|v| v * 1000.0))
        .unwrap_or(f64::NAN)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<f64>().ok())
                })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `spotoken serve` against nginx `proxy_pass` to the same emulator, and its
/// memory with 10,000 sessions.
async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    if missing_tools("serve")? {
        return Ok(());
    }
    let bin = spotoken_bin();
    let dir = tempfile::tempdir()?;
    let mut emu_cmd = Command::new(&bin);
    emu_cmd.args(["emulate", "--port", "0"]);
    let (_emu, line) = spawn_until(emu_cmd, false, "listening on")?;
    let emu_url = line.rsplit(' ').next().ok_or("no emulator URL")?.to_owned();
    let logs = std::env::var_os("SPOTOKEN_BENCH_LOGS").is_some();
    let mut serve_cmd = Command::new(&bin);
    serve_cmd
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("SPOTOKEN_HOME", dir.path())
        .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
        .env("SPOTOKEN_ACCOUNTS_URL", &emu_url)
        .env("SPOTOKEN_API_URL", &emu_url)
        // SPOTOKEN_BENCH_LOGS=1: each request logged on both sides (serve's
        // default, nginx's access log to a file); else on neither.
        .env("RUST_LOG", if logs { "info" } else { "warn" });
    let (server, line) = spawn_until(serve_cmd, true, "listening on")?;
    let server_url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or("no server URL")?
        .to_owned();
    spotoken::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let session = bff_login(&http, &server_url).await?;
    let bearer = session_token(&http, &server_url, &session).await?;
    // nginx: two workers (as the server's two runtime threads), keep-alive upstream.
    let emu_port = emu_url.rsplit(':').next().ok_or("no port")?;
    let nginx_port = free_port()?;
    let conf = format!(
        "worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/error.log; daemon off;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log {access}; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
           upstream emu {{ server 127.0.0.1:{emu_port}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{nginx_port};\n\
             location /api/ {{ proxy_pass http://emu/; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_set_header Authorization \"Bearer {bearer}\"; }} }} }}\n",
        dir = dir.path().display(),
        access = if logs {
            format!("{}/access.log", dir.path().display())
        } else {
            "off".to_owned()
        }
    );
    let _nginx = start_nginx(dir.path(), &conf, nginx_port).await?;
    let cookie = format!("Cookie: __Host-spotoken_session={session}");
    let auth = format!("Authorization: Bearer {bearer}");
    // Warm up all three paths (connection pools, caches) before measuring.
    for url in [
        format!("{emu_url}/v1/me"),
        format!("http://127.0.0.1:{nginx_port}/api/v1/me"),
        format!("{server_url}/api/v1/me"),
    ] {
        let h = if url.starts_with(&server_url) {
            &cookie
        } else {
            &auth
        };
        let _ = Command::new("wrk")
            .args(["-t2", "-c64", "-d2s", "-H", h, &url])
            .output()?;
    }
    if std::env::var_os("SPOTOKEN_BENCH_HOLD").is_some() {
        // For profiling by hand: everything is up; print how to reach it.
        println!(
            "holding until stdin closes\nemulator: {emu_url} (pid {})\nnginx: http://127.0.0.1:{nginx_port}/api/v1/me\n\
             serve: {server_url}/api/v1/me (pid {})\nserve header: {cookie}\nemulator header: {auth}",
            _emu.0.id(),
            server.0.id()
        );
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return Ok(());
    }
    // Interleaved rounds, the two proxies in alternating order (whatever
    // runs second in a round has a warmer or a more tired machine).
    let mut rows = Vec::new();
    for round in 0..5 {
        let direct = wrk(&format!("{emu_url}/v1/me"), &auth)?;
        let nginx = || {
            wrk(
                &format!("http://127.0.0.1:{nginx_port}/api/v1/me"),
                "X-Bench: 1",
            )
        };
        let ours = || wrk(&format!("{server_url}/api/v1/me"), &cookie);
        let (nginx, ours) = if round % 2 == 0 {
            let n = nginx()?;
            (n, ours()?)
        } else {
            let o = ours()?;
            (nginx()?, o)
        };
        rows.push((round, direct, nginx, ours));
    }
    let throughput: Vec<f64> = rows.iter().map(|(_, _, n, o)| o.0 / n.0).collect();
    let p50: Vec<f64> = rows.iter().map(|(_, _, n, o)| o.1 / n.1).collect();
    for (round, direct, nginx, ours) in &rows {
        println!(
            "proxy round {round}: emulator direct {:.0} req/s (p50 {:.2} ms); nginx proxy_pass {:.0} req/s (p50 {:.2} ms); \
             spotoken serve {:.0} req/s (p50 {:.2} ms); serve/nginx throughput {:.2}x, p50 {:.2}x",
            direct.0,
            direct.1,
            nginx.0,
            nginx.1,
            ours.0,
            ours.1,
            ours.0 / nginx.0,
            ours.1 / nginx.1
        );
    }
    println!(
        "proxy median of {} rounds: serve/nginx throughput {:.2}x, p50 {:.2}x",
        rows.len(),
        median(throughput),
        median(p50)
    );
    // Memory: 10,000 sessions (SPOTOKEN_BENCH_SESSIONS), each used once through the proxy.
    let n: usize = std::env::var("SPOTOKEN_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    if n == 0 {
        return Ok(());
    }
    let before = rss_mb(server.0.id());
    let sessions = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (http, url, permit) = (
            http.clone(),
            server_url.clone(),
            sessions.clone().acquire_owned().await?,
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let s = bff_login(&http, &url).await.map_err(|e| e.to_string())?;
            let r = http
                .get(format!("{url}/api/v1/me"))
                .header("cookie", format!("__Host-spotoken_session={s}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() != 200 {
                return Err(format!("HTTP {}", r.status()));
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let after = rss_mb(server.0.id());
    let threads = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "spotoken serve resident memory: {after:.1} MB with {n} active sessions (each logged in and used once), {threads} threads; {before:.1} MB with one"
    );
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What one `wrk` run reports.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
}

fn wrk_load(
    url: &str,
    header: &str,
    conns: u32,
    secs: u32,
) -> Result<Load, Box<dyn std::error::Error>> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            header,
            url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors: {text}").into());
    }
    let percentile = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(parse_wrk_latency)
            .ok_or_else(|| format!("no {p} latency in wrk output: {text}"))
    };
    Ok(Load {
        rps: text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no Requests/sec in wrk output: {text}"))?,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        requests: text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| format!("no request count in wrk output: {text}"))?,
    })
}

/// User + system CPU seconds of these processes so far (`/proc/<pid>/stat`).
fn cpu_secs(pids: &[u32]) -> f64 {
    // Clock ticks per second: 100 on Linux (USER_HZ) whatever the kernel's HZ.
    const TICKS: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which may hold spaces: state is
            // the first, utime the 12th, stime the 13th.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / TICKS
}

/// A process and its children (nginx's master and its workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    pids
}

/// The emulator's connection and handshake counters, over its control plane.
async fn upstream_counters(
    http: &reqwest::Client,
    emu_url: &str,
) -> Result<[u64; 4], Box<dyn std::error::Error>> {
    let c: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{emu_url}/_emulator/counters"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    Ok([
        n("connections"),
        n("tls_full_handshakes"),
        n("tls_resumed_handshakes"),
        n("http2_connections"),
    ])
}

/// A proxy under test in the realistic run.
struct Proxy {
    name: &'static str,
    url: String,
    header: String,
    pids: Vec<u32>,
}

/// `spotoken serve` (HTTP/1.1 and HTTP/2 to the upstream) against nginx
/// `proxy_pass`, all to the emulator's TLS port with 20 ms of latency
/// added to every Web API answer, 256 clients.
async fn realistic() -> Result<(), Box<dyn std::error::Error>> {
    if missing_tools("realistic")? {
        return Ok(());
    }
    let conns: u32 = env_or("SPOTOKEN_BENCH_CONNECTIONS", 256);
    let secs: u32 = env_or("SPOTOKEN_BENCH_SECONDS", 8);
    let rounds: u32 = env_or("SPOTOKEN_BENCH_ROUNDS", 3);
    let latency_ms: u32 = env_or("SPOTOKEN_BENCH_LATENCY_MS", 20);
    let bin = spotoken_bin();
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    let mut emu_cmd = Command::new(&bin);
    emu_cmd
        .args(["emulate", "--port", "0", "--tls-port", "0", "--http2"])
        .arg("--tls-ca-out")
        .arg(&ca)
        .arg("--api-latency")
        .arg(format!("{latency_ms}ms"));
    let (emu, lines) = spawn_collect(emu_cmd, false, "tls url:")?;
    let word_after = |marker: &str| {
        lines
            .iter()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http")))
            .map(str::to_owned)
            .ok_or_else(|| format!("no {marker} in the emulator's output: {lines:?}"))
    };
    let emu_url = word_after("listening on")?;
    let tls_url = word_after("tls url:")?;
    let tls_port = tls_url.rsplit(':').next().ok_or("no TLS port")?.to_owned();
    spotoken::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Two servers to the same upstream: HTTP/1.1 and HTTP/2.
    let mut servers = Vec::new();
    for (name, h2) in [("serve HTTP/1.1", false), ("serve HTTP/2", true)] {
        let home = dir.path().join(if h2 { "h2" } else { "h1" });
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--upstream-ca"])
            .arg(&ca)
            .env("SPOTOKEN_HOME", &home)
            .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("SPOTOKEN_ACCOUNTS_URL", &emu_url)
            .env("SPOTOKEN_API_URL", &tls_url)
            .env("RUST_LOG", "warn");
        if h2 {
            cmd.arg("--upstream-http2");
        }
        let (child, line) = spawn_until(cmd, true, "listening on")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or("no server URL")?
            .to_owned();
        let session = bff_login(&http, &url).await?;
        servers.push((name, child, url, session));
    }
    let bearer = session_token(&http, &servers[0].2, &servers[0].3).await?;
    // nginx: two workers, TLS to the upstream with session reuse, enough
    // idle keep-alive connections per worker for every client.
    let nginx_port = free_port()?;
    let conf = format!(
        "worker_processes 2; pid {dir}/nginx.pid; error_log {dir}/error.log; daemon off;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
           upstream emu {{ server 127.0.0.1:{tls_port}; keepalive {conns}; }}\n\
           server {{ listen 127.0.0.1:{nginx_port};\n\
             location /api/ {{ proxy_pass https://emu/; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca};\n\
               proxy_ssl_name localhost;\n\
               proxy_set_header Authorization \"Bearer {bearer}\"; }} }} }}\n",
        dir = dir.path().display(),
        ca = ca.display(),
    );
    let nginx = start_nginx(dir.path(), &conf, nginx_port).await?;
    let mut proxies = vec![Proxy {
        name: "nginx proxy_pass",
        url: format!("http://127.0.0.1:{nginx_port}/api/v1/me"),
        header: "X-Bench: 1".into(),
        pids: with_children(nginx.0.id()),
    }];
    for (name, child, url, session) in &servers {
        proxies.push(Proxy {
            name,
            url: format!("{url}/api/v1/me"),
            header: format!("Cookie: __Host-spotoken_session={session}"),
            pids: vec![child.0.id()],
        });
    }
    // A cold start each: the connections and handshakes a proxy makes
    // from nothing to a warm pool (as the upstream counts them).
    for p in &proxies {
        let before = upstream_counters(&http, &emu_url).await?;
        let load = wrk_load(&p.url, &p.header, conns, 2)?;
        let after = upstream_counters(&http, &emu_url).await?;
        println!(
            "realistic warm-up {}: {:.0} req/s; upstream connections {}, TLS handshakes {} full + {} resumed, HTTP/2 connections {}",
            p.name,
            load.rps,
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
            after[3] - before[3]
        );
    }
    if std::env::var_os("SPOTOKEN_BENCH_HOLD").is_some() {
        println!(
            "holding until stdin closes\nemulator: {emu_url} (TLS {tls_url}, pid {})",
            emu.0.id()
        );
        for p in &proxies {
            println!(
                "{}: {} (pids {:?}) header {}",
                p.name, p.url, p.pids, p.header
            );
        }
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return Ok(());
    }
    // Interleaved rounds, the order rotating from round to round.
    let mut results: Vec<Vec<(Load, f64, [u64; 4])>> = vec![Vec::new(); proxies.len()];
    for round in 0..rounds as usize {
        for k in 0..proxies.len() {
            let i = (round + k) % proxies.len();
            let p = &proxies[i];
            let before = upstream_counters(&http, &emu_url).await?;
            let cpu0 = cpu_secs(&p.pids);
            let load = wrk_load(&p.url, &p.header, conns, secs)?;
            let cpu = cpu_secs(&p.pids) - cpu0;
            let after = upstream_counters(&http, &emu_url).await?;
            let delta = [
                after[0] - before[0],
                after[1] - before[1],
                after[2] - before[2],
                after[3] - before[3],
            ];
            println!(
                "realistic round {round} {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, proxy CPU {:.1} us/request; \
                 new upstream connections {}, TLS handshakes {} full + {} resumed",
                p.name,
                load.rps,
                load.p50_ms,
                load.p99_ms,
                cpu / load.requests * 1e6,
                delta[0],
                delta[1],
                delta[2]
            );
            results[i].push((load, cpu / load.requests * 1e6, delta));
        }
    }
    let nginx_runs = &results[0];
    for (i, p) in proxies.iter().enumerate().skip(1) {
        let ours = &results[i];
        let ratio = |f: &dyn Fn(&Load) -> f64| {
            median(
                ours.iter()
                    .zip(nginx_runs)
                    .map(|(o, n)| f(&o.0) / f(&n.0))
                    .collect::<Vec<f64>>(),
            )
        };
        println!(
            "realistic median of {rounds} rounds, {} / nginx: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per request {:.2}x",
            p.name,
            ratio(&|l| l.rps),
            ratio(&|l| l.p50_ms),
            ratio(&|l| l.p99_ms),
            median(
                ours.iter()
                    .zip(nginx_runs)
                    .map(|(o, n)| o.1 / n.1)
                    .collect::<Vec<f64>>()
            )
        );
    }
    let totals = upstream_counters(&http, &emu_url).await?;
    println!(
        "realistic upstream totals (all proxies, whole run): {} connections, {} full + {} resumed TLS handshakes, {} HTTP/2 connections",
        totals[0], totals[1], totals[2], totals[3]
    );
    drop(emu);
    Ok(())
}

/// A number from the environment, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` of a process, in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The database URL with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let head = base.rsplit_once('/').map_or(base, |(h, _)| h);
    match query {
        Some(q) => format!("{head}/{db}?{q}"),
        None => format!("{head}/{db}"),
    }
}

/// psql with one command against `url`.
fn psql(url: &str, sql: &str) -> Result<(), Box<dyn std::error::Error>> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()?;
    if !out.status.success() {
        return Err(format!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Drops the fleet's database when the bench ends, however it ends.
struct Database {
    admin_url: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// 100,000 sessions (10% of them used during the run) on three `spotoken
/// serve` instances sharing one PostgreSQL database. The access tokens of
/// all sessions come due evenly over a scaled hour
/// (`SPOTOKEN_BENCH_FLEET_HOUR_SECS`, default 360: the hour's refreshes in
/// a tenth of the time, as the binary has no clock to move forward).
async fn fleet() -> Result<(), Box<dyn std::error::Error>> {
    let sessions: usize = env_or("SPOTOKEN_BENCH_FLEET_SESSIONS", 100_000);
    let active = (sessions / 10).max(1);
    let hour: u64 = env_or("SPOTOKEN_BENCH_FLEET_HOUR_SECS", 360);
    let instances: usize = env_or("SPOTOKEN_BENCH_FLEET_INSTANCES", 3);
    let budget: u32 = env_or("SPOTOKEN_BENCH_FLEET_BUDGET", 50);
    // The refresher refreshes a token with less than this left (its default).
    const AHEAD: i64 = 600;
    // Seeding and start-up happen before the first token comes due.
    let margin: i64 = env_or("SPOTOKEN_BENCH_FLEET_MARGIN_SECS", 240);
    let admin_url = std::env::var("SPOTOKEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("spotoken_fleet_{}", std::process::id());
    psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
    let db = Database {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let url = with_database(&admin_url, &name);
    let bin = spotoken_bin();
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let emu = Emulator::start().await?;
    // Every refresh presents a refresh token used by no refresh before it:
    // a second use of one is a duplicate refresh.
    emu.update(|s| s.rotation = spotoken_emulator::Rotation::Rotate);
    let keys = Arc::new(spotoken::crypto::load_key_ring(
        &home.join("master.key"),
        None,
    )?);
    let store = Arc::new(spotoken::store::Postgres::connect(&url).await?);

    // Seed: a grant at the emulator, a sealed row and a session per account.
    let t = Instant::now();
    let start = unix_now();
    let mut cookies = Vec::with_capacity(active);
    let mut first_refresh = Vec::with_capacity(sessions);
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let (access, refresh) = emu.issue_grant("alice", "user-read-private");
        first_refresh.push(refresh.clone());
        let cookie = format!("fleet-session-{i:06}-{}", spotoken_emulator::new_secret());
        if i < active {
            cookies.push(cookie.clone());
        }
        // Due evenly over the hour, active and idle alike (i spread by a
        // stride so that each tenth of the hour has its share of both).
        let slot = (i * 7919) % sessions;
        let expires = start + margin + AHEAD + (slot as i64 * hour as i64) / sessions as i64;
        let (store, keys, permit) = (
            store.clone(),
            keys.clone(),
            limit.clone().acquire_owned().await?,
        );
        tasks.spawn(async move {
            let _permit = permit;
            seed_one(&store, &keys, i, &access, &refresh, expires, &cookie).await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seeded = t.elapsed();
    println!(
        "fleet: seeded {sessions} sessions ({active} to be active) in {:.1} s",
        seeded.as_secs_f64()
    );

    // The instances.
    let help = Command::new(&bin).args(["serve", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut servers = Vec::new();
    for _ in 0..instances {
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--database-url", &url])
            .env("SPOTOKEN_HOME", home)
            .env("SPOTOKEN_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("SPOTOKEN_ACCOUNTS_URL", emu.url())
            .env("SPOTOKEN_API_URL", emu.url())
            .env("RUST_LOG", "warn");
        if help.contains("--token-budget") {
            cmd.arg("--token-budget").arg(format!("{budget}/s"));
        }
        let (child, line) = spawn_until(cmd, true, "listening on")?;
        let server_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .ok_or("no server URL")?
            .to_owned();
        servers.push((child, server_url));
    }
    let pids: Vec<u32> = servers.iter().map(|(c, _)| c.0.id()).collect();
    let urls: Vec<String> = servers.iter().map(|(_, u)| u.clone()).collect();
    println!(
        "fleet: {instances} instances up {:.1} s after the seeding began; token budget {}",
        t.elapsed().as_secs_f64(),
        if help.contains("--token-budget") {
            format!("{budget}/s")
        } else {
            "not offered by this build".into()
        }
    );
    spotoken::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()?;
    let get = |i: usize, k: usize| {
        let (http, url, cookie) = (
            http.clone(),
            urls[k % urls.len()].clone(),
            cookies[i].clone(),
        );
        async move {
            http.get(format!("{url}/api/v1/me"))
                .header("cookie", format!("__Host-spotoken_session={cookie}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // The active sessions are used once at the start, through every
    // instance in turn, as their users arrive.
    let before = emu.counters().token_requests_for("refresh_token");
    let mut warm = tokio::task::JoinSet::new();
    let mut failed = 0;
    for i in 0..active {
        warm.spawn(get(i, i));
        while warm.len() >= 64 {
            if let Some(Ok(s)) = warm.join_next().await
                && s != 200
            {
                failed += 1;
            }
        }
    }
    while let Some(r) = warm.join_next().await {
        if r.map_or(true, |s| s != 200) {
            failed += 1;
        }
    }
    let on_request = emu.counters().token_requests_for("refresh_token") - before;
    println!(
        "fleet: first use of the {active} active sessions: {failed} not 200, {on_request} refreshes on request"
    );

    // The run: sample active sessions through the proxy, watch the token
    // endpoint's rate and the instances' CPU, until the hour is over.
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_secs(&[*p])).collect();
    let refreshes0 = emu.counters().token_requests_for("refresh_token");
    let api401_0 = emu.counters().api_status(401);
    let end = start + margin + hour as i64 + 30;
    let mut per_second: Vec<u64> = Vec::new();
    let mut last = refreshes0;
    let (mut sampled, mut sample_failures) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut k = 0usize;
    while unix_now() < end {
        tick.tick().await;
        let now_count = emu.counters().token_requests_for("refresh_token");
        per_second.push(now_count - last);
        last = now_count;
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..20 {
            k += 1;
            batch.spawn(get((k * 2_654_435_761) % active, k));
        }
        while let Some(r) = batch.join_next().await {
            sampled += 1;
            if r.map_or(true, |s| s != 200) {
                sample_failures += 1;
            }
        }
        if per_second.len().is_multiple_of(60) {
            println!(
                "fleet: {} s into the run, {} refreshes so far",
                per_second.len(),
                now_count - refreshes0
            );
        }
    }
    let counters = emu.counters();
    let refreshes = counters.token_requests_for("refresh_token") - refreshes0;
    let api401 = counters.api_status(401) - api401_0;
    let peak_1s = per_second.iter().copied().max().unwrap_or(0);
    let peak_30s = per_second
        .windows(30)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or_else(|| per_second.iter().sum());
    let duplicates: u64 = counters
        .refresh_token_uses
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    let first_used = |range: std::ops::Range<usize>| {
        first_refresh[range]
            .iter()
            .filter(|t| counters.refresh_token_uses_of(t) > 0)
            .count()
    };
    let (active_refreshed, idle_refreshed) = (first_used(0..active), first_used(active..sessions));
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_secs(&[*p]) - c0)
        .collect();
    let cpu_total: f64 = cpu.iter().sum();
    println!(
        "fleet: {} s run (scaled hour {hour} s); refreshes {refreshes} ({:.0}/scaled hour; accounts first refreshed: {active_refreshed} of {active} active, {idle_refreshed} of {} idle); \
         duplicate refreshes {duplicates}; token outcomes {:?}",
        per_second.len(),
        refreshes as f64 * hour as f64 / per_second.len().max(1) as f64,
        sessions - active,
        counters.token_requests.get("refresh_token")
    );
    println!(
        "fleet: token endpoint peak {peak_1s} in 1 s, {peak_30s} in 30 s (budget {budget}/s = {} per 30 s); proxy samples {sampled}, not 200: {sample_failures}; Web API 401s {api401}",
        budget * 30
    );
    println!(
        "fleet: instance CPU over the run {:?} s (sum {:.1} s; {:.2} ms per refresh, all work included)",
        cpu.iter()
            .map(|c| (c * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        cpu_total,
        cpu_total * 1e3 / refreshes.max(1) as f64
    );
    for (i, (pid, url)) in pids.iter().zip(&urls).enumerate() {
        let (rss, hwm) = memory_mb(*pid);
        let metrics = http
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await
            .unwrap_or_default();
        let refresher: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#') && (l.contains("refresh") || l.contains("pass")))
            .collect();
        println!("fleet instance {i}: VmRSS {rss:.1} MB, VmHWM {hwm:.1} MB; {refresher:?}");
    }
    drop(servers);
    drop(store);
    drop(db);
    Ok(())
}

/// One seeded account: its row, sealed as a login writes it, and its session.
async fn seed_one(
    store: &spotoken::store::Postgres,
    keys: &spotoken::crypto::KeyRing,
    i: usize,
    access: &str,
    refresh: &str,
    expires: i64,
    cookie: &str,
) -> Result<(), Error> {
    use spotoken::crypto::Field;
    use spotoken::store::{SessionRecord, SessionStore as _};
    let account = format!("web-fleet-{i:06}");
    let version = spotoken::store::fresh_version();
    let now = unix_now();
    let row = Row {
        account: account.clone(),
        client_id: DEFAULT_CLIENT_ID.into(),
        user_id: Some("alice".into()),
        display_name: None,
        scopes: Scopes::parse("user-read-private"),
        authorized_at: now,
        access_token: Some(keys.seal_row(
            &account,
            Field::AccessToken,
            version,
            access.as_bytes(),
        )?),
        access_expires_at: expires,
        refresh_token: keys.seal_row(&account, Field::RefreshToken, version, refresh.as_bytes())?,
        last_refresh: Some(expires - 3600),
        state: AccountState::Active,
        // Written only where there is no row: the row gets `version`.
        version: -version,
        updated_at: now,
        issuer: None,
    };
    store
        .update(row)
        .await?
        .ok_or_else(|| Error::Internal(format!("{account} existed already")))?;
    store
        .put_session(SessionRecord {
            id_hash: spotoken::store::sessions::hash(cookie),
            account,
            created_at: now,
            expires_at: now + 30 * 24 * 3600,
        })
        .await
}
