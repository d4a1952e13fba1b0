//! Keep-alive connections to the upstream API, pooled per thread.
//!
//! The proxy's hot path is "take an idle connection, send, hand the body to
//! the browser". hyper-util's pooled client does that with a shared pool
//! behind a mutex, keyed by a hashed origin, and hands each connection back
//! through a spawned task once it turns ready; here each thread keeps a plain
//! stack of idle connections per upstream, and a connection goes back the
//! moment the response body it carried has been read to its end (by
//! [`PooledBody`]), before its connection task has even noticed. The next
//! request takes it and waits the few microseconds until it is ready. A pool
//! that kept only connections already ready made requests open new
//! connections while dozens were about to turn idle (~156 upstream
//! connections for 64 clients, docs/BENCHMARKS.md).
//!
//! With one event loop per thread (`serve_on_threads`), a request and the
//! connection it uses are driven by the same thread. On a multi-threaded
//! runtime (tests) a connection may be returned to another thread's stack,
//! which is only a matter of locality.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Request, Response, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service as _;

/// Opens connections to the upstream API: rustls with the platform's
/// verifier (HTTPS, or plain HTTP to loopback, as the configured API URL was
/// checked at start), 10 s to connect. Built once: its TLS configuration (the
/// system's certificates, read from disk) is shared by every thread.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What a failed connection reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// A kept-alive connection from the pool ended before any of the response
    /// arrived: the upstream most likely closed it, idle, just as it was
    /// reused. The request may have reached it; an idempotent one can be
    /// sent again on a new connection.
    Stale(hyper::Error),
    /// Anything else: cannot connect, TLS, a new connection failing, a
    /// malformed response.
    Failed(BoxError),
}

impl SendError {
    fn after_reuse(e: hyper::Error) -> Self {
        let reset = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                )
            });
        if e.is_incomplete_message() || e.is_canceled() || reset {
            Self::Stale(e)
        } else {
            Self::Failed(e.into())
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stale(e) => write!(f, "a kept-alive connection ended before the response: {e}"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

type Sender = http1::SendRequest<Full<Bytes>>;

/// An idle connection older than this is closed rather than used: a server
/// may be about to close it (hyper-util's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per thread and upstream; more are closed.
const MAX_IDLE: usize = 512;

/// Distinguishes the pools of different [`Upstream`]s sharing a thread
/// (tests run several servers, each with its own emulator).
static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections: (pool id, stack, most recent last).
    static POOLS: RefCell<Vec<(usize, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// The most recently used idle connection of `pool` that is still open and
/// not too old.
fn take_idle(pool: usize) -> Option<Sender> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let stack = &mut pools.iter_mut().find(|(id, _)| *id == pool)?.1;
        while let Some(idle) = stack.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    })
}

/// Puts a connection back (dropping it, which closes it, when the stack is
/// full); closes connections idle for too long.
fn put_idle(pool: usize, sender: Sender) {
    // During thread teardown the pool may be gone: the connection just closes.
    let _ = POOLS.try_with(|pools| {
        let Ok(mut pools) = pools.try_borrow_mut() else {
            return;
        };
        let at = match pools.iter().position(|(id, _)| *id == pool) {
            Some(i) => i,
            None => {
                pools.push((pool, Vec::new()));
                pools.len() - 1
            }
        };
        let stack = &mut pools[at].1;
        let now = Instant::now();
        if stack
            .first()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= IDLE_TIMEOUT)
        {
            stack.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT && !i.sender.is_closed());
        }
        if stack.len() < MAX_IDLE {
            stack.push(Idle { sender, since: now });
        }
    });
}

/// The upstream API: where to connect, what to send as `Host`, and the path
/// every proxied path is appended to.
pub struct Upstream {
    connector: Connector,
    origin: Uri,
    prefix: Box<str>,
    host: HeaderValue,
    pool: usize,
}

impl Upstream {
    /// For the API base URL (already checked: HTTPS, or HTTP to loopback).
    pub fn new(api_base: &url::Url) -> Result<Self, spotoken::Error> {
        let bad = |why: &str| spotoken::Error::Configuration(format!("API URL {api_base}: {why}"));
        let host = api_base.host_str().ok_or_else(|| bad("no host"))?;
        let authority = match api_base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let origin = format!("{}://{authority}", api_base.scheme())
            .parse()
            .map_err(|_| bad("not a valid origin"))?;
        Ok(Self {
            connector: connector(),
            origin,
            prefix: api_base.path().trim_end_matches('/').into(),
            host: HeaderValue::from_str(&authority).map_err(|_| bad("not a valid host"))?,
            pool: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The upstream path for a (checked) path below the API base, with the
    /// query: origin-form, as an HTTP/1 request line wants it.
    pub fn path(&self, path: &str, query: Option<&str>) -> Result<Uri, axum::http::Error> {
        let mut pq =
            String::with_capacity(self.prefix.len() + 2 + path.len() + query.map_or(0, str::len));
        pq.push_str(&self.prefix);
        pq.push('/');
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Ok(Uri::try_from(pq)?)
    }

    /// The `Host` header for upstream requests.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends `req` (origin-form URI, `Host` set) over an idle connection of
    /// this thread, or a new one; only a new one when `fresh` (to send an
    /// idempotent request again after [`SendError::Stale`]). A request that
    /// an idle connection turned out unable to take (closed meanwhile) was
    /// never written, and goes to the next one.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        fresh: bool,
    ) -> Result<Response<PooledBody>, SendError> {
        while let Some(mut sender) = (!fresh).then(|| take_idle(self.pool)).flatten() {
            if std::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .is_err()
            {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::after_reuse(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, TLS) is a large future, rarely needed.
        let mut sender = Box::pin(self.connect()).await.map_err(SendError::Failed)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Failed(e.into()))?;
        Ok(self.pooled(resp, sender))
    }

    async fn connect(&self) -> Result<Sender, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.origin.clone()).await?;
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    fn pooled(&self, resp: Response<Incoming>, sender: Sender) -> Response<PooledBody> {
        // An empty body (204, 304) is never polled: its drop returns the
        // connection.
        resp.map(|body| PooledBody {
            body,
            back: Some((sender, self.pool)),
        })
    }
}

/// Builds the [`Connector`].
fn connector() -> Connector {
    spotoken::http::install_crypto_provider();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_platform_verifier()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// An upstream response body that returns its connection to the pool once
/// read to the end. Dropped before its end, it closes the connection (HTTP/1
/// cannot skip the rest of a response).
pub struct PooledBody {
    body: Incoming,
    back: Option<(Sender, usize)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            put_idle(pool, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            None => this.release(),
            Some(Err(_)) => this.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use http_body_util::BodyExt as _;

    use super::*;

    /// An upstream on port 0 answering `{}` to everything, counting the
    /// connections it accepts; `keep_alive: false` answers with
    /// `Connection: close`.
    async fn upstream(keep_alive: bool) -> (Upstream, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = url::Url::parse(&format!(
            "http://{}/base/",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    assert!(req.uri().path().starts_with("/base/"), "{}", req.uri());
                    assert!(req.headers().contains_key("host"));
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{}"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        (Upstream::new(&url).expect("upstream"), accepted)
    }

    async fn get(up: &Upstream) -> Bytes {
        let req = Request::builder()
            .uri(up.path("v1/me", Some("a=1")).expect("path"))
            .header("host", up.host())
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = up.send(req, false).await.expect("send");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    #[test]
    fn paths_are_origin_form_below_the_base() {
        let up = Upstream::new(&url::Url::parse("https://api.example:8443/").expect("url"))
            .expect("upstream");
        assert_eq!(up.path("v1/me", None).expect("path"), "/v1/me");
        assert_eq!(up.path("v1/me", Some("x=1")).expect("path"), "/v1/me?x=1");
        assert_eq!(up.host(), "api.example:8443");
        let up = Upstream::new(&url::Url::parse("https://api.example/base").expect("url"))
            .expect("upstream");
        assert_eq!(up.path("v1/me", None).expect("path"), "/base/v1/me");
        assert_eq!(up.host(), "api.example");
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_carries_the_next_request() {
        let (up, accepted) = upstream(true).await;
        for _ in 0..20 {
            assert_eq!(get(&up).await, "{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Three at once need three connections; afterwards they are reused.
        let (a, b, c) = tokio::join!(get(&up), get(&up), get(&up));
        assert_eq!((a, b, c), ("{}".into(), "{}".into(), "{}".into()));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for _ in 0..20 {
            get(&up).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (up, accepted) = upstream(false).await;
        for _ in 0..5 {
            assert_eq!(get(&up).await, "{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    /// An upstream that answers each connection's first request with a
    /// keep-alive response and then closes the connection; reports each
    /// close on `closed`.
    async fn closing_upstream() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<()>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = url::Url::parse(&format!("http://{}/", listener.local_addr().expect("addr")))
            .expect("url");
        let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the request was cut off");
                    head.extend_from_slice(&buf[..n]);
                }
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .expect("write");
                tcp.shutdown().await.expect("shutdown");
                drop(tcp);
                let _ = closed.send(());
            }
        });
        (Upstream::new(&url).expect("upstream"), rx)
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_noticed_before_use() {
        let (up, mut closed) = closing_upstream().await;
        assert_eq!(get(&up).await, "{}");
        // The idle connection is now closed by the upstream; the next request
        // finds out by polling it and takes a new one.
        closed.recv().await.expect("closed");
        assert_eq!(get(&up).await, "{}");
        closed.recv().await.expect("closed");
        assert_eq!(get(&up).await, "{}");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_gives_its_connection_up() {
        let (up, accepted) = upstream(true).await;
        let req = Request::builder()
            .uri(up.path("v1/me", None).expect("path"))
            .header("host", up.host())
            .body(Full::new(Bytes::new()))
            .expect("request");
        drop(up.send(req, false).await.expect("send"));
        assert_eq!(get(&up).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
