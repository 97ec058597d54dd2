//! The two ways of applying load: closed loop (fixed concurrency) and open
//! loop (fixed rate, latency from the scheduled send time, so a slow server
//! cannot hide its queueing by slowing the sender: no coordinated omission).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::stats::{Mode, RunStats, Samples};

/// One call's future: `Err(label)` for a failure (the gRPC status code's
/// name, or what was wrong with an OK reply).
pub type OpFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The operation under test; its argument is the call's index (0, 1, …),
/// which the operation maps to its input (a code, a request id).
pub type Op = Arc<dyn Fn(u64) -> OpFuture + Send + Sync>;

/// Runs `concurrency` workers, each calling `op` back to back, until
/// `duration` has passed or `limit` calls were started. Returns the summary
/// and the number of indices used.
pub async fn closed_loop(
    name: &str,
    op: Op,
    concurrency: usize,
    duration: Duration,
    limit: u64,
) -> (RunStats, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let t0 = Instant::now();
                let r = op(i).await;
                s.record(t0.elapsed(), r);
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    let elapsed = start.elapsed();
    let used = next.load(Ordering::Relaxed).min(limit);
    (
        all.summarise(name, Mode::Closed { concurrency }, elapsed),
        used,
    )
}

/// Sends `rate` calls per second for `duration` (at most `limit` calls),
/// each at its scheduled time, with at most `max_in_flight` outstanding
/// (past that the sender waits, and the wait counts in the latency, which
/// is measured from the scheduled time). Returns the summary and the number
/// of indices used.
pub async fn open_loop(
    name: &str,
    op: Op,
    rate: f64,
    duration: Duration,
    limit: u64,
    max_in_flight: usize,
) -> (RunStats, u64) {
    let rate = rate.max(1.0);
    let total = ((rate * duration.as_secs_f64()) as u64).min(limit);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sem = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let (op, samples) = (op.clone(), samples.clone());
        tasks.spawn(async move {
            let r = op(i).await;
            let latency = at.elapsed();
            drop(permit);
            if let Ok(mut s) = samples.lock() {
                s.record(latency, r);
            }
        });
        // Reap finished tasks now and then so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let s = match Arc::try_unwrap(samples) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(arc) => arc
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default(),
    };
    (
        s.summarise(name, Mode::Open { rate_per_s: rate }, elapsed),
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(ms: u64) -> Op {
        Arc::new(move |_i| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
        })
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_limit() {
        let (r, used) = closed_loop("t", sleeper(1), 4, Duration::from_secs(5), 40).await;
        assert_eq!(used, 40);
        assert_eq!(r.ok, 40);
    }

    #[tokio::test]
    async fn open_loop_counts_queueing_from_the_schedule() {
        // 200/s offered to a server that takes 20 ms with 1 in flight: it can
        // do 50/s, so latency grows well past the service time.
        let (r, used) =
            open_loop("t", sleeper(20), 200.0, Duration::from_millis(250), 1000, 1).await;
        assert_eq!(used, 50);
        assert!(r.max_ms > 200.0, "{r:?}");
    }
}
