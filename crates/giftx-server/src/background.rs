//! Low-priority threads for bulk CPU work: generating the codes of
//! IssueCodes.
//!
//! A stream of codes read as fast as the client can is CPU-bound (an HMAC
//! per code and per login key). On Tokio's blocking pool that work runs at
//! the same priority as the runtime's workers and as a Redis on the same
//! machine, so a few issuance streams starve Exchange calls (measured: p99
//! from 50 ms to 1.6 s on 2 cores with four streams read). Here it runs on
//! a fixed set of threads (one per core) whose nice value is raised by
//! [`NICE`]: they take whatever CPU is idle, and give it up to RPCs and
//! Redis as soon as those want it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// How much lower than the rest of giftxd the bulk threads run (a Linux
/// nice increment: at 10 a thread weighs about a tenth of a normal one
/// when the CPU is contended, and runs at full speed when it is not).
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool's job queue; the threads start with the first job.
fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("giftx-bulk-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while taking a job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a bulk work thread failed");
            }
        }
        tx
    })
}

/// Runs `f` on a low-priority thread and returns its result.
///
/// # Errors
/// When no bulk thread could run it (none could be started, or `f`
/// panicked).
pub async fn run<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    queue()
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| "the bulk work threads have stopped".to_owned())?;
    rx.await
        .map_err(|_| "a bulk work job ended without a result".to_owned())
}

/// Raises this thread's nice value by [`NICE`] (Linux: the nice value is
/// per thread). Failing to is harmless: the work runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both calls take plain integers and change only this
        // thread's scheduling weight.
        let r = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
        };
        if r != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower a bulk work thread's priority"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_lower_priority_threads() {
        let (name, nice) = run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            // SAFETY: getpriority reads this thread's nice value.
            #[cfg(target_os = "linux")]
            let nice = unsafe {
                let tid = libc::syscall(libc::SYS_gettid);
                libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
            };
            #[cfg(not(target_os = "linux"))]
            let nice = NICE;
            (name, nice)
        })
        .await
        .unwrap();
        assert!(name.unwrap_or_default().starts_with("giftx-bulk-"));
        assert!(nice >= NICE, "nice {nice}");
        // Many jobs, all answered.
        let sums = futures::future::join_all((0..64u64).map(|i| run(move || i * 2))).await;
        let total: u64 = sums.into_iter().map(Result::unwrap).sum();
        assert_eq!(total, (0..64u64).map(|i| i * 2).sum::<u64>());
    }
}
