//! The `spotoken` executable's reader of `token`'s arguments: the common
//! `spotoken token [--min-valid D] [--account A] [--output text|json] [--home DIR]`
//! without building clap's command tree, which costs more than the rest of a
//! cached `token`. Names and environment variables come from [`super::defs`],
//! as clap's do; anything unusual returns `None` and goes through clap.

use std::ffi::OsString;
use std::path::PathBuf;

use super::defs::{
    ACCOUNT, ACCOUNT_ENV, ACCOUNTS_URL_ENV, API_URL_ENV, CLIENT_ID, CLIENT_ID_ENV, DEFAULT_MARGIN,
    HOME, HOME_ENV, ISSUER, ISSUER_ENV, MIN_VALID, OUTPUT,
};
use super::{Global, Output, TokenArgs, parse_duration_arg};

/// The subcommand this reader knows.
const TOKEN: &str = "token";

/// `token`'s options with the environment fallbacks clap would apply, or
/// `None` for anything else.
pub(crate) fn token_args(mut args: impl Iterator<Item = OsString>) -> Option<(Global, TokenArgs)> {
    if args.next()?.to_str()? != TOKEN {
        return None;
    }
    let mut g = global_from_env();
    let mut t = TokenArgs {
        min_valid: DEFAULT_MARGIN,
    };
    while let Some(flag) = args.next() {
        let flag = flag.into_string().ok()?;
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag, None),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next()?.into_string().ok()?,
        };
        match name.strip_prefix("--")? {
            MIN_VALID => t.min_valid = parse_duration_arg(&value).ok()?,
            ACCOUNT => g.account = Some(value),
            HOME => g.home = Some(PathBuf::from(value)),
            CLIENT_ID => g.client_id = Some(value),
            ISSUER => g.issuer = Some(value),
            OUTPUT => g.output = Output::from_arg(&value)?,
            _ => return None,
        }
    }
    Some((g, t))
}

/// The global options as the environment gives them (clap ignores an empty
/// variable, and so does this).
fn global_from_env() -> Global {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let text = |k: &str| env(k).and_then(|v| v.into_string().ok());
    Global {
        home: env(HOME_ENV).map(PathBuf::from),
        account: text(ACCOUNT_ENV),
        client_id: text(CLIENT_ID_ENV),
        accounts_url: text(ACCOUNTS_URL_ENV),
        api_url: text(API_URL_ENV),
        issuer: text(ISSUER_ENV),
        output: Output::Text,
        verbose: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn quick(args: &[&str]) -> Option<(Global, TokenArgs)> {
        token_args(args.iter().map(OsString::from))
    }

    #[test]
    fn quick_parser_takes_the_common_forms_and_nothing_else() {
        let (g, t) = quick(&[
            "token",
            "--min-valid",
            "15m",
            "--account=work",
            "--output",
            "json",
        ])
        .expect("quick");
        assert_eq!(t.min_valid, Duration::from_secs(900));
        assert_eq!(g.account.as_deref(), Some("work"));
        assert_eq!(g.output, Output::Json);
        assert!(quick(&["token", "-v"]).is_none());
        assert!(quick(&["token", "--min-valid"]).is_none());
        assert!(
            quick(&["token", "--min-valid", "soon"]).is_none(),
            "clap reports the error"
        );
        assert!(quick(&["status"]).is_none());
        assert!(quick(&["token", "--help"]).is_none());
    }

    #[test]
    fn quick_parser_knows_only_what_clap_knows() {
        use clap::CommandFactory as _;
        let cmd = super::super::Args::command();
        let token = cmd.find_subcommand(TOKEN).expect("token");
        let longs: Vec<&str> = token
            .get_arguments()
            .chain(cmd.get_arguments())
            .filter_map(clap::Arg::get_long)
            .collect();
        for name in [MIN_VALID, ACCOUNT, HOME, CLIENT_ID, ISSUER, OUTPUT] {
            assert!(longs.contains(&name), "--{name} is not clap's");
        }
        let value = |name: &str| {
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(name))
                .and_then(clap::Arg::get_env)
                .map(ToOwned::to_owned)
        };
        assert_eq!(value(HOME), Some(HOME_ENV.into()));
        assert_eq!(value(ACCOUNT), Some(ACCOUNT_ENV.into()));
        assert_eq!(value(ISSUER), Some(ISSUER_ENV.into()));
    }
}
