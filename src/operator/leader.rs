//! Leader election: only the Lease holder runs the controller (and so writes); every replica
//! serves HTTP. On shutdown ([`Shutdown`]) the controller stops after in-flight reconciles,
//! releases the Lease, and the process ends.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::runtime::metrics::Metrics;
use crate::runtime::shutdown::Shutdown;

/// Name of the Lease the replicas compete for.
pub const LEASE_NAME: &str = "keyturn-leader";

/// Leader-election settings.
pub struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
    /// Lease duration in seconds: a dead holder is replaced within this time.
    pub duration_secs: u64,
}

/// Attempts to start leader election (1 s, 2 s, 4 s, 8 s apart) before the process gives up
/// and exits non-zero: a replica that can never lead must not look healthy.
pub const START_ATTEMPTS: u32 = 5;

/// How long in-flight reconciles may run after shutdown before the controller is dropped;
/// well within the Deployment's 30 s termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `fut` to completion, but at most [`SHUTDOWN_GRACE`] past a shutdown request.
async fn bounded(fut: impl Future<Output = ()>, shutdown: Shutdown) {
    tokio::select! {
        _ = fut => {}
        _ = async { shutdown.wait().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            warn!("in-flight work did not finish within the shutdown grace; stopping anyway");
        }
    }
}

/// Runs `controller` while this replica holds the Lease (or always, without an election),
/// until shutdown. `controller(stop)` must return when `stop` resolves.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    election: Option<Election>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    on_failure: impl Fn(String),
    controller: F,
) -> Result<(), LeaderError>
where
    F: Fn(std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(e) = election else {
        metrics.set_leader(true);
        bounded(controller(Box::pin(shutdown.clone().wait())), shutdown).await;
        return Ok(());
    };
    let grace = (e.duration_secs / 3).max(1);
    let mut attempt = 0;
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(&e.namespace)
            .with_identity(&e.identity)
            .with_duration(e.duration_secs)
            .with_grace(grace)
            .with_field_manager(format!("keyturn-lease-{}", e.identity))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(err) if attempt + 1 < START_ATTEMPTS && !shutdown.requested() => {
                attempt += 1;
                let why = format!(
                    "leader election cannot start (attempt {attempt} of {START_ATTEMPTS}): {err}"
                );
                warn!(lease = LEASE_NAME, namespace = %e.namespace, "{why}");
                on_failure(why);
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            Err(err) => return Err(LeaderError::Start(err)),
        }
    };
    let (mut leading, task) = manager.watch().await;
    info!(lease = LEASE_NAME, namespace = %e.namespace, identity = %e.identity, "waiting for leadership");
    loop {
        // Wait until this replica leads, or shutdown.
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = shutdown.clone().wait() => break,
        }
        if shutdown.requested() {
            break;
        }
        info!(identity = %e.identity, "acquired leadership; starting the controller");
        metrics.set_leader(true);
        let mut lost = leading.clone();
        let stop_shutdown = shutdown.clone();
        let stop = Box::pin(async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {},
                _ = stop_shutdown.wait() => {},
            }
        });
        bounded(controller(stop), shutdown.clone()).await;
        metrics.set_leader(false);
        // What this replica last saw of each set goes stale now that another reconciles it.
        metrics.forget_all_sets();
        if shutdown.requested() {
            break;
        }
        warn!(identity = %e.identity, "lost leadership; the controller stopped, waiting to lead again");
    }
    let unexpected = !shutdown.requested();
    // Dropping the receiver makes the manager release the Lease for the other replica.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!("Lease released"),
        Ok(Ok(Err(err))) => warn!(error = %err, "could not release the Lease"),
        Ok(Err(err)) => warn!(error = %err, "lease task failed"),
        Err(_) => warn!("Lease release timed out; the other replica takes over when it expires"),
    }
    if unexpected {
        return Err(LeaderError::Stopped);
    }
    Ok(())
}

/// Why this replica can no longer take part in leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created, [`START_ATTEMPTS`] times.
    #[error("leader election cannot start: {0}")]
    Start(#[source] kube_lease_manager::LeaseManagerError),
    /// The lease manager stopped without a shutdown request.
    #[error("leader election stopped unexpectedly")]
    Stopped,
}
