//! `spotoken`, the executable scripts call: a fresh cached `token` is
//! answered from the store, everything else handed to `spotoken-full` (the
//! library's `small_program` module). It links only what that fast path uses
//! (the store's read, the key ring, the config file), so the loader has
//! little to map and relocate before `main` runs.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(spotoken_cli::spotoken())
}
