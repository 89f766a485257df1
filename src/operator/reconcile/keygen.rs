//! Key generation, shared fairly among tenants. Generating a key is CPU work on a blocking
//! thread (an RSA-4096 key takes up to seconds), and the threads are few: without a rule, a
//! namespace with many sets rotating often (a storm) would queue ahead of everyone else's keys,
//! revocations included. So:
//!
//! - each namespace generates one key at a time (its other sets wait in its own queue, not in
//!   everyone's): a storm in one namespace holds at most one thread;
//! - a revocation's replacement is urgent: it waits in a second queue of its namespace's (one
//!   urgent key at a time per namespace, so that a tenant revoking its own keys in a loop
//!   holds at most one more thread), and may take a thread kept for urgent keys, so that it
//!   never waits behind scheduled rotations anywhere.
//!
//! The permits travel with the blocking work: a reconcile dropped while its key is being
//! generated frees neither its thread nor its namespace's turn before the work is done.

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
    /// Each namespace's queues, by (namespace, urgent).
    namespaces: Mutex<HashMap<(String, bool), Arc<Semaphore>>>,
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
    /// thread is free; `urgent` work (a revocation's replacement) has a queue of its own in
    /// the namespace and may take the thread kept for it. `None` when the blocking task failed
    /// (panicked).
    pub async fn run<T: Send + 'static>(
        &self,
        namespace: &str,
        urgent: bool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let key = (namespace.to_string(), urgent);
        let queue = self.queue(&key);
        let turn = queue.clone().acquire_owned().await.ok()?;
        let thread = if urgent {
            tokio::select! {
                p = self.urgent.clone().acquire_owned() => p.ok()?,
                p = self.shared.clone().acquire_owned() => p.ok()?,
            }
        } else {
            self.shared.clone().acquire_owned().await.ok()?
        };
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop((thread, turn));
            out
        })
        .await
        .ok();
        self.release(&key, queue);
        out
    }

    /// The queue of `key` (one turn at a time).
    fn queue(&self, key: &(String, bool)) -> Arc<Semaphore> {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// Forgets a queue once no one holds or waits for it (one entry per namespace generating
    /// now, not per namespace ever seen). A run cancelled before this leaves its entry, which
    /// the next run in that namespace reuses and releases.
    fn release(&self, key: &(String, bool), queue: Arc<Semaphore>) {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's are the only handles left: nobody waits.
        if Arc::strong_count(&queue) == 2 && queue.available_permits() == 1 {
            m.remove(key);
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

    /// A tenant revoking its own keys in a loop holds one urgent turn at a time: another
    /// namespace's revocation, asked for after eight of them, is done before their third.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocations_in_one_namespace_take_one_urgent_turn_at_a_time() {
        let kg = Arc::new(KeyGen::new(2));
        let own: Vec<_> = (0..8)
            .map(|_| {
                let kg = kg.clone();
                tokio::spawn(async move { kg.run("hostile", true, busy(40)).await.unwrap() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let victim = kg.run("victim", true, busy(40)).await.unwrap();
        let mut done: Vec<Instant> = vec![];
        for s in own {
            done.push(s.await.unwrap());
        }
        done.sort();
        assert!(
            victim < done[2],
            "the victim's revocation waited for {} of the hostile tenant's",
            done.iter().filter(|d| **d < victim).count()
        );
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
