//! Child processes without our secrets.
//!
//! The notify command and the browser opener are other people's programs; they
//! inherit the environment, which may hold the master key, the client secret or
//! a database password. Every child spotoken starts is built here, so none of
//! those variables reaches it. (The hand-over from `spotoken` to
//! `spotoken-full` is not a child: it is this program, and needs them.)

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::cli::defs::{
    BROWSER_ENV, CLIENT_SECRET_ENV, DATABASE_URL_ENV, EMULATOR_CLIENT_SECRET_ENV,
    FAST_PATH_TRIED_ENV, MASTER_KEY_ENV,
};

/// The environment variables a child must not see.
pub(crate) const SECRET_VARIABLES: &[&str] = &[
    MASTER_KEY_ENV,
    CLIENT_SECRET_ENV,
    EMULATOR_CLIENT_SECRET_ENV,
    // May carry a password (postgres://user:password@host/db).
    DATABASE_URL_ENV,
    "PGPASSWORD",
];

/// A command for `program` whose environment lacks [`SECRET_VARIABLES`].
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    scrub(&mut cmd);
    cmd
}

fn scrub(cmd: &mut Command) {
    for name in SECRET_VARIABLES {
        cmd.env_remove(name);
    }
    // Not a secret, but meant for this program's own hand-over only.
    cmd.env_remove(FAST_PATH_TRIED_ENV);
}

/// Opens `url` with `SPOTOKEN_BROWSER` (a shell command that gets the URL as
/// `$1`) or the desktop's opener, without waiting for it.
pub(crate) fn open_url(url: &str) -> std::io::Result<()> {
    let commands = match std::env::var(BROWSER_ENV) {
        Ok(cmd) if !cmd.is_empty() => {
            let mut sh = command("sh");
            sh.arg("-c").arg(format!("{cmd} \"$1\"")).arg("sh").arg(url);
            vec![sh]
        }
        _ => open::commands(url),
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no URL opener found");
    for mut cmd in commands {
        scrub(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(mut child) => {
                // Reaped when it exits; a browser may outlive the login.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_command_removes_every_secret_variable() {
        let removed: Vec<String> = command("env")
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for name in SECRET_VARIABLES {
            assert!(removed.iter().any(|r| r == name), "{name} is not removed");
        }
    }
}
