//! Files that hold secrets: directories 0700, files 0600, created that way from
//! the start (never chmod-ed after the fact, when a secret may already be there).
//!
//! A directory spotoken did not create keeps its mode: tightening `/tmp` or a
//! shared directory would break everyone else in it. Instead a secret is
//! refused where other users could swap it: in a directory they can write to,
//! unless the directory is sticky (like `/tmp`, where only a file's owner may
//! rename or delete it) and the file is ours.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::Error;

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates `dir` (and missing parents) with mode 0700; an existing directory
/// keeps its mode, but is refused if other users can write to it and it is
/// not sticky.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    let err = |e: std::io::Error| {
        Error::Configuration(format!(
            "cannot create the directory {}: {e}",
            dir.display()
        ))
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = std::fs::metadata(dir).map_err(err)?;
    check_dir_mode(dir, meta.mode())
}

/// Refuses a directory that others can write to unless it is sticky.
fn check_dir_mode(dir: &Path, mode: u32) -> Result<(), Error> {
    if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
        return Err(Error::Configuration(format!(
            "{} is writable by other users (mode {:o}) and not sticky, so they could replace \
             spotoken's files in it; use a directory only you can write to (or `chmod go-w {}`)",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// Whether `dir` is writable by others (then only a sticky one got this far).
fn is_shared(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.mode() & GROUP_OTHER_WRITE != 0)
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// In a directory others can write to, refuses a file that is not ours.
fn check_owner(path: &Path, file: &File) -> std::io::Result<()> {
    let dir = parent(path);
    if !is_shared(dir) {
        return Ok(());
    }
    let owner = file.metadata()?.uid();
    let me = rustix::process::geteuid().as_raw();
    if owner != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to user {owner}, not to this user ({me}), in the shared directory {}; \
                 refusing to keep secrets in it",
                path.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Creates (or truncates) a file with mode 0600.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Creates a file with mode 0600 if it does not exist (without truncating);
/// in a shared (sticky) directory the file must be ours.
pub fn touch_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    check_owner(path, &file)?;
    Ok(file)
}

/// Opens a secret file for reading after checking where it lives and that
/// only its owner can read it (`NotFound` passes through for the caller).
pub fn open_secret_file(path: &Path) -> std::io::Result<File> {
    let file = File::open(path)?;
    let dir = parent(path);
    if let Ok(meta) = std::fs::metadata(dir) {
        check_dir_mode(dir, meta.mode()).map_err(denied)?;
    }
    check_owner(path, &file)?;
    let mode = file.metadata()?.mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} can be read or written by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    Ok(file)
}

fn denied(e: Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
}

/// fsyncs the directory holding `path`, so a rename into it is durable.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777
    }

    #[test]
    fn new_directories_are_created_0700() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a").join("b");
        private_dir(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o755);
        private_dir(tmp.path()).expect("accepted");
        assert_eq!(mode(tmp.path()), 0o755);
    }

    #[test]
    fn a_world_writable_directory_that_is_not_sticky_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o777);
        let e = private_dir(tmp.path()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert!(e.to_string().contains("writable by other users"), "{e}");
        assert_eq!(mode(tmp.path()), 0o777);
    }

    #[test]
    fn opening_a_store_in_a_sticky_shared_directory_keeps_its_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o1777);
        let path = tmp.path().join("app.db");
        crate::store::Sqlite::open(&path).expect("a file of ours in a sticky dir");
        assert_eq!(mode(tmp.path()), 0o1777);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_store_in_a_world_writable_directory_that_is_not_sticky_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o777);
        let path = tmp.path().join("app.db");
        let e = crate::store::Sqlite::open(&path).err().expect("refused");
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert_eq!(e.kind().exit_code(), 2);
        assert!(e.to_string().contains("not sticky"), "{e}");
        assert!(
            !path.exists(),
            "nothing is created in the refused directory"
        );
        assert_eq!(mode(tmp.path()), 0o777);
    }

    #[test]
    fn a_group_readable_secret_file_is_refused_with_the_chmod_to_run() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("master.key");
        std::fs::write(&path, "x").expect("write");
        chmod(&path, 0o640);
        let e = open_secret_file(&path).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{e}"
        );
        chmod(&path, 0o600);
        open_secret_file(&path).expect("0600 is fine");
    }

    #[test]
    fn a_file_of_another_user_in_a_sticky_shared_directory_is_refused() {
        let me = rustix::process::geteuid().as_raw();
        if me != 0 {
            eprintln!("SKIPPED: needs root to give a file to another user");
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o1777);
        let path = tmp.path().join("tokens.db");
        std::fs::write(&path, "").expect("write");
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        let e = touch_private_file(&path).unwrap_err();
        assert!(e.to_string().contains("belongs to user 65534"), "{e}");
        let mine = tmp.path().join("mine.db");
        touch_private_file(&mine).expect("our own file in /tmp-like dir");
    }
}
