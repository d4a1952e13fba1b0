//! Link-time tuning for the `spotoken` binary.
//!
//! `spotoken token` is called from scripts in loops, so its start-up matters.
//! Most of a PIE Rust binary's start-up beyond a bare process is the dynamic
//! loader reading hundreds of KiB of relative relocations. Packed relative
//! relocations (`-z pack-relative-relocs`, glibc ≥ 2.36) shrink them about
//! fiftyfold. The flag is used only when this machine's linker and C library
//! both accept it (checked by building and running a tiny program), so older
//! systems build as before.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("linux-gnu") {
        return;
    }
    let Ok(out_dir) = std::env::var("OUT_DIR") else {
        return;
    };
    let src = format!("{out_dir}/relr_probe.c");
    let exe = format!("{out_dir}/relr_probe");
    if std::fs::write(
        &src,
        "static const char *p = \"x\"; int main(void) { return p[0] == 'x' ? 0 : 1; }\n",
    )
    .is_err()
    {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(&cc)
        .args([
            "-fPIE",
            "-pie",
            &src,
            "-o",
            &exe,
            "-Wl,-z,pack-relative-relocs",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let runs = linked && Command::new(&exe).status().is_ok_and(|s| s.success());
    if runs {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
