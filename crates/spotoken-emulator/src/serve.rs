//! The accept loop.
//!
//! `axum::serve` cannot close a connection without answering, and "the server
//! hung up" is one of the faults the emulator must inject. So each connection is
//! served by hyper directly, raced against a per-connection [`DropConnection`]
//! signal that a handler can fire: dropping the connection future closes the
//! socket with no response at all.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
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
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let ext = DropConnection(kill.clone());
            let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ext.clone());
                router.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            tokio::select! {
                _ = conn => {}
                () = kill.notified() => {}
            }
        });
    }
}
