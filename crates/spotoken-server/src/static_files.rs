//! `--static DIR`: the team's built single-page app, served from the same
//! origin as `/auth` and `/api`, so the session cookie and the app meet with
//! no CORS and no second server.
//!
//! What a front server for an app must do and nothing more: a content type
//! from the extension; `ETag` and `Last-Modified` with `304 Not Modified`;
//! a precompressed `name.br` or `name.gz` beside a file when the browser
//! accepts it; a year-long immutable cache for hashed asset names
//! (`index-4f3a9c1b.js`) and `no-cache` for everything else, `index.html`
//! first; and history-API routing: a `GET` for a path that is no file, from a
//! browser asking for HTML, gets `DIR/index.html`. Every path is resolved
//! (symlinks included) and must stay inside `DIR`; dot files are never
//! served (`.git`, `.env`), except under `.well-known`.
//!
//! Not tower-http's `ServeDir`: it refuses `..` in the request path but opens
//! whatever a symlink inside the directory points to, and the check that
//! closes that (resolve, then compare with the root) is most of this module.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::error::AppError;

/// The directory, resolved once at start.
#[derive(Debug, Clone)]
pub(crate) struct StaticFiles {
    root: PathBuf,
}

/// One file found for a request: where, how big, when changed, and the
/// content encoding of the variant chosen.
struct Found {
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    encoding: Option<&'static str>,
    has_variants: bool,
}

impl StaticFiles {
    /// For `dir`, which must be a directory holding `index.html`.
    pub(crate) fn new(dir: &Path) -> Result<Self, spotoken::Error> {
        let root = std::fs::canonicalize(dir).map_err(|e| {
            spotoken::Error::Configuration(format!("--static {}: {e}", dir.display()))
        })?;
        if !root.join("index.html").is_file() {
            return Err(spotoken::Error::Configuration(format!(
                "--static {}: no index.html in it (the app's entry page)",
                dir.display()
            )));
        }
        Ok(Self { root })
    }

    /// Answers a request for a path that is not one of spotoken's own.
    pub(crate) async fn answer(&self, req: &Parts) -> Response<Body> {
        let method = &req.method;
        if method != Method::GET && method != Method::HEAD {
            return AppError::MethodNotAllowed.into_response();
        }
        let headers = &req.headers;
        let found = match relative_path(req.uri.path()) {
            Some(rel) => self.find(&rel, headers).await,
            None => None,
        };
        let (found, fallback) = match found {
            Some(f) => (f, false),
            None if accepts_html(headers) => {
                match self.find(Path::new("index.html"), headers).await {
                    Some(f) => (f, true),
                    None => return AppError::NotFound.into_response(),
                }
            }
            None => return AppError::NotFound.into_response(),
        };
        respond(found, fallback, method == Method::HEAD, headers).await
    }

    /// The file (or the `index.html` of the directory) `rel` names, in the
    /// encoding the browser accepts best; `None` when there is none inside
    /// the root.
    async fn find(&self, rel: &Path, headers: &HeaderMap) -> Option<Found> {
        let mut path = self.inside(&self.root.join(rel)).await?;
        let mut meta = tokio::fs::metadata(&path).await.ok()?;
        if meta.is_dir() {
            path = self.inside(&path.join("index.html")).await?;
            meta = tokio::fs::metadata(&path).await.ok()?;
        }
        if !meta.is_file() {
            return None;
        }
        let accepted = accepted_encodings(headers);
        let mut has_variants = false;
        for (encoding, ext) in [("br", "br"), ("gzip", "gz")] {
            let mut name = path.as_os_str().to_owned();
            name.push(".");
            name.push(ext);
            let Some(variant) = self.inside(Path::new(&name)).await else {
                continue;
            };
            let Ok(vmeta) = tokio::fs::metadata(&variant).await else {
                continue;
            };
            if !vmeta.is_file() {
                continue;
            }
            has_variants = true;
            if accepted.contains(&encoding) {
                return Some(Found {
                    path: variant,
                    len: vmeta.len(),
                    modified: vmeta.modified().ok()?,
                    encoding: Some(encoding),
                    has_variants,
                });
            }
        }
        Some(Found {
            len: meta.len(),
            modified: meta.modified().ok()?,
            path,
            encoding: None,
            has_variants,
        })
    }

    /// `path` with every symlink resolved, if it exists and is inside the
    /// root.
    async fn inside(&self, path: &Path) -> Option<PathBuf> {
        let real = tokio::fs::canonicalize(path).await.ok()?;
        real.starts_with(&self.root).then_some(real)
    }
}

/// The request path as a relative file path: percent-decoded, without empty
/// segments; `None` for anything that could leave the directory or name a
/// hidden file (`.`/`..` segments, dot files other than `.well-known`,
/// backslashes, NUL, bytes that are not UTF-8).
fn relative_path(uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(uri_path)?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        if seg.starts_with('.') && seg != ".well-known" {
            return None;
        }
        if seg.contains('\\') || seg.contains('\0') || seg.contains(':') {
            return None;
        }
        rel.push(seg);
    }
    if rel.as_os_str().is_empty() {
        rel.push("index.html");
    }
    Some(rel)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the request asks for HTML (a navigation), as opposed to a script,
/// an image or a `fetch` for JSON, which get a 404 for a missing file.
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            let mut parts = m.split(';');
            let ty = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            !refused && (ty.eq_ignore_ascii_case("text/html"))
        })
}

/// The encodings `Accept-Encoding` allows (q=0 excluded).
fn accepted_encodings(headers: &HeaderMap) -> Vec<&'static str> {
    let mut out = Vec::new();
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let zero = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                == Some(0.0)
        });
        if zero {
            continue;
        }
        match name.as_str() {
            "br" => out.push("br"),
            "gzip" => out.push("gzip"),
            _ => {}
        }
    }
    out
}

/// The content type for a file name (by its extension; the original's, for
/// a `.br`/`.gz` variant).
pub(crate) fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Whether a file name carries a content hash, as bundlers name their
/// output (`index-BdK3x9Qa.js` from Vite, `main.3f2a9c1b.js` from webpack):
/// a part of the stem, after the last `-` or `.`, of at least 8 letters,
/// digits or `_`, with a digit or both cases in it. Such a file never
/// changes under its name, so browsers may keep it for a year.
pub(crate) fn is_hashed(name: &str) -> bool {
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    let Some(part) = stem.rsplit(['-', '.']).next() else {
        return false;
    };
    if part.len() == stem.len() || part.len() < 8 {
        return false;
    }
    let plain = part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let digit = part.bytes().any(|b| b.is_ascii_digit());
    let upper = part.bytes().any(|b| b.is_ascii_uppercase());
    let lower = part.bytes().any(|b| b.is_ascii_lowercase());
    plain && (digit || (upper && lower))
}

/// The strong validator for a file variant: its size, its modification time
/// and its encoding (each encoding is a different representation).
fn etag(found: &Found) -> String {
    let mtime = found
        .modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format!(
        "\"{:x}-{:x}{}\"",
        found.len,
        mtime.as_nanos(),
        found.encoding.map_or(String::new(), |e| format!("-{e}"))
    )
}

/// Whether the browser's copy is current: `If-None-Match` when sent (it
/// wins), else `If-Modified-Since` (to the second).
fn not_modified(headers: &HeaderMap, tag: &str, modified: SystemTime) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        let Ok(inm) = inm.to_str() else {
            return false;
        };
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag);
    }
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    secs(modified) <= secs(since)
}

async fn respond(found: Found, fallback: bool, head: bool, req: &HeaderMap) -> Response<Body> {
    let name = found
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let original = match found.encoding {
        Some(_) => name.rsplit_once('.').map_or(name, |(n, _)| n),
        None => name,
    };
    let tag = etag(&found);
    let cache = if !fallback && is_hashed(original) {
        "public, max-age=31536000, immutable"
    } else {
        // index.html above all: a new deploy must reach browsers at once.
        "no-cache"
    };
    let mut headers = HeaderMap::new();
    let mut set = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(k, v);
        }
    };
    set(header::ETAG, &tag);
    set(
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(found.modified),
    );
    set(header::CACHE_CONTROL, cache);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if found.has_variants {
        set(header::VARY, "Accept-Encoding");
    }
    if not_modified(req, &tag, found.modified) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = headers;
        return r;
    }
    set(header::CONTENT_TYPE, content_type(original));
    set(header::CONTENT_LENGTH, &found.len.to_string());
    if let Some(e) = found.encoding {
        set(header::CONTENT_ENCODING, e);
    }
    let body = if head {
        Body::empty()
    } else {
        match tokio::fs::File::open(&found.path).await {
            Ok(f) => Body::new(FileBody {
                file: f,
                left: found.len,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a static file");
                return AppError::NotFound.into_response();
            }
        }
    };
    let mut r = Response::new(body);
    *r.headers_mut() = headers;
    r
}

/// A file's bytes as a response body, 64 KiB at a time, stopping at the
/// length announced (a file that grows meanwhile is cut there; one that
/// shrinks ends the body early, which the client sees as a short read).
struct FileBody {
    file: tokio::fs::File,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.left.min(64 * 1024)).unwrap_or(64 * 1024);
        let mut buf = vec![0u8; want];
        let mut read = tokio::io::ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    self.left = 0;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was sent",
                    ))));
                }
                self.left -= n as u64;
                buf.truncate(n);
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_are_told_from_plain_ones() {
        for hashed in [
            "index-BdK3x9Qa.js",
            "main.3f2a9c1b.js",
            "vendor-4f3a9c1b2d.css",
            "logo.a1b2c3d4e5f6.svg",
            "chunk-DwQvUtLq.js",
        ] {
            assert!(is_hashed(hashed), "{hashed}");
        }
        for plain in [
            "index.html",
            "app.js",
            "app-component.js",
            "jquery-3.7.1.min.js",
            "favicon.ico",
            "longfilename.js",
            "README",
        ] {
            assert!(!is_hashed(plain), "{plain}");
        }
    }

    #[test]
    fn request_paths_cannot_leave_the_directory() {
        assert_eq!(relative_path("/"), Some(PathBuf::from("index.html")));
        assert_eq!(
            relative_path("/assets/app.js"),
            Some(PathBuf::from("assets/app.js"))
        );
        assert_eq!(relative_path("/a%20b.txt"), Some(PathBuf::from("a b.txt")));
        assert_eq!(
            relative_path("/.well-known/security.txt"),
            Some(PathBuf::from(".well-known/security.txt"))
        );
        for bad in [
            "/../etc/passwd",
            "/assets/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/.git/config",
            "/.env",
            "/a/./b",
            "/a%5c..%5cb",
            "/a%00b",
            "/%ff",
            "/%zz",
            "/C:/x",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn html_is_asked_for_by_navigations_only() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("v"));
            accepts_html(&h)
        };
        assert!(with(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!with("*/*"));
        assert!(!with("application/json"));
        assert!(!with("text/html;q=0"));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn encodings_follow_accept_encoding() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br;q=0"),
        );
        assert_eq!(accepted_encodings(&h), ["gzip"]);
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.WOFF2"), "font/woff2");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
