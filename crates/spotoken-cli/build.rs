//! Link-time tuning for the `spotoken` binary.
//!
//! `spotoken token` is called from scripts in loops, so its start-up matters,
//! and most of a PIE Rust binary's start-up beyond a bare process is the
//! dynamic loader's work. Two link options cut it (docs/BENCHMARKS.md has the
//! figures):
//!
//! - packed relative relocations (`-z pack-relative-relocs`, glibc ≥ 2.36)
//!   shrink the tables the loader reads; used only when this machine's linker
//!   and C library both accept it (checked by building and running a tiny
//!   program), so older systems build as before;
//! - the unwinder is linked statically (libgcc_eh) instead of loading
//!   libgcc_s.so, whose load-time constructor probes the CPU (a trap to the
//!   hypervisor on a virtual machine) for an unwinder only a panic would use.
//!   Rust's standard library asks for `-lgcc_s`; a one-line linker script
//!   named `libgcc_s.a`, found first on the search path, answers it with the
//!   static archive gcc ships for exactly this (`-static-libgcc`). Used only
//!   when the C compiler knows where libgcc_eh.a is.

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
    static_unwinder(&cc, &out_dir);
}

fn static_unwinder(cc: &str, out_dir: &str) {
    let Ok(out) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !std::path::Path::new(&found).is_absolute() {
        return;
    }
    let dir = format!("{out_dir}/static-unwinder");
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(format!("{dir}/libgcc_s.a"), format!("INPUT({found})\n")).is_err()
    {
        return;
    }
    println!("cargo:rustc-link-search=native={dir}");
}
