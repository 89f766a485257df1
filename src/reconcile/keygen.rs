//! Key generation, shared fairly among tenants. Generating a key is CPU work on a blocking
//! thread (an RSA-4096 key takes up to seconds), and the threads are few: without a rule, a
//! namespace with many sets rotating often (a storm) would queue ahead of everyone else's keys,
//! revocations included. So:
//!
//! - each namespace generates one key at a time (its other sets wait in its own queue, not in
//!   everyone's): a storm in one namespace holds at most one thread;
//! - a set's first key and a revocation's replacement are urgent: they skip their namespace's
//!   queue and may also take a thread kept for them alone, so that neither waits behind
//!   scheduled rotations anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// Threads that generate keys at once: [`SHARED_THREADS`] for everyone and one kept for urgent
/// keys (the runtime has 8 blocking threads; one stays free for other blocking work).
pub const SHARED_THREADS: usize = 6;

/// The fair queue in front of the blocking threads that generate keys.
pub struct KeyGen {
    shared: Arc<Semaphore>,
    urgent: Arc<Semaphore>,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for KeyGen {
    fn default() -> Self {
        KeyGen::new(SHARED_THREADS)
    }
}

impl KeyGen {
    /// A queue over `shared` threads plus one kept for urgent keys.
    pub fn new(shared: usize) -> Self {
        KeyGen {
            shared: Arc::new(Semaphore::new(shared.max(1))),
            urgent: Arc::new(Semaphore::new(1)),
            namespaces: Mutex::default(),
        }
    }

    /// Runs `work` (a key generation) on a blocking thread once it is `namespace`'s turn and a
    /// thread is free; `urgent` work (a first key, a revocation's replacement) does not wait
    /// for its namespace's turn and may take the thread kept for it. `None` when the blocking
    /// task failed (panicked or was cancelled).
    pub async fn run<T: Send + 'static>(
        &self,
        namespace: &str,
        urgent: bool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let queue = (!urgent).then(|| self.queue(namespace));
        let _turn = match &queue {
            Some(q) => Some(q.clone().acquire_owned().await.ok()?),
            None => None,
        };
        let _thread = if urgent {
            tokio::select! {
                p = self.urgent.clone().acquire_owned() => p.ok()?,
                p = self.shared.clone().acquire_owned() => p.ok()?,
            }
        } else {
            self.shared.clone().acquire_owned().await.ok()?
        };
        let out = tokio::task::spawn_blocking(work).await.ok();
        drop(_turn);
        if let Some(q) = queue {
            self.release(namespace, q);
        }
        out
    }

    /// `namespace`'s queue (one turn at a time).
    fn queue(&self, namespace: &str) -> Arc<Semaphore> {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(namespace.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// Forgets `namespace`'s queue once no one holds or waits for it (one entry per
    /// namespace generating now, not per namespace ever seen).
    fn release(&self, namespace: &str, queue: Arc<Semaphore>) {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's are the only handles left: nobody waits.
        if Arc::strong_count(&queue) == 2 && queue.available_permits() == 1 {
            m.remove(namespace);
        }
    }

    /// Namespaces with a queue now (for tests).
    #[cfg(test)]
    fn queues(&self) -> usize {
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::KeyGen;

    fn busy(ms: u64) -> impl FnOnce() -> Instant + Send + 'static {
        move || {
            std::thread::sleep(Duration::from_millis(ms));
            Instant::now()
        }
    }

    /// A storm of 12 generations in one namespace, on two shared threads: another namespace's
    /// one generation, asked for after the storm, is done before the storm's third, because
    /// the storm holds one thread at a time. Without the per-namespace turn it would wait
    /// behind all twelve (FIFO).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storm_in_one_namespace_holds_one_thread_at_a_time() {
        let kg = Arc::new(KeyGen::new(2));
        let storm: Vec<_> = (0..12)
            .map(|_| {
                let kg = kg.clone();
                tokio::spawn(async move { kg.run("hostile", false, busy(40)).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let victim = kg.run("victim", false, busy(40)).await.unwrap();
        let mut done: Vec<Instant> = vec![];
        for s in storm {
            done.push(s.await.unwrap());
        }
        done.sort();
        assert!(
            victim < done[2],
            "the victim's key waited for {} of the storm's keys",
            done.iter().filter(|d| **d < victim).count()
        );
        assert_eq!(kg.queues(), 0, "queues are dropped once idle");
    }

    /// Urgent work (a revocation's replacement) neither waits for its own namespace's storm
    /// nor for the shared threads: it takes the thread kept for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_waits_for_no_storm() {
        let kg = Arc::new(KeyGen::new(1));
        let storm: Vec<_> = (0..6)
            .map(|_| {
                let kg = kg.clone();
                tokio::spawn(async move { kg.run("tenant", false, busy(60)).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let revoked = kg.run("tenant", true, busy(1)).await.unwrap();
        let mut done: Vec<Instant> = vec![];
        for s in storm {
            done.push(s.await.unwrap());
        }
        done.sort();
        assert!(
            revoked < done[0],
            "the revocation's key waited for {} of the storm's keys",
            done.iter().filter(|d| **d < revoked).count()
        );
    }
}
