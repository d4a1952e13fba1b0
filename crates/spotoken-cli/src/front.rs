//! The small `spotoken` executable's hand-over to `spotoken-full`.
//!
//! Everything the fast path does not answer (every command but a fresh cached
//! `token`, and `token` itself when the token is stale, missing or unreadable)
//! runs in `spotoken-full`, installed beside `spotoken` (`cargo install`
//! installs both). On Unix the hand-over is `exec`: same process id, same
//! arguments, environment and standard streams, so signals, exit codes and a
//! daemon under systemd behave as if there were one executable.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::cli::defs::FAST_PATH_TRIED_ENV;

/// The full program's file name (without the platform's executable suffix).
pub(crate) const FULL: &str = "spotoken-full";

/// Where the full program is: beside this executable, symlinks resolved.
fn full_program() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(format!("{FULL}{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs `spotoken-full` with this process's arguments; returns only on failure
/// to start it (on Unix: exit code 2), or with its exit code (elsewhere).
/// `fast_path_tried`: the fast path read the token and could not answer, so
/// `spotoken-full` starts past it ([`FAST_PATH_TRIED_ENV`]).
pub(crate) fn hand_over(mut args: impl Iterator<Item = OsString>, fast_path_tried: bool) -> u8 {
    let arg0 = args.next().unwrap_or_else(|| OsString::from("spotoken"));
    let path = match full_program() {
        Ok(p) => p,
        Err(e) => return cannot_start(&PathBuf::from(FULL), &e),
    };
    let mut cmd = Command::new(&path);
    cmd.args(args);
    if fast_path_tried {
        cmd.env(FAST_PATH_TRIED_ENV, "1");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let e = cmd.arg0(arg0).exec();
        cannot_start(&path, &e)
    }
    #[cfg(not(unix))]
    {
        let _ = arg0;
        match cmd.status() {
            Ok(s) => u8::try_from(s.code().unwrap_or(1)).unwrap_or(1),
            Err(e) => cannot_start(&path, &e),
        }
    }
}

fn cannot_start(path: &std::path::Path, e: &std::io::Error) -> u8 {
    eprintln!(
        "error: cannot run {} ({e}): spotoken needs {FULL} installed beside it \
         (`cargo install --path crates/spotoken-cli` installs both)",
        path.display()
    );
    2
}
