//! `spotoken-full`, the whole `spotoken` program (the small `spotoken`
//! executable hands every command but a fresh cached `token` to it): parse the
//! command line, run one command, map the outcome to an exit code (the README's exit codes):
//! 0 ok, 1 unexpected failure, 2 usage or configuration error, 3 authorization
//! needed, 4 temporary failure, 5 insufficient scope. Everything else lives in
//! the command modules and in the `spotoken` library.

use spotoken_cli::{cli, commands, output};

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // `spotoken token` with a fresh cached token answers before clap, logging,
    // an async runtime, migrations or the network: it is called from scripts
    // in loops, so it must cost little more than starting a process.
    if let Some((global, token_args)) = cli::quick_token_args(std::env::args_os().skip(1))
        && let Some(code) = commands::token::fast_path(&global, &token_args)
    {
        return ExitCode::from(code);
    }
    let args = cli::Args::parse();
    init_logging(args.global.verbose, args.global.output);
    // Commands are I/O-bound and short: two workers. The server runs one
    // single-threaded event loop per thread (`spotoken_server::serve_on_threads`),
    // this thread's among them.
    let mut builder = if matches!(args.command, cli::Command::Serve(_)) {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.max_blocking_threads(spotoken_server::BLOCKING_THREADS);
        b
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let format = args.global.output;
    let code = match runtime.block_on(commands::run(args)) {
        Ok(code) => code,
        Err(e) => output::report(&e, format),
    };
    // Do not wait for background tasks (an idle keep-alive connection, say).
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// Logs on stderr: for people, or with `--output json` one JSON object per
/// line (a log collector's format: level, target, fields, and the request's
/// span with its id for `spotoken serve`).
fn init_logging(verbose: u8, output: cli::Output) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug,spotoken=trace",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person: logs piped to a file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match output {
        cli::Output::Text => builder.try_init(),
        cli::Output::Json => builder.json().try_init(),
    };
}
