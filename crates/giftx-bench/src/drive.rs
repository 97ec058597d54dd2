//! The two ways of applying load: closed loop (fixed concurrency) and open
//! loop (fixed rate, latency from the scheduled send time, so a slow server
//! cannot hide its queueing by slowing the sender: no coordinated omission).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::stats::{Mode, RunStats, Samples, round3};

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
            let mut s = Samples::with_capacity(4096);
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
///
/// One task sends and collects: the calls in flight are polled from a
/// `FuturesUnordered` (no task, semaphore or lock per call), and each
/// call's latency is taken the moment its reply is polled, from its
/// scheduled send time.
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
    let max_in_flight = max_in_flight.max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut samples = Samples::with_capacity(usize::try_from(total).unwrap_or(0));
    // How late each call was sent behind its scheduled time (µs).
    let mut lags: Vec<u32> = Vec::with_capacity(samples.latencies_us.capacity());
    let mut in_flight = FuturesUnordered::new();
    let sleep = tokio::time::sleep_until(start.into());
    tokio::pin!(sleep);
    let mut armed = start;
    let mut i = 0u64;
    while i < total || !in_flight.is_empty() {
        // Send every call that is due (and fits under the cap).
        let now = Instant::now();
        while i < total && in_flight.len() < max_in_flight && at(i) <= now {
            let due = at(i);
            lags.push(u32::try_from(now.duration_since(due).as_micros()).unwrap_or(u32::MAX));
            let call = op(i);
            in_flight.push(async move {
                let r = call.await;
                (due.elapsed(), r)
            });
            i += 1;
        }
        // Sleep until the next send, unless the cap holds it back (then
        // only a reply can let it go).
        let wait_for_send = i < total && in_flight.len() < max_in_flight;
        if wait_for_send && at(i) != armed {
            armed = at(i);
            sleep.as_mut().reset(armed.into());
        }
        tokio::select! {
            biased;
            Some((latency, r)) = in_flight.next(), if !in_flight.is_empty() => {
                samples.record(latency, r);
            }
            () = &mut sleep, if wait_for_send => {}
        }
    }
    let elapsed = start.elapsed();
    let mut r = samples.summarise(name, Mode::Open { rate_per_s: rate }, elapsed);
    lags.sort_unstable();
    if let Some(&max) = lags.last() {
        let p99 = lags[((lags.len() as f64 * 0.99).ceil() as usize).clamp(1, lags.len()) - 1];
        r.send_lag_p99_ms = Some(round3(f64::from(p99) / 1000.0));
        r.send_lag_max_ms = Some(round3(f64::from(max) / 1000.0));
    }
    (r, total)
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
        assert_eq!(r.requests, 50);
        // The cap held the sends back: the lag shows it.
        assert!(r.send_lag_max_ms.unwrap_or(0.0) > 100.0, "{r:?}");
    }

    #[tokio::test]
    async fn open_loop_keeps_every_call_and_counts_errors_by_label() {
        let op: Op = Arc::new(|i| {
            Box::pin(async move {
                if i % 2 == 0 {
                    Ok(())
                } else {
                    Err("Unavailable".to_owned())
                }
            })
        });
        let (r, used) = open_loop("t", op, 1000.0, Duration::from_millis(100), 1000, 8).await;
        assert_eq!(used, 100);
        assert_eq!(r.requests, 100);
        assert_eq!(r.ok, 50);
        assert_eq!(r.errors.get("Unavailable"), Some(&50));
        // 100 calls at 1,000/s take about 0.1 s: the schedule was kept.
        assert!(r.seconds < 0.5, "{r:?}");
    }
}
