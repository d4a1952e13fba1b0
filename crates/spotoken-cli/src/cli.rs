//! The command-line surface, as clap types: global options with their
//! environment fallbacks (see DESIGN.md's command-line contract) and one
//! subcommand per command module.

use clap::{Parser, Subcommand, ValueEnum};

/// Keeps Spotify OAuth tokens valid, safe and usable.
#[derive(Debug, Parser)]
#[command(name = "spotoken", version, about, propagate_version = true)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More logging on stderr (-v, -vv); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: one JSON document on stdout.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Spotify emulator (Accounts service + Web API) on a loopback port.
    Emulate(crate::commands::emulate::EmulateArgs),
}
