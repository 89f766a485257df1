//! The server: limits on connections, header time, request time, concurrency and body size,
//! and the readiness both ports report.

use super::*;

/// Bounds on what one client, or all of them together, can hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send a request's headers within this time (also the idle keep-alive
    /// time): a slow or silent client is disconnected.
    pub header_timeout: Duration,
    /// A request must be answered within this time, or it gets `408`.
    pub request_timeout: Duration,
    /// Open connections per port; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Requests handled at once per port; more wait for a slot.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_concurrent_requests: 64,
        }
    }
}

/// Largest request header block accepted (then `431`).
pub(super) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted (every route is a GET; then `413`).
pub(super) const MAX_BODY_BYTES: usize = 1024;

/// Readiness of the process, shared by both ports: the watch caches have synced, and
/// nothing fatal (a leader election that cannot start) has happened.
#[derive(Default)]
pub struct Health {
    pub(super) synced: AtomicBool,
    pub(super) failure: Mutex<Option<String>>,
}

impl Health {
    /// Marks the process unready for good, with the reason `/readyz` shows.
    pub fn fail(&self, why: String) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// True once the caches have synced.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    pub(super) fn unready(&self) -> Option<String> {
        if let Some(f) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(f);
        }
        (!self.synced()).then(|| "watch caches not synced".to_string())
    }
}

/// Serves `router` on `listener` within `limits` until `stop` resolves, then lets open
/// requests finish (at most 10 s).
pub(super) async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let router = router
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within 10 s");
    }
    Ok(())
}
