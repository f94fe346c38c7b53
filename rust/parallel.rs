//! The thread pool every parallel stage runs on.
//!
//! Sized by `GRISTMILL_NUM_THREADS` (default: all cores). After `fork()` a rayon pool
//! inherited from the parent has no threads behind it, so a forked child (a DataLoader worker,
//! a multiprocessing pool) is marked and runs batch work on its calling thread instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static FORKED: AtomicBool = AtomicBool::new(false);

/// Called in a forked child: from now on batch work runs sequentially.
pub fn mark_forked() {
    FORKED.store(true, Ordering::SeqCst);
}

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("GRISTMILL_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(0); // 0: rayon picks the number of cores
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gristmill-{i}"))
            .build()
            .expect("thread pool starts")
    })
}

/// The number of threads batch work uses (1 in a forked child).
pub fn num_threads() -> usize {
    if FORKED.load(Ordering::SeqCst) {
        1
    } else {
        pool().current_num_threads()
    }
}

/// Runs `f` inside the pool, or directly where the pool cannot be used. Rayon iterators
/// called from `f` then use the pool's threads.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if FORKED.load(Ordering::SeqCst) {
        // A one-thread pool built on the spot keeps rayon calls inside `f` working.
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        match single {
            Ok(p) => p.install(f),
            Err(_) => f(),
        }
    } else {
        pool().install(f)
    }
}

/// Wakes an idle thread of the pool ahead of work about to be handed to it, so that the
/// wake overlaps the caller's own preparation: an idle core of a virtual machine can take
/// milliseconds to wake (batches of o200k measured 2-4% faster).
pub fn wake() {
    if num_threads() > 1 {
        pool().spawn(|| {});
    }
}
