//! RFC 8414 authorization server metadata, read and checked without I/O.
//!
//! Any OAuth 2.0 provider that publishes a discovery document can be used by
//! naming its issuer: the library fetches the document (from
//! `/.well-known/oauth-authorization-server`, falling back to OpenID Connect's
//! `/.well-known/openid-configuration`) and hands the body here. The checks
//! that keep a tampered or misdirected document from sending tokens elsewhere
//! live in this one pure function: the document's `issuer` must be the URL we
//! asked, PKCE with S256 must be supported, and every endpoint must be HTTPS
//! (or loopback).

use std::time::Duration;

use url::Url;

use crate::endpoint::{Provider, parse_endpoint};
use crate::error::Error;

/// How long a discovery document is kept when the answer says nothing about
/// caching (no `Cache-Control: max-age`).
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(3600);
/// The longest a discovery document is kept, whatever `max-age` says.
pub const MAX_METADATA_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where to look for the metadata of `issuer`, in order: RFC 8414's
/// `.well-known` URL (inserted between host and path) and OpenID Connect's
/// (appended to the issuer).
pub fn metadata_urls(issuer: &str) -> Result<[Url; 2], Error> {
    let url = parse_endpoint(issuer, "issuer")?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Configuration(format!(
            "the issuer {issuer} has a query or fragment; an issuer is a plain https:// URL"
        )));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let mut rfc8414 = url.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut oidc = url;
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    Ok([rfc8414, oidc])
}

/// Whether two issuer identifiers name the same server. RFC 8414 §3.3 wants
/// them identical; a trailing slash typed by a person is forgiven.
pub fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Parses and checks a metadata document fetched for `issuer`. `api_base` is
/// the resource API the tokens are for (discovery does not say).
pub fn parse_metadata(issuer: &str, body: &[u8], api_base: &Url) -> Result<Provider, Error> {
    let bad = |m: &str| Error::protocol(Some(200), format!("discovery document: {m}"), body);
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let text = |k: &str| -> Result<Option<&str>, Error> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(&format!("{k} is not a string"))),
        }
    };
    let stated = text("issuer")?.ok_or_else(|| bad("no issuer"))?;
    if !same_issuer(stated, issuer) {
        return Err(Error::Configuration(format!(
            "the discovery document for {issuer} names another issuer ({stated}); refusing it (RFC 8414 §3.3)"
        )));
    }
    let methods = match obj.get("code_challenge_methods_supported") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|m| m.as_str()).collect(),
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(_) => return Err(bad("code_challenge_methods_supported is not an array")),
    };
    if !methods.contains(&"S256") {
        return Err(Error::Configuration(format!(
            "the provider {issuer} does not list PKCE with S256 in code_challenge_methods_supported; spotoken needs it"
        )));
    }
    let endpoint = |k: &str| -> Result<Option<Url>, Error> {
        text(k)?
            .map(|s| parse_endpoint(s, &k.replace('_', " ")))
            .transpose()
    };
    let authorize_url =
        endpoint("authorization_endpoint")?.ok_or_else(|| bad("no authorization_endpoint"))?;
    let token_url = endpoint("token_endpoint")?.ok_or_else(|| bad("no token_endpoint"))?;
    Ok(Provider {
        issuer: Some(stated.to_owned()),
        authorize_url,
        token_url,
        revocation_url: endpoint("revocation_endpoint")?,
        device_authorization_url: endpoint("device_authorization_endpoint")?,
        api_base: api_base.clone(),
    })
}

/// How long a discovery answer may be reused, from its `Cache-Control`
/// header: `no-store` or `no-cache` means not at all, `max-age=N` means N
/// seconds (at most [`MAX_METADATA_TTL`]), nothing means [`DEFAULT_METADATA_TTL`].
pub fn cache_lifetime(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return DEFAULT_METADATA_TTL;
    };
    let mut max_age = None;
    for directive in cc.split(',').map(str::trim) {
        let (name, value) = directive
            .split_once('=')
            .map_or((directive, None), |(n, v)| (n.trim(), Some(v.trim())));
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Duration::ZERO;
        }
        if name.eq_ignore_ascii_case("max-age") {
            max_age = value
                .map(|v| v.trim_matches('"'))
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    max_age.map_or(DEFAULT_METADATA_TTL, |s| {
        Duration::from_secs(s).min(MAX_METADATA_TTL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn api() -> Url {
        Url::parse("https://api.example").expect("url")
    }

    fn doc(issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/token/revocation"),
            "device_authorization_endpoint": format!("{issuer}/device/auth"),
            "code_challenge_methods_supported": ["S256"],
        })
    }

    #[test]
    fn well_known_urls_follow_rfc8414_then_openid_connect() {
        let [a, b] = metadata_urls("https://id.example/tenant/1").expect("ok");
        assert_eq!(
            a.as_str(),
            "https://id.example/.well-known/oauth-authorization-server/tenant/1"
        );
        assert_eq!(
            b.as_str(),
            "https://id.example/tenant/1/.well-known/openid-configuration"
        );
        let [a, b] = metadata_urls("http://127.0.0.1:3000/").expect("ok");
        assert_eq!(
            a.as_str(),
            "http://127.0.0.1:3000/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            b.as_str(),
            "http://127.0.0.1:3000/.well-known/openid-configuration"
        );
        assert!(
            metadata_urls("http://id.example").is_err(),
            "plain http off loopback"
        );
        assert!(metadata_urls("https://id.example/?x=1").is_err());
    }

    #[test]
    fn a_good_document_gives_every_endpoint() {
        let body = doc("http://127.0.0.1:3000").to_string();
        let p = parse_metadata("http://127.0.0.1:3000/", body.as_bytes(), &api()).expect("ok");
        assert_eq!(p.issuer.as_deref(), Some("http://127.0.0.1:3000"));
        assert_eq!(p.token_url.as_str(), "http://127.0.0.1:3000/token");
        assert_eq!(
            p.revocation_url.expect("revocation").as_str(),
            "http://127.0.0.1:3000/token/revocation"
        );
        assert_eq!(
            p.device_authorization_url.expect("device").as_str(),
            "http://127.0.0.1:3000/device/auth"
        );
        assert_eq!(p.api_base, api());
    }

    #[test]
    fn a_document_naming_another_issuer_is_refused() {
        let body = doc("https://evil.example").to_string();
        let e = parse_metadata("https://id.example", body.as_bytes(), &api()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert!(e.to_string().contains("another issuer"), "{e}");
    }

    #[test]
    fn a_provider_without_s256_is_refused() {
        let mut d = doc("https://id.example");
        d["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
        let e = parse_metadata("https://id.example", d.to_string().as_bytes(), &api()).unwrap_err();
        assert!(e.to_string().contains("S256"), "{e}");
        d.as_object_mut()
            .expect("object")
            .remove("code_challenge_methods_supported");
        assert!(parse_metadata("https://id.example", d.to_string().as_bytes(), &api()).is_err());
    }

    #[test]
    fn plain_http_endpoints_off_loopback_are_refused() {
        let mut d = doc("https://id.example");
        d["token_endpoint"] = serde_json::json!("http://id.example/token");
        let e = parse_metadata("https://id.example", d.to_string().as_bytes(), &api()).unwrap_err();
        assert!(e.to_string().contains("plain http://"), "{e}");
    }

    #[test]
    fn missing_endpoints_and_non_json_are_protocol_errors() {
        let mut d = doc("https://id.example");
        d.as_object_mut().expect("object").remove("token_endpoint");
        let e = parse_metadata("https://id.example", d.to_string().as_bytes(), &api()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Protocol);
        assert!(parse_metadata("https://id.example", b"<html>", &api()).is_err());
    }

    #[test]
    fn cache_lifetime_reads_cache_control() {
        assert_eq!(cache_lifetime(None), DEFAULT_METADATA_TTL);
        assert_eq!(
            cache_lifetime(Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(cache_lifetime(Some("max-age=99999999")), MAX_METADATA_TTL);
        assert_eq!(cache_lifetime(Some("no-store")), Duration::ZERO);
        assert_eq!(cache_lifetime(Some("max-age=60, no-cache")), Duration::ZERO);
        assert_eq!(cache_lifetime(Some("public")), DEFAULT_METADATA_TTL);
    }

    proptest! {
        #[test]
        fn parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_metadata("https://id.example", &body, &api());
        }

        #[test]
        fn only_the_issuer_asked_for_is_accepted(asked in "[a-z]{1,10}", stated in "[a-z]{1,10}") {
            let asked = format!("https://{asked}.example");
            let stated = format!("https://{stated}.example");
            let r = parse_metadata(&asked, doc(&stated).to_string().as_bytes(), &api());
            prop_assert_eq!(r.is_ok(), asked == stated);
        }

        #[test]
        fn cache_lifetime_never_exceeds_the_cap(cc in "[ -~]{0,60}") {
            prop_assert!(cache_lifetime(Some(&cc)) <= MAX_METADATA_TTL);
        }
    }
}
