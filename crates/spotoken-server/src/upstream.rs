//! Keep-alive connections to the upstream API, pooled per thread, and the
//! exchanges over them.
//!
//! The proxy's hot path is "take an idle connection, send, hand the body to
//! the browser". Each thread keeps a plain stack of idle connections per
//! upstream (no shared pool, no mutex), and no connection has a task of its
//! own: the request writes to the connection and reads the response head
//! itself, and the response body reads the rest as the browser's connection
//! takes it ([`UpstreamBody`]). A body that had already arrived with the head
//! (most Web API answers) gives the connection back at once; any other gives
//! it back when read to its end. The wire format is [`crate::http1`]'s.
//!
//! An idle connection is checked before reuse without a system call (its
//! read readiness, which the event loop sets when the upstream closes it);
//! one that still ends before any of the response arrives is reported as
//! [`SendError::Stale`], so the proxy can send an idempotent request again.
//!
//! With one event loop per thread (`serve_on_threads`), a request and the
//! connection it uses are on the same thread. On a multi-threaded runtime
//! (tests) a connection may be returned to another thread's stack, which is
//! only a matter of locality.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, Response, Uri};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tower::Service as _;

use crate::http1::{self, Chunked, Framing, Malformed, Step};

/// Opens connections to the upstream API: rustls with the platform's
/// verifier (HTTPS, or plain HTTP to loopback, as the configured API URL was
/// checked at start), 10 s to connect. Built once: its TLS configuration (the
/// system's certificates, read from disk) is shared by every thread.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What a failed connection reports.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A kept-alive connection from the pool ended before any of the response
    /// arrived: the upstream most likely closed it, idle, just as it was
    /// reused. The request may have reached it; an idempotent one can be
    /// sent again on a new connection.
    Stale(std::io::Error),
    /// Anything else: cannot connect, TLS, a new connection failing, a
    /// malformed response.
    Failed(BoxError),
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

/// An idle connection older than this is closed rather than used: a server
/// may be about to close it (hyper-util's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per thread and upstream; more are closed.
const MAX_IDLE: usize = 512;

/// Read buffer room made before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Distinguishes the pools of different [`Upstream`]s sharing a thread
/// (tests run several servers, each with its own emulator).
static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

/// A connection's byte stream: plain TCP (loopback) or TLS.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1 connection with its read buffer (which may hold the start of
/// nothing: responses are only read after their request).
struct Conn {
    io: Io,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    /// Still open and quiet? Polls a read once without waking anyone: the
    /// event loop marks a connection readable when the upstream closes it,
    /// and an idle connection has nothing else to say. No system call unless
    /// it was marked.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_fill(&mut cx).is_pending()
    }

    /// Reads more into the buffer; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        std::future::Future::poll(read, cx)
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections: (pool id, stack, most recent last).
    static POOLS: RefCell<Vec<(usize, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// The most recently used idle connection of `pool` that is still open and
/// not too old.
fn take_idle(pool: usize) -> Option<Conn> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let stack = &mut pools.iter_mut().find(|(id, _)| *id == pool)?.1;
        while let Some(mut idle) = stack.pop() {
            if idle.since.elapsed() < IDLE_TIMEOUT && idle.conn.still_open() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Puts a connection back (dropping it, which closes it, when the stack is
/// full); closes connections idle for too long.
fn put_idle(pool: usize, conn: Conn) {
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
            stack.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT);
        }
        if stack.len() < MAX_IDLE {
            stack.push(Idle { conn, since: now });
        }
    });
}

/// The upstream API: where to connect, what to send as `Host`, and the path
/// every proxied path is appended to.
pub(crate) struct Upstream {
    connector: Connector,
    /// `--upstream-http2`: hyper's HTTP/2 client instead of the HTTP/1
    /// connections above, one client (and so one multiplexed connection)
    /// per thread.
    h2: Option<Http2>,
    origin: Uri,
    prefix: Box<str>,
    host: HeaderValue,
    pool: usize,
    stall: Duration,
}

impl Upstream {
    /// For the API base URL (already checked: HTTPS, or HTTP to loopback),
    /// the system's roots, HTTP/1.1 ([`Upstream::configured`] without options).
    #[cfg(test)]
    fn new(api_base: &url::Url) -> Result<Self, spotoken::Error> {
        Self::with_connector(api_base, connector())
    }

    /// With another connector (tests: one trusting a test CA).
    fn with_connector(api_base: &url::Url, connector: Connector) -> Result<Self, spotoken::Error> {
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
            connector,
            origin,
            prefix: api_base.path().trim_end_matches('/').into(),
            host: HeaderValue::from_str(&authority).map_err(|_| bad("not a valid host"))?,
            pool: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            stall: Duration::from_secs(30),
            h2: None,
        })
    }

    /// For the API base URL (already checked: HTTPS, or HTTP to loopback),
    /// as configured by `--upstream-ca` (roots besides the system's, a PEM
    /// file; verification stays on) and `--upstream-http2` (HTTP/2 over TLS,
    /// negotiated by ALPN).
    pub(crate) fn configured(
        api_base: &url::Url,
        extra_roots: Option<&std::path::Path>,
        http2: bool,
    ) -> Result<Self, spotoken::Error> {
        let tls = tls_config(extra_roots)?;
        let mut up = Self::with_connector(api_base, connector_from(tls.clone(), false))?;
        if http2 {
            if api_base.scheme() != "https" {
                return Err(spotoken::Error::Configuration(format!(
                    "--upstream-http2 needs an https API URL, not {api_base}"
                )));
            }
            up.h2 = Some(Http2 {
                connector: connector_from(tls, true),
                clients: thread_local::ThreadLocal::new(),
            });
        }
        Ok(up)
    }

    /// How long a response body may wait for its next bytes before it fails
    /// (and its connection is closed); 30 s unless set. The head is the
    /// proxy's to time.
    pub(crate) fn stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The upstream request target for a checked path below the API base
    /// and the query: origin-form. Both come from a URI hyper already
    /// parsed, so they hold no characters a request line cannot.
    pub(crate) fn target(&self, path: &str, query: Option<&str>) -> String {
        let mut t =
            String::with_capacity(self.prefix.len() + 2 + path.len() + query.map_or(0, str::len));
        t.push_str(&self.prefix);
        t.push('/');
        t.push_str(path);
        if let Some(q) = query {
            t.push('?');
            t.push_str(q);
        }
        t
    }

    /// The `Host` header for upstream requests.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Sends a request (`headers` with `Host` set) over an idle connection of
    /// this thread, or a new one; only a new one when `fresh` (to send an
    /// idempotent request again after [`SendError::Stale`]).
    pub(crate) async fn send(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        fresh: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Some(h2) = &self.h2 {
            return Box::pin(self.send_h2(h2, method, target, headers, body)).await;
        }
        let (mut conn, reused) = match (!fresh).then(|| take_idle(self.pool)).flatten() {
            Some(c) => (c, true),
            // Boxed: connecting (TCP, TLS) is a large future, rarely needed.
            None => (
                Box::pin(self.connect()).await.map_err(SendError::Failed)?,
                false,
            ),
        };
        http1::encode_request(method, target, headers, body, &mut conn.out);
        let written = async {
            conn.io.write_all(&conn.out).await?;
            conn.io.flush().await
        }
        .await;
        if let Err(e) = written {
            return Err(lost(e, reused));
        }
        let head = loop {
            match http1::parse_head(&conn.buf, method) {
                Ok(Some(head)) => {
                    let _ = conn.buf.split_to(head.size);
                    if head.status.is_informational() {
                        continue;
                    }
                    break head;
                }
                Ok(None) => {}
                Err(e) => return Err(SendError::Failed(e.into())),
            }
            let nothing_yet = conn.buf.is_empty();
            match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(0) if nothing_yet => {
                    return Err(lost(std::io::ErrorKind::UnexpectedEof.into(), reused));
                }
                Ok(0) => return Err(SendError::Failed("the response head was cut off".into())),
                Ok(_) => {}
                Err(e) if nothing_yet => return Err(lost(e, reused)),
                Err(e) => return Err(SendError::Failed(e.into())),
            }
        };
        let mut resp = Response::new(UpstreamBody::start(Reading {
            conn,
            left: Left::from(head.framing),
            reusable: head.reusable,
            pool: self.pool,
            stall: self.stall,
            waiting: None,
        }));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// The same exchange over this thread's HTTP/2 client.
    async fn send_h2(
        &self,
        h2: &Http2,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response<UpstreamBody>, SendError> {
        let client = h2.clients.get_or(|| {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build(h2.connector.clone())
        });
        let mut uri = Uri::builder().path_and_query(target);
        if let (Some(scheme), Some(authority)) = (self.origin.scheme(), self.origin.authority()) {
            uri = uri.scheme(scheme.clone()).authority(authority.clone());
        }
        let uri = uri.build().map_err(|e| SendError::Failed(e.into()))?;
        let mut req =
            axum::http::Request::new(http_body_util::Full::new(Bytes::copy_from_slice(body)));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers.clone();
        // HTTP/2 names the authority in its own pseudo-header.
        req.headers_mut().remove(axum::http::header::HOST);
        let resp = client
            .request(req)
            .await
            .map_err(|e| SendError::Failed(e.into()))?;
        let (parts, incoming) = resp.into_parts();
        let hint = incoming.size_hint();
        Ok(Response::from_parts(
            parts,
            UpstreamBody {
                ready: None,
                rest: None,
                hint,
                h2: Some(incoming),
            },
        ))
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = match connector.call(self.origin.clone()).await? {
            hyper_rustls::MaybeHttpsStream::Http(tcp) => Io::Plain(tcp.into_inner()),
            tls => Io::Tls(Box::new(TokioIo::new(tls))),
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(512),
        })
    }
}

/// A connection that failed before any of the response: stale when it was
/// reused (and the failure is the upstream hanging up).
fn lost(e: std::io::Error, reused: bool) -> SendError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    if reused
        && matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
    {
        SendError::Stale(e)
    } else {
        SendError::Failed(e.into())
    }
}

/// Builds the [`Connector`].
pub(crate) fn connector() -> Connector {
    spotoken::install_crypto_provider();
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

/// `--upstream-http2`: a connector offering only `h2` by ALPN and one
/// HTTP/2 client per thread over it.
struct Http2 {
    connector: Connector,
    clients: thread_local::ThreadLocal<
        hyper_util::client::legacy::Client<Connector, http_body_util::Full<Bytes>>,
    >,
}

/// The TLS client configuration: the platform's verifier, given the
/// certificates in the PEM file `extra_roots` as more roots when set.
fn tls_config(
    extra_roots: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, spotoken::Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    spotoken::install_crypto_provider();
    let Some(file) = extra_roots else {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        return Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| spotoken::Error::Configuration(format!("TLS roots: {e}")))?
            .with_no_client_auth());
    };
    let bad = |why: String| {
        spotoken::Error::Configuration(format!("--upstream-ca {}: {why}", file.display()))
    };
    let roots = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
            .map_err(|e| bad(e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        // Not a way around verification: the platform's verifier, given more roots.
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth())
}

/// A [`Connector`] over `tls`: HTTP/1.1 by ALPN, or only `h2`.
fn connector_from(tls: rustls::ClientConfig, http2: bool) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    }
}

/// An upstream response body. What arrived with the head is handed out
/// first; the rest is read from the connection as the body is polled. The
/// connection goes back to this thread's pool once the body has ended (at
/// once when it all came with the head); dropped before its end, it closes
/// the connection (HTTP/1 cannot skip the rest of a response).
pub(crate) struct UpstreamBody {
    /// Bytes ready to hand out.
    ready: Option<Bytes>,
    /// The rest, when there is more to read.
    rest: Option<Reading>,
    /// What is still to come, when known.
    hint: SizeHint,
    /// An HTTP/2 response's body (`--upstream-http2`), read through hyper.
    h2: Option<hyper::body::Incoming>,
}

struct Reading {
    conn: Conn,
    left: Left,
    reusable: bool,
    pool: usize,
    stall: Duration,
    /// Running while the body waits for bytes.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What is left of a body: the decoding state for its [`Framing`].
enum Left {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl From<Framing> for Left {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Left::Length(0),
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::default()),
            Framing::UntilClose => Left::UntilClose,
        }
    }
}

impl UpstreamBody {
    /// Takes what of the body is already buffered. The common case: the
    /// whole body came with the head, in one piece (kept without a `Vec`, an
    /// allocation per request).
    fn start(mut reading: Reading) -> Self {
        let mut ready: Option<Bytes> = None;
        let mut more: Vec<Bytes> = Vec::new();
        let done = loop {
            match reading.step() {
                Ok(Step::Data(b)) if ready.is_none() => ready = Some(b),
                Ok(Step::Data(b)) => more.push(b),
                Ok(Step::Done) => break true,
                Ok(Step::NeedMore) | Err(_) => break false,
            }
        };
        if let Some(first) = ready.take_if(|_| !more.is_empty()) {
            more.insert(0, first);
            ready = Some(more.concat().into());
        }
        let got = ready.as_ref().map_or(0, |b| b.len() as u64);
        let hint = match (&reading.left, done) {
            (_, true) => SizeHint::with_exact(got),
            (Left::Length(n), false) => SizeHint::with_exact(got + n),
            _ => SizeHint::default(),
        };
        let rest = if done {
            reading.finish();
            None
        } else {
            Some(reading)
        };
        Self {
            ready,
            rest,
            hint,
            h2: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(h2) = this.h2.as_mut() {
            return Pin::new(h2).poll_frame(cx).map_err(Into::into);
        }
        if let Some(b) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            let Some(reading) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            match reading.step() {
                Ok(Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Ok(Step::Done) => {
                    if let Some(r) = this.rest.take() {
                        r.finish();
                    }
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.rest = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match reading.conn.poll_fill(cx) {
                Poll::Pending => {
                    let stall = reading.stall;
                    let waiting = reading
                        .waiting
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                    if waiting.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.rest = None;
                    return Poll::Ready(Some(Err(format!(
                        "the upstream sent nothing more of the body for {} s",
                        stall.as_secs_f64()
                    )
                    .into())));
                }
                Poll::Ready(Ok(0)) => {
                    let until_close = matches!(reading.left, Left::UntilClose);
                    this.rest = None;
                    return Poll::Ready(if until_close {
                        None
                    } else {
                        Some(Err("the upstream closed the connection mid-body".into()))
                    });
                }
                Poll::Ready(Ok(_)) => reading.waiting = None,
                Poll::Ready(Err(e)) => {
                    this.rest = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.h2 {
            Some(h2) => h2.is_end_stream(),
            None => self.ready.is_none() && self.rest.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.h2 {
            Some(h2) => h2.size_hint(),
            None => self.hint,
        }
    }
}

impl Reading {
    /// The next piece from what is buffered.
    fn step(&mut self) -> Result<Step, Malformed> {
        let buf = &mut self.conn.buf;
        match &mut self.left {
            Left::Length(0) => Ok(Step::Done),
            Left::Length(n) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                *n -= take as u64;
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Left::Chunked(c) => c.step(buf),
            Left::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Left::UntilClose => Ok(Step::Data(buf.split().freeze())),
        }
    }

    /// The body has ended: the connection goes back if it can carry more.
    fn finish(self) {
        if self.reusable && self.conn.buf.is_empty() {
            put_idle(self.pool, self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use axum::http::{Request, StatusCode};
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Incoming;

    use super::*;

    const BIG: usize = 1024 * 1024;

    type Reply = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    /// A body of unknown length (so hyper sends it chunked), last chunk first.
    struct Chunks(Vec<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop().map(|b| Ok(Frame::data(b))))
        }
    }

    /// A listener on a free loopback port, and its `{scheme}://…/base/` URL.
    async fn bound(scheme: &str) -> (tokio::net::TcpListener, url::Url) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = url::Url::parse(&format!("{scheme}://{addr}/base/")).expect("url");
        (listener, url)
    }

    /// hyper's server as the upstream, counting the connections it accepts:
    /// `/base/v1/me` is `{}` with a length, `/base/chunked` three chunks,
    /// `/base/big` a megabyte, `/base/empty` a 204; `keep_alive: false`
    /// answers with `Connection: close`.
    async fn upstream(keep_alive: bool) -> (Upstream, Arc<AtomicU64>) {
        let (listener, url) = bound("http").await;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer)),
                );
            }
        });
        (Upstream::new(&url).expect("upstream"), accepted)
    }

    /// The test upstream's answers (see [`upstream`]).
    async fn answer(req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
        assert!(req.headers().contains_key("host"));
        let body: Reply = match req.uri().path() {
            "/base/chunked" => Chunks(vec!["ef".into(), "cd".into(), "ab".into()]).boxed(),
            "/base/big" => Full::new(Bytes::from(vec![b'x'; BIG])).boxed(),
            "/base/empty" => {
                let mut r = Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() = StatusCode::NO_CONTENT;
                return Ok::<_, Infallible>(r);
            }
            _ => Full::new(Bytes::from("{}")).boxed(),
        };
        Ok(Response::new(body))
    }

    /// The same upstream over TLS, with a certificate for 127.0.0.1 from a
    /// test CA, and an [`Upstream`] that trusts that CA.
    async fn tls_upstream() -> (Upstream, Arc<AtomicU64>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().clone();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (listener, url) = bound("https").await;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.expect("handshake");
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        (
            Upstream::with_connector(&url, connector).expect("upstream"),
            accepted,
        )
    }

    #[tokio::test]
    async fn over_tls_bodies_arrive_whole_and_connections_are_reused() {
        let (up, accepted) = tls_upstream().await;
        for _ in 0..5 {
            assert_eq!(get(&up).await, "{}");
        }
        assert_eq!(get_path(&up, "chunked").await, "abcdef");
        assert_eq!(get_path(&up, "big").await.len(), BIG);
        assert_eq!(get(&up).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let resp = send(&up, Method::GET, "big").await;
        drop(resp);
        assert_eq!(get(&up).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    async fn send(up: &Upstream, method: Method, path: &str) -> Response<UpstreamBody> {
        let mut headers = HeaderMap::new();
        headers.insert("host", up.host().clone());
        up.send(&method, &up.target(path, Some("a=1")), &headers, b"", false)
            .await
            .expect("send")
    }

    async fn get_path(up: &Upstream, path: &str) -> Bytes {
        let resp = send(up, Method::GET, path).await;
        assert!(resp.status().is_success());
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    async fn get(up: &Upstream) -> Bytes {
        get_path(up, "v1/me").await
    }

    /// The emulator with its HTTPS port (HTTP/2 offered if `http2`), its
    /// test CA in a PEM file in a temporary directory, and the port's URL.
    async fn tls_emulator(
        http2: bool,
    ) -> (
        spotoken_emulator::Emulator,
        tempfile::TempDir,
        std::path::PathBuf,
        url::Url,
    ) {
        let emu = spotoken_emulator::Emulator::builder()
            .tls_port(0)
            .http2(http2)
            .start()
            .await
            .expect("emulator");
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, emu.tls_ca().expect("CA").ca_pem()).expect("write");
        let url = url::Url::parse(&emu.tls_url().expect("TLS URL")).expect("url");
        (emu, dir, ca, url)
    }

    /// A GET of `target` with `Host` set; the status, or why there was none.
    async fn status_of(up: &Upstream, target: &str) -> Result<u16, SendError> {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::HOST, up.host().clone());
        let r = up.send(&Method::GET, target, &headers, b"", false).await?;
        Ok(r.status().as_u16())
    }

    #[tokio::test]
    async fn upstream_ca_adds_a_root_and_verification_stays_on() {
        let (emu, dir, ca, url) = tls_emulator(false).await;
        let up = Upstream::configured(&url, Some(&ca), false).expect("upstream");
        // No token: the emulator's 401, over a verified TLS connection, reused.
        for _ in 0..3 {
            assert_eq!(status_of(&up, "/v1/me").await.expect("answer"), 401);
        }
        let c = emu.counters();
        assert_eq!(c.tls_full_handshakes + c.tls_resumed_handshakes, 1);
        // Without the extra root the certificate is refused.
        let plain = Upstream::new(&url).expect("upstream");
        assert!(status_of(&plain, "/v1/me").await.is_err());
        // A file with no certificate in it is a configuration error.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").expect("write");
        assert!(matches!(
            Upstream::configured(&url, Some(&empty), false),
            Err(spotoken::Error::Configuration(_))
        ));
    }

    #[tokio::test]
    async fn http2_upstream_carries_every_request_on_one_connection() {
        let (emu, _dir, ca, url) = tls_emulator(true).await;
        let up = Upstream::configured(&url, Some(&ca), true).expect("upstream");
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::HOST, up.host().clone());
        for _ in 0..3 {
            let r = up
                .send(&Method::GET, "/v1/me", &headers, b"", false)
                .await
                .expect("answer");
            // The emulator's own 401 for /v1/me (a wrong path would be a 404).
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            let body = r.into_body().collect().await.expect("body").to_bytes();
            assert!(body.starts_with(b"{"), "{body:?}");
        }
        let c = emu.counters();
        assert_eq!((c.http2_connections, c.connections), (1, 1), "{c:?}");
        // Plain HTTP has no ALPN to agree on HTTP/2 with.
        let plain = url::Url::parse(&emu.url()).expect("url");
        assert!(Upstream::configured(&plain, None, true).is_err());
    }

    #[test]
    fn targets_are_origin_form_below_the_base() {
        let up = Upstream::new(&url::Url::parse("https://api.example:8443/").expect("url"))
            .expect("upstream");
        assert_eq!(up.target("v1/me", None), "/v1/me");
        assert_eq!(up.target("v1/me", Some("x=1")), "/v1/me?x=1");
        assert_eq!(up.host(), "api.example:8443");
        let up = Upstream::new(&url::Url::parse("https://api.example/base").expect("url"))
            .expect("upstream");
        assert_eq!(up.target("v1/me", None), "/base/v1/me");
        assert_eq!(up.host(), "api.example");
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_carries_the_next_request() {
        let (up, accepted) = upstream(true).await;
        for _ in 0..20 {
            assert_eq!(get(&up).await, "{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Three bodies still being read need three connections; afterwards
        // they are reused.
        let (a, b, c) = tokio::join!(
            send(&up, Method::GET, "big"),
            send(&up, Method::GET, "big"),
            send(&up, Method::GET, "big")
        );
        for r in [a, b, c] {
            assert_eq!(
                r.into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes()
                    .len(),
                BIG
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for _ in 0..20 {
            get(&up).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn chunked_large_and_empty_bodies_arrive_whole_and_keep_the_connection() {
        let (up, accepted) = upstream(true).await;
        let resp = send(&up, Method::GET, "chunked").await;
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "abcdef");
        let big = get_path(&up, "big").await;
        assert!(big.len() == BIG && big.iter().all(|b| *b == b'x'));
        let resp = send(&up, Method::GET, "empty").await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(resp.body().is_end_stream());
        drop(resp);
        let resp = send(&up, Method::HEAD, "v1/me").await;
        assert_eq!(resp.headers()["content-length"], "2");
        assert!(
            resp.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .is_empty()
        );
        assert_eq!(get(&up).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (up, accepted) = upstream(false).await;
        for _ in 0..5 {
            assert_eq!(get(&up).await, "{}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_gives_its_connection_up() {
        let (up, accepted) = upstream(true).await;
        let resp = send(&up, Method::GET, "big").await;
        assert!(!resp.body().is_end_stream());
        drop(resp);
        assert_eq!(get(&up).await, "{}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_instead_of_hanging() {
        use tokio::io::AsyncWriteExt as _;
        let (listener, url) = bound("http").await;
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .expect("write");
            // Keeps the connection open and says nothing more.
            std::future::pending::<()>().await;
            drop(tcp);
        });
        let up = Upstream::new(&url)
            .expect("upstream")
            .stall_timeout(Duration::from_millis(100));
        let resp = send(&up, Method::GET, "v1/me").await;
        let outcome = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
            .await
            .expect("the body ends, one way or another");
        let Err(err) = outcome else {
            panic!("a stalled body is an error");
        };
        assert!(err.to_string().contains("nothing more"), "{err}");
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
}
