//! `--app-upstream URL`: every path that is not spotoken's own (`/auth/*`,
//! `/api/*`, `/healthz`, `/readyz`, `/metrics`) goes to the team's own server
//! (a Vite or Next.js dev server, a Rails app), WebSocket upgrades included,
//! so the app and the session share one origin.
//!
//! The app's server learns who is logged in from two headers only spotoken
//! sets: `Spotoken-User` (the Spotify user id) and `Spotoken-Scopes` (the
//! granted scopes, space-separated). The browser's own copies are always
//! removed, and so are its `X-Forwarded-*`, `Forwarded` and `X-Real-IP`: this
//! server states the client's address, scheme and host. The session cookies
//! never reach the app; its own cookies do. A write (any method but `GET`,
//! `HEAD`, `OPTIONS`) or a WebSocket from another origin carries no
//! identity, so a page elsewhere cannot act as the user on the app through
//! the cookie. The
//! answer is framed by this server (hop-by-hop fields dropped), may not set
//! spotoken's cookies, varies by `Cookie` when it was told a user, and is
//! marked `Spotoken-Upstream: 1`.
//!
//! hyper's client rather than the API proxy's own ([`crate::upstream`]): the
//! app's answers stream (server-sent events, large files) and upgrade, where
//! the API's are small and read whole.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::cookies;
use crate::error::AppError;
use crate::proxy::{FROM_UPSTREAM, connection_listed, hop_by_hop, is_safe};
use crate::state::{AppState, ClientAddr};

/// `Spotoken-User`: the logged-in Spotify user id, for the app's server.
pub(crate) const USER: HeaderName = HeaderName::from_static("spotoken-user");
/// `Spotoken-Scopes`: the scopes the user granted, space-separated.
pub(crate) const SCOPES: HeaderName = HeaderName::from_static("spotoken-scopes");

/// The team's server.
pub(crate) struct AppUpstream {
    client: Client<crate::upstream::Connector, Body>,
    scheme: String,
    authority: String,
    prefix: String,
    host: HeaderValue,
    head_timeout: Duration,
}

impl std::fmt::Debug for AppUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppUpstream({}://{})", self.scheme, self.authority)
    }
}

impl AppUpstream {
    /// For `url` (`http://` or `https://`; a path is a prefix put before
    /// every request's). Plain HTTP is allowed to any host: the app's server
    /// usually runs beside this one, on loopback or a private network.
    pub(crate) fn new(url: &url::Url, head_timeout: Duration) -> Result<Self, spotoken::Error> {
        let bad =
            |why: &str| spotoken::Error::Configuration(format!("--app-upstream {url}: {why}"));
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be http:// or https://"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("no query or fragment"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(crate::upstream::connector());
        Ok(Self {
            client,
            scheme: url.scheme().to_owned(),
            host: HeaderValue::from_str(&authority).map_err(|_| bad("not a valid host"))?,
            authority,
            prefix: url.path().trim_end_matches('/').to_owned(),
            head_timeout,
        })
    }

    /// Forwards `req` and returns the app's answer (or a JSON error of ours
    /// when the app cannot be reached).
    pub(crate) async fn answer(&self, st: &AppState, mut req: Request<Body>) -> Response<Body> {
        let upgrade = requested_upgrade(req.headers());
        let from_browser = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let identity = identity_for(st, req.headers(), req.method(), upgrade.is_some()).await;
        let identified = identity.is_some();
        let client = req.extensions().get::<ClientAddr>().and_then(|c| c.0);
        let (parts, body) = req.into_parts();
        let target = format!(
            "{}://{}{}{}",
            self.scheme,
            self.authority,
            self.prefix,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let Ok(uri) = target.parse::<Uri>() else {
            return AppError::BadRequest("the path cannot be forwarded".into()).into_response();
        };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = self.request_headers(st, &parts.headers, client, identity, upgrade);
        let mut resp = match tokio::time::timeout(self.head_timeout, self.client.request(out)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, upstream = %self.authority, "the app's server cannot be reached");
                return AppError::AppUnavailable.into_response();
            }
            Err(_) => {
                tracing::warn!(upstream = %self.authority, "the app's server did not answer in time");
                return AppError::AppUnavailable.into_response();
            }
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(from_browser) = from_browser else {
                tracing::warn!("the app's server switched protocols unasked");
                return AppError::AppUnavailable.into_response();
            };
            splice(from_browser, hyper::upgrade::on(&mut resp));
        }
        let (mut rparts, rbody) = resp.into_parts();
        answer_headers(&mut rparts.headers, switching, identified);
        Response::from_parts(rparts, Body::new(rbody))
    }

    /// The headers the app's server gets: the browser's (less what is ours
    /// alone), the forwarding fields, the session's identity and the upgrade
    /// asked for.
    fn request_headers(
        &self,
        st: &AppState,
        from_browser: &HeaderMap,
        client: Option<std::net::IpAddr>,
        identity: Option<std::sync::Arc<crate::state::Identity>>,
        upgrade: Option<HeaderValue>,
    ) -> HeaderMap {
        let mut headers = forwarded_headers(from_browser);
        headers.insert(header::HOST, self.host.clone());
        if let Some(ip) = client
            && let Ok(v) = HeaderValue::from_str(&ip.to_string())
        {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        let public = &st.config.public_url;
        if let Ok(v) = HeaderValue::from_str(public.scheme()) {
            headers.insert(HeaderName::from_static("x-forwarded-proto"), v);
        }
        if let Some(h) = public.host_str() {
            let host = match public.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                headers.insert(HeaderName::from_static("x-forwarded-host"), v);
            }
        }
        if let Some(id) = identity {
            if let Some(u) = &id.user {
                headers.insert(USER, u.clone());
            }
            if let Some(s) = &id.scopes {
                headers.insert(SCOPES, s.clone());
            }
        }
        if let Some(proto) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }
        headers
    }
}

/// Joins an upgraded connection from the browser to the one from the app's
/// server, bytes both ways until either ends.
fn splice(from_browser: hyper::upgrade::OnUpgrade, from_app: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(from_browser, from_app) {
            Ok((browser, app)) => {
                let (mut browser, mut app) = (TokioIo::new(browser), TokioIo::new(app));
                if let Err(e) = tokio::io::copy_bidirectional(&mut browser, &mut app).await {
                    tracing::debug!(error = %e, "an upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "an upgrade did not complete"),
        }
    });
}

/// The app's answer's headers as the browser gets them: no hop-by-hop
/// fields (but those of a protocol switch) and no length (the body is
/// streamed again), none of spotoken's cookies, the mark that the answer is
/// the upstream's, and `Vary: Cookie` when it may depend on the user named.
fn answer_headers(headers: &mut HeaderMap, switching: bool, identified: bool) {
    let listed = connection_listed(headers);
    let kept_for_upgrade = |name: &str| switching && matches!(name, "connection" | "upgrade");
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let n = name.as_str();
        let drop = (hop_by_hop(n) || listed.iter().any(|l| l == n)) && !kept_for_upgrade(n)
            || n == "content-length";
        if drop {
            headers.remove(&name);
        }
    }
    // The app may set its own cookies, never spotoken's.
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|c| !c.as_bytes().starts_with(b"__Host-spotoken_"))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
    headers.insert(FROM_UPSTREAM, HeaderValue::from_static("1"));
    // The answer may depend on the user we named: no cache in front may
    // give it to another cookie.
    if identified {
        headers.append(header::VARY, HeaderValue::from_static("Cookie"));
    }
}

/// The protocol a browser asks to upgrade to (`Connection: upgrade` with an
/// `Upgrade` field), e.g. `websocket`.
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = connection_listed(headers).iter().any(|t| t == "upgrade");
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The browser's headers the app may see: not hop-by-hop or those its
/// `Connection` names, not `Host`, never `Spotoken-*`, `Forwarded`,
/// `X-Forwarded-*` or `X-Real-IP` (ours to state), and its `Cookie` without
/// spotoken's cookies.
fn forwarded_headers(from: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(from);
    let mut out = HeaderMap::with_capacity(from.len() + 6);
    for (k, v) in from {
        let n = k.as_str();
        if hop_by_hop(n)
            || listed.iter().any(|l| l == n)
            || n == "host"
            || n == "forwarded"
            || n == "x-real-ip"
            || n.starts_with("x-forwarded-")
            || n.starts_with("spotoken-")
        {
            continue;
        }
        if k == header::COOKIE {
            if let Some(v) = without_our_cookies(v) {
                out.append(header::COOKIE, v);
            }
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// A `Cookie` header without `__Host-spotoken_*` pairs; `None` if nothing
/// is left.
fn without_our_cookies(v: &HeaderValue) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = v
        .as_bytes()
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty() && !p.starts_with(b"__Host-spotoken_"))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// The identity to state for this request: the session's, when there is a
/// live one and the request is not a write from another origin.
async fn identity_for(
    st: &AppState,
    headers: &HeaderMap,
    method: &axum::http::Method,
    upgrade: bool,
) -> Option<std::sync::Arc<crate::state::Identity>> {
    let cookie = cookies::get(headers, cookies::SESSION)?;
    // A WebSocket's handshake is a GET, but what follows is anything but
    // safe: another site's page may not open one as the user.
    if (upgrade || !is_safe(method)) && !same_origin_write(headers, &st.config.origin()) {
        return None;
    }
    let record = match st.session_for(cookie).await {
        Ok(r) => r?,
        Err(e) => {
            tracing::warn!(error = ?e, "session unknown; the app gets the request without identity");
            return None;
        }
    };
    match st.identity(&record.account).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = ?e, "identity unknown; the app gets the request without it");
            None
        }
    }
}

/// Whether a write comes from this origin: `Origin` (sent by browsers on
/// every cross-origin request and every POST) must be ours when present;
/// without it, `Sec-Fetch-Site` must say the same origin or a user's own
/// navigation when present.
fn same_origin_write(headers: &HeaderMap, ours: &str) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin.to_str().ok() == Some(ours);
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => matches!(site, "same-origin" | "none"),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_cookies_never_reach_the_app() {
        let v = HeaderValue::from_static(
            "theme=dark; __Host-spotoken_session=abc;__Host-spotoken_login=x; cart=3",
        );
        assert_eq!(
            without_our_cookies(&v).expect("kept"),
            HeaderValue::from_static("theme=dark; cart=3")
        );
        let only = HeaderValue::from_static("__Host-spotoken_session=abc");
        assert_eq!(without_our_cookies(&only), None);
    }

    #[test]
    fn statements_about_the_client_are_ours_alone() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("spotoken-user", "mallory"),
            ("Spotoken-Scopes", "everything"),
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("accept", "text/html"),
            ("authorization", "Basic eDp5"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
        }
        let out = forwarded_headers(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "authorization"]);
    }

    #[test]
    fn writes_carry_identity_from_this_origin_only() {
        let ours = "https://app.example";
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            same_origin_write(&h, ours)
        };
        assert!(with(&[("origin", "https://app.example")]));
        assert!(!with(&[("origin", "https://evil.example")]));
        assert!(!with(&[("origin", "null")]));
        assert!(!with(&[("sec-fetch-site", "same-site")]));
        assert!(!with(&[("sec-fetch-site", "cross-site")]));
        assert!(with(&[("sec-fetch-site", "same-origin")]));
        assert!(with(&[]), "not a browser: no cookie to abuse");
    }
}
