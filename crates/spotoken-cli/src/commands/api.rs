//! `spotoken api`: an authenticated Web API call from the shell, curl-like.
//! JSON is pretty-printed on a terminal and passed raw through a pipe; a non-2xx
//! answer prints the API's message and exits non-zero.

use std::io::{IsTerminal as _, Read as _};

use bytes::Bytes;
use spotoken::Error;

use crate::cli::ApiArgs;
use crate::config::Resolved;
use crate::output;

fn read_body(data: &str) -> Result<Bytes, Error> {
    let Some(name) = data.strip_prefix('@') else {
        return Ok(Bytes::from(data.to_owned()));
    };
    let mut buf = Vec::new();
    if name == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::Configuration(format!("cannot read the body from stdin: {e}")))?;
    } else {
        buf = std::fs::read(name)
            .map_err(|e| Error::Configuration(format!("cannot read {name}: {e}")))?;
    }
    Ok(Bytes::from(buf))
}

/// Runs `api`.
pub(crate) async fn exec(cfg: &Resolved, args: ApiArgs) -> Result<u8, Error> {
    let method = reqwest::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Error::Configuration(format!("'{}' is not an HTTP method", args.method)))?;
    let body = args.data.as_deref().map(read_body).transpose()?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| {
            Error::Configuration(format!("header '{h}' must look like 'Name: value'"))
        })?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let tokens = cfg.tokens()?;
    let resp = tokens
        .api(&cfg.account)
        .request(method, &path, body, &headers)
        .await?;
    let pretty = std::io::stdout().is_terminal();
    if !resp.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&resp.body) {
            Ok(v) if pretty => output::line(&serde_json::to_string_pretty(&v).unwrap_or_default()),
            _ => output::line(&String::from_utf8_lossy(&resp.body)),
        }
    }
    if resp.is_success() {
        return Ok(0);
    }
    let msg = resp.error_message().unwrap_or_default();
    eprintln!(
        "error: {path} answered HTTP {}{}",
        resp.status,
        if msg.is_empty() {
            String::new()
        } else {
            format!(": {msg}")
        }
    );
    Ok(match resp.status {
        500..=599 => 4,
        _ => 1,
    })
}
