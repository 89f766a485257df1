//! The process's shutdown signal, shared by the operator, the endpoint and the signer.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

/// A shutdown signal every part of the process can wait on: SIGTERM, SIGINT, or a part
/// that failed and asks the rest to stop ([`Shutdown::request`]).
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>, Arc<watch::Sender<bool>>);

impl Shutdown {
    /// Listens for SIGTERM and SIGINT.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let shutdown = Shutdown(rx, tx.clone());
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
            }
            let _ = tx.send(true);
        });
        shutdown
    }

    /// Asks every part of the process to stop.
    pub fn request(&self) {
        let _ = self.1.send(true);
    }

    /// Resolves once shutdown was requested.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// True once shutdown was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// A signal for tests and embedders: stops when `request` is called.
    pub fn manual() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown(rx, Arc::new(tx))
    }
}
