//! `GET /authorize`: Spotify's authorization endpoint.
//!
//! Errors that make the redirect URI untrustworthy (unknown client, unregistered
//! or insecure redirect URI) are shown as an HTML error page, never redirected,
//! as Spotify does. Everything after that is redirected back with `error=` and
//! the caller's `state`. Consent is automatic by default; the consent page mode
//! serves Approve / Deny buttons for browser tests.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{Response, StatusCode, header};
use spotoken_core::scope::Scopes;
use url::Url;

use crate::Shared;
use crate::model::{CodeRec, Consent, Endpoint, PendingConsent, random_token};

/// The page or redirect for an authorization request.
pub(crate) async fn authorize(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let failure = {
        let mut w = shared.lock();
        w.counters.authorize_requests += 1;
        w.take_failure(Endpoint::Authorize, None, "/authorize")
    };
    if let Some(f) = failure {
        return crate::injected(f, None).await;
    }
    let get = |k: &str| q.get(k).map(String::as_str);
    let mut w = shared.lock();

    let Some(client) = get("client_id").and_then(|id| w.client(id)).cloned() else {
        return error_page("INVALID_CLIENT: Invalid client");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page("INVALID_CLIENT: Invalid redirect URI");
    };
    if let Err(msg) = check_redirect_uri(redirect_uri, &client.redirect_uris) {
        return error_page(&msg);
    }
    let state = get("state").map(str::to_owned);
    let back = |params: &[(&str, &str)]| redirect(redirect_uri, params, state.as_deref());

    if get("response_type") != Some("code") {
        return back(&[
            ("error", "unsupported_response_type"),
            ("error_description", "response_type must be code"),
        ]);
    }
    let challenge = get("code_challenge").map(str::to_owned);
    if let Err(description) = check_pkce(get("code_challenge_method"), challenge.as_deref()) {
        return back(&[
            ("error", "invalid_request"),
            ("error_description", description),
        ]);
    }
    let requested = Scopes::parse(get("scope").unwrap_or(""));
    if !requested.unknown().is_empty() {
        return back(&[
            ("error", "invalid_scope"),
            ("error_description", "Illegal scope"),
        ]);
    }
    let user = get("emulator_user")
        .map(str::to_owned)
        .unwrap_or_else(|| w.settings.default_user.clone());
    if w.user(&user).is_none() {
        return error_page(&format!("Unknown emulator user {user:?}"));
    }
    let granted = grant(requested, w.settings.grant_only.as_deref());
    let pending = PendingConsent {
        client_id: client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.clone(),
        challenge,
        scopes: granted,
        user,
    };
    match w.settings.consent {
        Consent::Auto if w.settings.deny => back(&[("error", "access_denied")]),
        Consent::Auto => approve(&mut w, pending),
        Consent::Page => {
            let id = random_token("CR", 32);
            let page = consent_page(&id, &pending);
            w.pending.insert(id, pending);
            html(StatusCode::OK, page)
        }
    }
}

/// The length bounds RFC 7636 sets on a code verifier, applied to the
/// challenge (an S256 challenge is 43 characters).
const PKCE_CHALLENGE_LEN: std::ops::RangeInclusive<usize> = 43..=128;

/// Checks the PKCE parameters: an S256 challenge, or none at all. The error is
/// the `error_description` of the `invalid_request` redirect.
fn check_pkce(method: Option<&str>, challenge: Option<&str>) -> Result<(), &'static str> {
    match (method, challenge) {
        (Some("S256"), Some(c)) if PKCE_CHALLENGE_LEN.contains(&c.len()) => Ok(()),
        // Without PKCE the code exchange needs the app's secret.
        (None, None) => Ok(()),
        (Some(m), Some(_)) if m != "S256" => Err("code_challenge_method must be S256"),
        _ => Err("code_challenge and code_challenge_method=S256 are required"),
    }
}

/// The scopes granted for `requested`: all of them, or only those in the
/// `grant_only` setting.
fn grant(requested: Scopes, grant_only: Option<&[String]>) -> Scopes {
    match grant_only {
        Some(only) => Scopes(
            requested
                .0
                .iter()
                .filter(|s| only.contains(s))
                .cloned()
                .collect(),
        ),
        None => requested,
    }
}

/// The form posted by the consent page's buttons.
#[derive(serde::Deserialize)]
pub(crate) struct Decision {
    request: String,
    decision: String,
}

/// `POST /authorize/decide`: the consent page's Approve or Deny.
pub(crate) async fn decide(
    State(shared): State<Shared>,
    Form(d): Form<Decision>,
) -> Response<Body> {
    let mut w = shared.lock();
    let Some(p) = w.pending.remove(&d.request) else {
        return error_page("This authorization request has expired or was already answered.");
    };
    if d.decision == "approve" {
        approve(&mut w, p)
    } else {
        redirect(
            &p.redirect_uri,
            &[("error", "access_denied")],
            p.state.as_deref(),
        )
    }
}

fn approve(w: &mut crate::model::World, p: PendingConsent) -> Response<Body> {
    let code = random_token("AQ", 96);
    let issued_at_ms = w.now_ms();
    let location = redirect_location(&p.redirect_uri, &[("code", &code)], p.state.as_deref());
    w.codes.insert(
        code,
        CodeRec {
            client_id: p.client_id,
            redirect_uri: p.redirect_uri,
            challenge: p.challenge,
            user: p.user,
            scopes: p.scopes,
            issued_at_ms,
            used: false,
        },
    );
    found(&location)
}

/// Checks a redirect URI against the registered ones, Spotify's way: exact match,
/// except that a registered loopback IP URI without a port matches any port;
/// `localhost` and plain `http://` to anything else are insecure.
pub(crate) fn check_redirect_uri(uri: &str, registered: &[String]) -> Result<(), String> {
    let parsed = Url::parse(uri).map_err(|_| "INVALID_CLIENT: Invalid redirect URI".to_owned())?;
    if let Err(e) = secure_redirect(&parsed) {
        return Err(e.to_owned());
    }
    let ok = registered.iter().any(|r| {
        if r == uri {
            return true;
        }
        let Ok(reg) = Url::parse(r) else { return false };
        is_loopback_ip(&reg)
            && reg.port().is_none()
            && reg.scheme() == parsed.scheme()
            && reg.host() == parsed.host()
            && reg.path() == parsed.path()
            && reg.query() == parsed.query()
    });
    if ok {
        Ok(())
    } else {
        Err("INVALID_CLIENT: Invalid redirect URI".to_owned())
    }
}

/// Whether a redirect URI is acceptable at all (used when registering clients too).
pub(crate) fn secure_redirect(u: &Url) -> Result<(), &'static str> {
    if u.host_str() == Some("localhost") {
        return Err(
            "INVALID_CLIENT: Insecure redirect URI (localhost is not allowed, use 127.0.0.1 or [::1])",
        );
    }
    if u.scheme() == "http" && !is_loopback_ip(u) {
        return Err("INVALID_CLIENT: Insecure redirect URI");
    }
    Ok(())
}

fn is_loopback_ip(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn redirect_location(base: &str, params: &[(&str, &str)], state: Option<&str>) -> String {
    let Ok(mut u) = Url::parse(base) else {
        return base.to_owned();
    };
    {
        let mut qp = u.query_pairs_mut();
        for (k, v) in params {
            qp.append_pair(k, v);
        }
        if let Some(s) = state {
            qp.append_pair("state", s);
        }
    }
    u.into()
}

fn redirect(base: &str, params: &[(&str, &str)], state: Option<&str>) -> Response<Body> {
    found(&redirect_location(base, params, state))
}

fn found(location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = location.parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn error_page(msg: &str) -> Response<Body> {
    html(
        StatusCode::BAD_REQUEST,
        format!(
            "<!doctype html><html><head><title>Error</title></head><body><h1>Oops! Something went wrong</h1><p id=\"error\">{}</p></body></html>",
            escape(msg)
        ),
    )
}

fn consent_page(id: &str, p: &PendingConsent) -> String {
    let scopes: String = p
        .scopes
        .iter()
        .map(|s| format!("<li>{}</li>", escape(s)))
        .collect();
    format!(
        r#"<!doctype html><html><head><title>Spotify emulator: authorize</title></head>
<body><h1>Allow {client} to access your account?</h1>
<p>Logged in as <strong id="user">{user}</strong>.</p>
<ul id="scopes">{scopes}</ul>
<form method="post" action="/authorize/decide">
<input type="hidden" name="request" value="{id}">
<button type="submit" name="decision" value="approve" id="approve">Agree</button>
<button type="submit" name="decision" value="deny" id="deny">Cancel</button>
</form></body></html>"#,
        client = escape(&p.client_id),
        user = escape(&p.user),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn loopback_without_port_matches_any_port() {
        let r = reg(&["http://127.0.0.1/callback"]);
        assert!(check_redirect_uri("http://127.0.0.1:43123/callback", &r).is_ok());
        assert!(check_redirect_uri("http://127.0.0.1/callback", &r).is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:43123/other", &r).is_err());
    }

    #[test]
    fn registered_port_must_match_exactly() {
        let r = reg(&["http://127.0.0.1:8888/callback", "https://app.example/cb"]);
        assert!(check_redirect_uri("http://127.0.0.1:8888/callback", &r).is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:9999/callback", &r).is_err());
        assert!(check_redirect_uri("https://app.example/cb", &r).is_ok());
    }

    #[test]
    fn localhost_and_plain_http_are_insecure() {
        let r = reg(&["http://localhost:8888/callback", "http://app.example/cb"]);
        assert!(
            check_redirect_uri("http://localhost:8888/callback", &r)
                .unwrap_err()
                .contains("Insecure")
        );
        assert!(
            check_redirect_uri("http://app.example/cb", &r)
                .unwrap_err()
                .contains("Insecure")
        );
    }
}
