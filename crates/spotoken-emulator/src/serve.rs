//! The accept loop.
//!
//! `axum::serve` cannot close a connection without answering, and "the server
//! hung up" is one of the faults the emulator must inject. So each connection is
//! served by hyper directly, raced against a per-connection [`DropConnection`]
//! signal that a handler can fire: dropping the connection future closes the
//! socket with no response at all. The same loop serves the TLS port
//! (the `tls` module), HTTP/1.1 or HTTP/2 as the client's ALPN chose.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt as _;

/// Request extension: fire it to close the connection without a response.
#[derive(Clone)]
pub struct DropConnection(Arc<Notify>);

impl DropConnection {
    /// Closes the connection this request arrived on; the pending response is never sent.
    pub async fn fire(&self) -> ! {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, counting
/// connections in `shared`'s counters.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shared: crate::Shared,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, router, shared, None, shutdown).await;
}

/// As [`serve`], over TLS when `tls` is given: each connection's handshake
/// is counted (full or resumed), and one that chose `h2` by ALPN is served
/// as HTTP/2.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shared: crate::Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        shared.lock().counters.connections += 1;
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                connection(stream, false, router).await;
                return;
            };
            let stream = match tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    shared.lock().counters.tls_failed_handshakes += 1;
                    return;
                }
            };
            let (_, conn) = stream.get_ref();
            let h2 = conn.alpn_protocol() == Some(b"h2");
            {
                let c = &mut shared.lock().counters;
                match conn.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => c.tls_resumed_handshakes += 1,
                    _ => c.tls_full_handshakes += 1,
                }
                if h2 {
                    c.http2_connections += 1;
                }
            }
            connection(stream, h2, router).await;
        });
    }
}

/// Serves one connection until it ends or a handler drops it.
async fn connection<I>(io: I, h2: bool, router: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let ext = DropConnection(kill.clone());
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ext.clone());
        router.clone().oneshot(req)
    });
    let svc = TowerToHyperService::new(svc);
    let io = TokioIo::new(io);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        tokio::select! {
            _ = conn => {}
            () = kill.notified() => {}
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
        tokio::select! {
            _ = conn => {}
            () = kill.notified() => {}
        }
    }
}
