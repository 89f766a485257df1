//! Test-only fault injection: with `KEYTURN_TEST_ABORT_AFTER_WRITES=N` in the environment the
//! process aborts (like `kill -9`: no cleanup, no Lease release) right after its N-th
//! successful API write, so crash tests can stop it in every gap between two writes of one
//! reconcile. Unset (always, in production), this is one relaxed atomic add per write.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms the hook.
pub const ENV: &str = "KEYTURN_TEST_ABORT_AFTER_WRITES";

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Counts one successful API write; aborts the process at the armed count.
pub fn wrote() {
    let limit = *LIMIT.get_or_init(|| std::env::var(ENV).ok().and_then(|v| v.parse().ok()));
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    if limit == Some(n) {
        eprintln!("keyturn: {ENV}={n} reached; aborting (fault injection)");
        std::process::abort();
    }
}
