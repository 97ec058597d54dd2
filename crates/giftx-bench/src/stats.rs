//! Latency samples and their summary.
//!
//! Every latency is kept (microseconds, `u32`): a run records at most a few
//! hundred thousand calls, so exact percentiles cost a few megabytes and no
//! histogram library.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::cpu::CpuSplit;

/// Raw results of one run (or one worker of it).
#[derive(Debug, Default)]
pub struct Samples {
    /// Latency of every call, successful or not, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls by gRPC status code name (or another label).
    pub errors: BTreeMap<String, u64>,
}

impl Samples {
    /// Room for `n` calls up front.
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            latencies_us: Vec::with_capacity(n),
            ..Samples::default()
        }
    }

    /// Records one call.
    pub fn record(&mut self, latency: Duration, outcome: Result<(), String>) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(us);
        match outcome {
            Ok(()) => self.ok += 1,
            Err(label) => *self.errors.entry(label).or_default() += 1,
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Summarises the run; `elapsed` is wall time from the first send to
    /// the last completion.
    pub fn summarise(mut self, name: &str, mode: Mode, elapsed: Duration) -> RunStats {
        self.latencies_us.sort_unstable();
        let l = &self.latencies_us;
        let pct = |q: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let idx = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
            f64::from(l[idx]) / 1000.0
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mean = if l.is_empty() {
            0.0
        } else {
            l.iter().map(|&x| f64::from(x)).sum::<f64>() / l.len() as f64 / 1000.0
        };
        RunStats {
            name: name.to_owned(),
            mode,
            seconds: round3(secs),
            requests: l.len() as u64,
            ok: self.ok,
            errors: self.errors,
            throughput_per_s: round1(self.ok as f64 / secs),
            p50_ms: round3(pct(0.50)),
            p90_ms: round3(pct(0.90)),
            p99_ms: round3(pct(0.99)),
            p999_ms: round3(pct(0.999)),
            max_ms: round3(pct(1.0)),
            mean_ms: round3(mean),
            send_lag_p99_ms: None,
            send_lag_max_ms: None,
            cpu: None,
        }
    }
}

/// How the load was applied.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// A fixed number of requests in flight, each sent when one completes.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
    /// Requests sent on a fixed schedule whatever the replies; latency is
    /// measured from each request's scheduled send time.
    Open {
        /// Offered requests per second.
        rate_per_s: f64,
    },
}

/// The summary of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunStats {
    /// What was called.
    pub name: String,
    /// Closed or open loop.
    pub mode: Mode,
    /// Wall time from the first send to the last completion.
    pub seconds: f64,
    /// Calls made.
    pub requests: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by gRPC status code.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub throughput_per_s: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest call.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Open loop: how late the load generator sent the calls behind their
    /// scheduled times, 99th percentile (the timer's 1 ms tick, a busy load
    /// generator, or the in-flight cap; the latency counts it either way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_p99_ms: Option<f64>,
    /// … and the latest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_max_ms: Option<f64>,
    /// CPU per call of each process taking part (server, redis-server,
    /// load generator), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSplit>,
}

impl RunStats {
    /// One line for the console.
    pub fn line(&self) -> String {
        let mode = match &self.mode {
            Mode::Closed { concurrency } => format!("closed c={concurrency}"),
            Mode::Open { rate_per_s } => format!("open {rate_per_s:.0}/s"),
        };
        let errors = if self.errors.is_empty() {
            "no errors".to_owned()
        } else {
            format!("errors {:?}", self.errors)
        };
        let lag = match (self.send_lag_p99_ms, self.send_lag_max_ms) {
            (Some(p), Some(m)) => format!("; sent late p99 {p:.2} max {m:.2} ms"),
            _ => String::new(),
        };
        format!(
            "{:<28} {:<16} {:>9.0}/s  p50 {:>7.2} p90 {:>7.2} p99 {:>7.2} p99.9 {:>7.2} ms  ({} calls, {errors}{lag})",
            self.name,
            mode,
            self.throughput_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.requests
        )
    }
}

/// Rounds to 3 decimals (JSON readability).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rounds to 1 decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The mean of several runs of the same call: rates, percentiles and
/// means averaged; calls, errors and time summed; the CPU split of the
/// first run. `runs` must not be empty.
pub fn mean_of(runs: &[RunStats]) -> RunStats {
    let n = runs.len().max(1) as f64;
    let avg = |f: fn(&RunStats) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let mut out = runs[0].clone();
    out.name = format!("{} (mean of {} runs)", runs[0].name, runs.len());
    out.seconds = runs.iter().map(|r| r.seconds).sum();
    out.requests = runs.iter().map(|r| r.requests).sum();
    out.ok = runs.iter().map(|r| r.ok).sum();
    out.errors = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.errors {
            *out.errors.entry(k.clone()).or_default() += v;
        }
    }
    out.throughput_per_s = avg(|r| r.throughput_per_s);
    out.p50_ms = avg(|r| r.p50_ms);
    out.p90_ms = avg(|r| r.p90_ms);
    out.p99_ms = avg(|r| r.p99_ms);
    out.p999_ms = avg(|r| r.p999_ms);
    out.mean_ms = avg(|r| r.mean_ms);
    out.max_ms = runs.iter().map(|r| r.max_ms).fold(0.0, f64::max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_runs_averages_rates_and_percentiles_and_sums_calls() {
        let run = |ms: u64, err: bool| {
            let mut s = Samples::default();
            for _ in 0..100 {
                s.record(Duration::from_millis(ms), Ok(()));
            }
            if err {
                s.record(Duration::from_millis(ms), Err("Unavailable".to_owned()));
            }
            s.summarise("x", Mode::Closed { concurrency: 1 }, Duration::from_secs(1))
        };
        let (a, b) = (run(2, true), run(4, false));
        let m = mean_of(&[a.clone(), b.clone()]);
        assert_eq!(m.requests, 201);
        assert_eq!(m.ok, 200);
        assert_eq!(m.errors.get("Unavailable"), Some(&1));
        assert!(
            (m.throughput_per_s - (a.throughput_per_s + b.throughput_per_s) / 2.0).abs() < 1e-9
        );
        assert!((m.p99_ms - 3.0).abs() < 0.01, "{}", m.p99_ms);
        assert!((m.max_ms - 4.0).abs() < 0.01);
    }

    #[test]
    fn percentiles_are_exact_order_statistics() {
        let mut s = Samples::default();
        for i in 1..=1000u64 {
            s.record(Duration::from_micros(i * 1000), Ok(()));
        }
        s.record(Duration::from_millis(5), Err("Unavailable".to_owned()));
        let r = s.summarise("t", Mode::Closed { concurrency: 1 }, Duration::from_secs(1));
        assert_eq!(r.requests, 1001);
        assert_eq!(r.ok, 1000);
        assert_eq!(r.errors.get("Unavailable"), Some(&1));
        assert_eq!(r.max_ms, 1000.0);
        assert!((r.p50_ms - 500.0).abs() <= 1.0);
        assert!((r.p99_ms - 990.0).abs() <= 1.0);
    }
}
