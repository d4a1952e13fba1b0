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
    mut cmd: Command,
    from_stderr: bool,
    marker: &str,
) -> Result<(Child, String), Box<dyn std::error::Error>> {
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
    for line in lines.by_ref() {
        let line = line?;
        if line.contains(marker) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, line));
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
    for tool in ["wrk", "nginx"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout
            .is_empty()
        {
            println!("serve bench: skipped ({tool} missing: apt-get install -y wrk nginx)");
            return Ok(());
        }
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
    let token: serde_json::Value = {
        let r = http
            .get(format!("{server_url}/auth/token"))
            .header("cookie", format!("__Host-spotoken_session={session}"))
            .header("x-requested-with", "bench")
            .send()
            .await?;
        serde_json::from_slice(&r.bytes().await?)?
    };
    let bearer = token["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
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
    std::fs::write(dir.path().join("nginx.conf"), conf)?;
    let _nginx = Nginx(
        Command::new("nginx")
            .args([
                "-c",
                &dir.path().join("nginx.conf").display().to_string(),
                "-p",
                &dir.path().display().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", nginx_port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
