//! One module per command; each turns resolved options into library calls and
//! formats the result.

pub mod emulate;

use crate::cli::{Args, Command};

/// Runs the parsed command.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    match args.command {
        Command::Emulate(a) => emulate::exec(&args.global, a).await,
    }
}
