//! One module per command; each turns resolved options into library calls and
//! formats the result. `run` returns the exit code for outcomes that are not
//! errors but still matter to scripts (`status` with an account needing login).

pub(crate) mod accounts;
pub(crate) mod api;
pub(crate) mod daemon;
pub(crate) mod demo;
pub(crate) mod device_login;
pub(crate) mod emulate;
pub(crate) mod login;
pub(crate) mod scope;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod token;

use clap::CommandFactory as _;
use spotoken::Error;

use crate::cli::{Args, Command};
use crate::config;

/// Runs the parsed command; `Ok(code)` is the exit code.
pub(crate) async fn run(args: Args) -> Result<u8, Error> {
    let g = args.global;
    match args.command {
        Command::Emulate(a) => emulate::exec(g.client_id, g.output, a).await,
        Command::Demo => demo::exec().await,
        Command::Serve(a) => serve::exec(&config::resolve(&g)?, a).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "spotoken",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man { dir } => crate::cli::write_man_pages(&dir)
            .map(|()| 0)
            .map_err(|e| Error::Configuration(format!("cannot write man pages: {e}"))),
        Command::CheckScope { method, path } => {
            scope::exec(&config::resolve(&g)?, &method, &path).await
        }
        Command::Login(a) => login::exec(&config::resolve(&g)?, a).await,
        Command::Token(a) => token::exec(&config::resolve(&g)?, &a).await,
        Command::Status => status::exec(&config::resolve(&g)?).await,
        Command::Api(a) => api::exec(&config::resolve(&g)?, a).await,
        Command::Refresh => token::refresh(&config::resolve(&g)?).await,
        Command::Logout(a) => accounts::logout(&config::resolve(&g)?, &a).await,
        Command::Accounts(a) => accounts::exec(&config::resolve(&g)?, &a).await,
        Command::Daemon(a) => daemon::exec(&config::resolve(&g)?, a).await,
        Command::Rekey => accounts::rekey(&config::resolve(&g)?).await,
    }
}
