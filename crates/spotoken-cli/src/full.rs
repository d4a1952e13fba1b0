//! `spotoken-full`, the whole `spotoken` program (the library's
//! `full_program` module).

fn main() -> std::process::ExitCode {
    spotoken_cli::spotoken_full()
}
