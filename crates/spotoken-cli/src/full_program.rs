//! `spotoken-full`'s program, the whole `spotoken` (the small `spotoken`
//! executable hands every command but a fresh cached `token` to it): parse the
//! command line, run one command, map the outcome to an exit code (the README's exit codes):
//! 0 ok, 1 unexpected failure, 2 usage or configuration error, 3 authorization
//! needed, 4 temporary failure, 5 insufficient scope. Everything else lives in
//! the command modules and in the `spotoken` library.

use crate::cli::defs::FAST_PATH_TRIED_ENV;
use crate::{cli, commands, log_writer, output};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use std::process::ExitCode;

use clap::Parser as _;

/// Runs the command line's command; returns its exit code.
pub(crate) fn run() -> ExitCode {
    // `spotoken token` with a fresh cached token answers before clap, logging,
    // an async runtime, migrations or the network: it is called from scripts
    // in loops, so it must cost little more than starting a process. Unless
    // `spotoken` just tried exactly that and handed the call over.
    let tried = fast_path_tried(std::env::var_os(FAST_PATH_TRIED_ENV).as_deref());
    if !tried
        && let Some((global, token_args)) = cli::quick_token_args(std::env::args_os().skip(1))
        && let Some(code) = commands::token::fast_path(&global, &token_args)
    {
        return ExitCode::from(code);
    }
    let args = cli::Args::parse();
    // Writes out the queued log lines when `main` returns.
    let _logs = init_logging(
        args.global.verbose,
        args.global.output,
        matches!(args.command, cli::Command::Serve(_)),
    );
    if tried {
        tracing::debug!("spotoken tried the fast path; starting past it");
    }
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
/// span with its id for `spotoken serve`). `serve` logs each request at info
/// level by default (one line each); other commands only warnings. Colours
/// only when stderr is a terminal and `NO_COLOR` is unset or empty: a
/// script's captured stderr or a log file gets plain text. The server's
/// lines are written by a thread of their own ([`log_writer`]): the guard
/// returned writes out what is queued.
fn init_logging(verbose: u8, output: cli::Output, serving: bool) -> Option<log_writer::Flush> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let default = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "warn,spotoken=info,spotoken_server=info,spotoken_cli=info",
        _ => "debug,spotoken=trace",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let colour = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let (writer, flush) = match serving.then(|| log_writer::start(std::io::stderr())) {
        Some(Ok((queued, flush))) => (BoxMakeWriter::new(queued), Some(flush)),
        _ => (BoxMakeWriter::new(std::io::stderr), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    let _ = match output {
        cli::Output::Text => builder.try_init(),
        cli::Output::Json => builder.json().try_init(),
    };
    flush
}

/// Whether `spotoken` marked the call as one its fast path could not answer.
fn fast_path_tried(marker: Option<&std::ffi::OsStr>) -> bool {
    marker.is_some_and(|v| !v.is_empty())
}

/// Colours on a terminal, unless `NO_COLOR` is set to anything but the empty
/// string (no-color.org).
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::colour_wanted;

    #[test]
    fn the_fast_path_is_skipped_only_when_spotoken_tried_it() {
        assert!(super::fast_path_tried(Some("1".as_ref())));
        assert!(!super::fast_path_tried(None), "called directly");
        assert!(!super::fast_path_tried(Some("".as_ref())));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some("".as_ref())));
        assert!(!colour_wanted(true, Some("1".as_ref())));
        assert!(!colour_wanted(false, None), "a pipe or a file");
    }
}
