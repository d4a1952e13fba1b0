//! Reliability of the real binaries under load: many `spotoken` processes on
//! one store at the same moment, against the emulator.

mod common;

use std::io::Read as _;

use common::{BIN, Env, age_account};
use spotoken_emulator::Rotation;

/// The outcome of one process.
struct Out {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Starts one process per entry of `runs`, all held at a barrier until every
/// one has started, then released together; waits for all.
///
/// The barrier is two FIFOs: each child (a shell that then `exec`s the
/// binary, keeping its process id) opens `go`, reports on `ready`, and blocks
/// reading `go`; once all have reported, closing the test's end of `go`
/// makes every read return at once.
async fn at_once(env: &Env, runs: &[&[&str]]) -> Vec<Out> {
    let dir = tempfile::tempdir().expect("tmp");
    let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
    for fifo in [&ready, &go] {
        let made = std::process::Command::new("mkfifo")
            .arg(fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
    }
    // Read and write: opening never blocks, and the pipes stay open
    // whatever the children do.
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open fifo")
    };
    let (mut ready_end, go_end) = (open(&ready), open(&go));
    let script = r#"exec 3<"$GO"; echo >"$READY"; read _ <&3; exec 3<&-; exec "$@""#;
    let mut children = Vec::new();
    for args in runs {
        let mut c = env.cmd_program("sh", &["-c", script, "sh", BIN]);
        c.args(*args).env("GO", &go).env("READY", &ready);
        children.push((args.join(" "), c.spawn().expect("spawn")));
    }
    let n = runs.len();
    tokio::task::spawn_blocking(move || {
        let mut seen = vec![0u8; n];
        ready_end
            .read_exact(&mut seen)
            .expect("every child is ready");
        // Nothing is written: closing the only writer is the start signal.
        drop(go_end);
    })
    .await
    .expect("barrier");
    let mut outs = Vec::new();
    for (args, child) in children {
        let o = child.wait_with_output().await.expect("wait");
        outs.push(Out {
            args: args.split(' ').map(str::to_owned).collect(),
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        });
    }
    outs
}

/// A home logged in to an emulator that rotates refresh tokens and revokes
/// the grant when a rotated one is reused; the stored access token has a
/// minute left; the counters start at zero.
async fn logged_in_with_a_stale_token() -> Env {
    let env = Env::new().await;
    env.emu.update(|s| {
        s.rotation = Rotation::RotateReuseDetection;
        s.access_token_lifetime_secs = 3600;
    });
    assert_eq!(env.login(&[], |l| l).await.code, 0);
    age_account(&env).await;
    env.emu.reset_counters();
    env
}

fn assert_all_succeeded(outs: &[Out]) {
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| o.code != 0)
        .map(|o| format!("{:?} exit {}: {}", o.args, o.code, o.stderr))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        outs.len(),
        failed.join("\n")
    );
}

/// Issue 14: 48 `spotoken token` started at once after expiry made one
/// refresh, but some exited 1 with "database is locked". Every caller gets
/// its token, and the store still sees exactly one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_processes_after_expiry_all_get_the_token_from_one_refresh() {
    let env = logged_in_with_a_stale_token().await;
    let token: &[&str] = &["token", "--min-valid", "5m"];
    let outs = at_once(&env, &vec![token; 64]).await;
    assert_all_succeeded(&outs);
    let first = outs[0].stdout.trim_end();
    assert!(first.starts_with("BQ"), "{first:?}");
    assert!(outs.iter().all(|o| o.stdout.trim_end() == first));
    let c = env.emu.counters();
    assert_eq!(c.token_requests_for("refresh_token"), 1, "{c:?}");
    assert_eq!(c.max_peak_concurrent_refreshes(), 1);
}

/// The same storm with forced refreshes among the readers: each `refresh`
/// commits a rotation while the others open the store, and every one of the
/// 80 processes still succeeds, one token request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_refresh_processes_at_once_all_succeed_one_request_at_a_time() {
    let env = logged_in_with_a_stale_token().await;
    let token: &[&str] = &["token", "--min-valid", "5m"];
    let refresh: &[&str] = &["refresh"];
    let runs: Vec<&[&str]> = (0..80)
        .map(|i| if i % 5 == 2 { refresh } else { token })
        .collect();
    let outs = at_once(&env, &runs).await;
    assert_all_succeeded(&outs);
    for o in outs.iter().filter(|o| o.args[0] == "token") {
        let t = o.stdout.trim_end();
        assert!(t.starts_with("BQ") && !t.contains('\n'), "{t:?}");
    }
    let c = env.emu.counters();
    let refreshes = c.token_requests_for("refresh_token");
    // Each `refresh` makes its own; the readers at most one more.
    assert!((16..=17).contains(&refreshes), "{c:?}");
    assert_eq!(c.token_outcome("refresh_token", "ok"), refreshes, "{c:?}");
    assert_eq!(c.max_peak_concurrent_refreshes(), 1, "{c:?}");
}
