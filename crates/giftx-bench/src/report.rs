//! Results: the JSON document, the markdown summary, the latency SVG, and
//! issue 8's targets judged against the figures.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ceilings::RedisBench;
use crate::cpu::CpuSplit;
use crate::giftx::{Cost, Issuance, Sweep};
use crate::procs::Machine;
use crate::stats::{RunStats, round3};

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Option<Machine>,
    /// Wall time of the whole invocation.
    pub total_seconds: f64,
    /// Load settings.
    pub concurrency: usize,
    /// Client connections (HTTP/2) to each server.
    pub connections: usize,
    /// Redis `appendfsync` for the main figures.
    pub appendfsync: String,
    /// Redis `auto-aof-rewrite-min-size` (MiB).
    pub aof_rewrite_min_size_mb: u64,
    /// `redis-benchmark` EVALSHA of the claim-sized script.
    pub ceiling_evalsha_claim: Option<RedisBench>,
    /// `redis-benchmark` EVALSHA of `return 1`.
    pub ceiling_evalsha_trivial: Option<RedisBench>,
    /// tonic echo (health Check) closed loop.
    pub ceiling_tonic_echo: Option<RunStats>,
    /// The echo server's CPU per call (µs).
    pub echo_server_cpu_us_per_call: Option<f64>,
    /// Codes in the exchange campaign during the main runs.
    pub campaign_codes: Option<u64>,
    /// Exchange, closed loop.
    pub exchange: Option<RunStats>,
    /// VerifyCode, closed loop.
    pub verify: Option<RunStats>,
    /// What an Exchange costs giftxd and Redis.
    pub exchange_cost: Option<Cost>,
    /// What a VerifyCode costs.
    pub verify_cost: Option<Cost>,
    /// Exchange, open loop at fractions of the closed-loop maximum.
    pub exchange_open_loop: Vec<RunStats>,
    /// VerifyCode, open loop.
    pub verify_open_loop: Vec<RunStats>,
    /// Issuance.
    pub issuance: Option<Issuance>,
    /// Sweep.
    pub sweep: Option<Sweep>,
    /// Same figures as the campaign grows.
    pub growth: Option<Growth>,
    /// One Exchange run and the claim ceiling with `appendfsync everysec`.
    pub everysec: Option<Everysec>,
    /// Issue 8's targets.
    pub targets: Vec<Target>,
}

/// Exchange and VerifyCode at two campaign sizes.
#[derive(Clone, Debug, Serialize)]
pub struct Growth {
    /// Codes in the campaign, small.
    pub small_codes: u64,
    /// Codes in the campaign, large.
    pub large_codes: u64,
    /// Bulk-store rate of the top-up (codes/s, ledger direct).
    pub preload_codes_per_s: f64,
    /// Seconds waited after the top-up for Redis's AOF rewrite to finish.
    pub aof_rewrite_wait_seconds: f64,
    /// Rounds: each figure is the mean of this many runs, taken in turns
    /// with the other size (a small campaign beside the grown one).
    pub rounds: u32,
    /// Exchange at the small size.
    pub exchange_small: RunStats,
    /// Exchange at the large size.
    pub exchange_large: RunStats,
    /// VerifyCode at the small size.
    pub verify_small: RunStats,
    /// VerifyCode at the large size.
    pub verify_large: RunStats,
}

/// The `appendfsync everysec` variant.
#[derive(Clone, Debug, Serialize)]
pub struct Everysec {
    /// Exchange closed loop.
    pub exchange: RunStats,
    /// The claim-sized EVALSHA ceiling.
    pub ceiling_evalsha_claim: RedisBench,
}

/// One target of issue 8.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What.
    pub name: String,
    /// The bar.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met?
    pub met: bool,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { round3(a / b) } else { 0.0 }
}

impl Results {
    /// Judges issue 8's targets against what was measured.
    pub fn judge(&mut self) {
        let mut t = Vec::new();
        let mut add = |name: &str, target: String, measured: String, met: bool| {
            t.push(Target {
                name: name.to_owned(),
                target,
                measured,
                met,
            });
        };
        if let (Some(x), Some(c)) = (&self.exchange, &self.ceiling_evalsha_claim) {
            let r = ratio(x.throughput_per_s, c.rps);
            add(
                "Exchange throughput",
                "≥ 0.40 × EVALSHA claim-sized ceiling".into(),
                format!("{:.0}/s vs {:.0}/s = {r:.2}×", x.throughput_per_s, c.rps),
                r >= 0.40,
            );
        }
        if let Some(x) = &self.exchange {
            add(
                "Exchange p99 at 64 in flight",
                "≤ 10 ms".into(),
                format!("{:.2} ms", x.p99_ms),
                x.p99_ms <= 10.0,
            );
        }
        if let (Some(v), Some(e)) = (&self.verify, &self.ceiling_tonic_echo) {
            let r = ratio(v.throughput_per_s, e.throughput_per_s);
            add(
                "VerifyCode throughput",
                "≥ 0.60 × tonic echo ceiling".into(),
                format!(
                    "{:.0}/s vs {:.0}/s = {r:.2}×",
                    v.throughput_per_s, e.throughput_per_s
                ),
                r >= 0.60,
            );
        }
        if let Some(v) = &self.verify {
            add(
                "VerifyCode p99 at 64 in flight",
                "≤ 5 ms".into(),
                format!("{:.2} ms", v.p99_ms),
                v.p99_ms <= 5.0,
            );
        }
        if let Some(i) = &self.issuance {
            add(
                "Issuance into Redis",
                "≥ 300,000 codes/s".into(),
                format!("{:.0} codes/s ({} codes)", i.codes_per_s, i.codes),
                i.codes_per_s >= 300_000.0,
            );
            add(
                "Redis memory per code",
                "≤ 120 B at 1,000,000 codes".into(),
                format!("{:.1} B ({} codes)", i.redis_bytes_per_code, i.codes),
                i.redis_bytes_per_code <= 120.0,
            );
        }
        if let Some(g) = &self.growth {
            let checks = [
                ("Exchange", &g.exchange_small, &g.exchange_large),
                ("VerifyCode", &g.verify_small, &g.verify_large),
            ];
            for (what, s, l) in checks {
                let r = ratio(l.throughput_per_s, s.throughput_per_s);
                let p = ratio(l.p99_ms, s.p99_ms);
                add(
                    &format!("{what} as the campaign grows"),
                    format!(
                        "no worse by more than 10% (throughput ≥ 0.90×, p99 ≤ 1.10×) at {} vs {} codes",
                        g.large_codes, g.small_codes
                    ),
                    format!(
                        "throughput {:.0} → {:.0}/s ({r:.2}×), p99 {:.2} → {:.2} ms ({p:.2}×)",
                        s.throughput_per_s, l.throughput_per_s, s.p99_ms, l.p99_ms
                    ),
                    r >= 0.90 && p <= 1.10,
                );
            }
        }
        self.targets = t;
    }

    /// The markdown summary.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# giftx-bench results\n");
        let _ = writeln!(m, "`{}` — {:.0} s\n", self.command, self.total_seconds);
        if let Some(x) = &self.machine {
            let _ = writeln!(
                m,
                "Machine: {} CPUs ({}), {} GiB, {}, {}; commit {}; load average {} at start, {} at end.\n",
                x.cpus,
                x.cpu_model,
                x.memory_gib,
                x.redis_version,
                x.kernel,
                x.git_commit,
                x.loadavg_start,
                x.loadavg_end
            );
        }
        let _ = writeln!(
            m,
            "Load: {} in flight over {} HTTP/2 connections; Redis AOF appendfsync {}, \
             auto-aof-rewrite-min-size {} MiB; provider: simulated, zero latency, `state = \
             \"memory\"` (what it issued is kept in giftxd, not in giftx's Redis); giftxd, \
             Redis and the load generator share the machine.\n",
            self.concurrency, self.connections, self.appendfsync, self.aof_rewrite_min_size_mb
        );
        let _ = writeln!(m, "## giftx next to its ceilings\n");
        let _ = writeln!(
            m,
            "| figure | giftx | p50 / p99 / p99.9 ms | ceiling | ceiling p50 / p99 ms | ratio |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        if let Some(x) = &self.exchange {
            let (c, cp, r) = match &self.ceiling_evalsha_claim {
                Some(c) => (
                    format!("{:.0}/s EVALSHA claim-sized", c.rps),
                    format!("{:.2} / {:.2}", c.p50_ms, c.p99_ms),
                    format!("{:.2}", ratio(x.throughput_per_s, c.rps)),
                ),
                None => ("—".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                m,
                "| Exchange (closed loop) | {:.0}/s | {:.2} / {:.2} / {:.2} | {c} | {cp} | {r} |",
                x.throughput_per_s, x.p50_ms, x.p99_ms, x.p999_ms
            );
        }
        if let Some(v) = &self.verify {
            let (c, cp, r) = match &self.ceiling_tonic_echo {
                Some(e) => (
                    format!("{:.0}/s tonic echo", e.throughput_per_s),
                    format!("{:.2} / {:.2}", e.p50_ms, e.p99_ms),
                    format!("{:.2}", ratio(v.throughput_per_s, e.throughput_per_s)),
                ),
                None => ("—".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                m,
                "| VerifyCode (closed loop) | {:.0}/s | {:.2} / {:.2} / {:.2} | {c} | {cp} | {r} |",
                v.throughput_per_s, v.p50_ms, v.p99_ms, v.p999_ms
            );
        }
        if let Some(t) = &self.ceiling_evalsha_trivial {
            let _ = writeln!(
                m,
                "| (reference) EVALSHA `return 1` | | | {:.0}/s | {:.2} / {:.2} | |",
                t.rps, t.p50_ms, t.p99_ms
            );
        }
        let _ = writeln!(m);
        if let Some(n) = self.campaign_codes {
            let _ = writeln!(m, "Exchange campaign size during these runs: {n} codes.\n");
        }
        for (what, c) in [
            ("Exchange", &self.exchange_cost),
            ("VerifyCode", &self.verify_cost),
        ] {
            if let Some(c) = c {
                let _ = writeln!(
                    m,
                    "{what} cost: giftxd CPU {:.0} µs per call; {:.2} Redis round trips per call \
                     ({:?}; EVALSHA {:.2}) over {} monitored calls.\n",
                    c.giftxd_cpu_us_per_call,
                    c.redis_round_trips_per_call,
                    c.commands_per_call,
                    c.evalsha_per_call,
                    c.calls
                );
            }
        }
        if let Some(e) = self.echo_server_cpu_us_per_call {
            let _ = writeln!(m, "tonic echo server CPU: {e:.0} µs per call.\n");
        }
        self.cpu_table(&mut m);
        if let Some(i) = &self.issuance {
            let _ = writeln!(
                m,
                "Issuance: {} codes via IssueCodes in {:.2} s = **{:.0} codes/s**; Redis {:.1} B/code; \
                 giftxd peak RSS {:.1} MB (VmHWM {:.1} MB), {:.2} µs CPU/code.\n",
                i.codes,
                i.seconds,
                i.codes_per_s,
                i.redis_bytes_per_code,
                i.giftxd_peak_rss_mb,
                i.giftxd_vm_hwm_mb,
                i.giftxd_cpu_us_per_code
            );
        }
        if let Some(s) = &self.sweep {
            let _ = writeln!(
                m,
                "Sweep: {} codes past their deadline, SweepExpired {:.2} s (= **{:.2} s per million**), \
                 expired {} ({} buckets); giftxd RSS {:.1} MB before, peak {:.1} MB during.\n",
                s.codes,
                s.seconds,
                s.seconds_per_million,
                s.expired_count,
                s.buckets_swept,
                s.giftxd_rss_before_mb,
                s.giftxd_peak_rss_during_mb
            );
        }
        if let Some(g) = &self.growth {
            let _ = writeln!(m, "## As the campaign grows\n");
            let _ = writeln!(
                m,
                "A campaign of the small size beside the grown one, in the same Redis, \
                 measured in turns with it: each figure is the mean of {} closed-loop runs.\n",
                g.rounds
            );
            let _ = writeln!(
                m,
                "| call | {} codes | {} codes | ratio |",
                g.small_codes, g.large_codes
            );
            let _ = writeln!(m, "|---|---|---|---|");
            for (what, s, l) in [
                ("Exchange", &g.exchange_small, &g.exchange_large),
                ("VerifyCode", &g.verify_small, &g.verify_large),
            ] {
                let _ = writeln!(
                    m,
                    "| {what} | {:.0}/s, p99 {:.2} ms | {:.0}/s, p99 {:.2} ms | {:.2} |",
                    s.throughput_per_s,
                    s.p99_ms,
                    l.throughput_per_s,
                    l.p99_ms,
                    ratio(l.throughput_per_s, s.throughput_per_s)
                );
            }
            let _ = writeln!(m);
        }
        for (what, runs) in [
            ("Exchange", &self.exchange_open_loop),
            ("VerifyCode", &self.verify_open_loop),
        ] {
            if runs.is_empty() {
                continue;
            }
            let _ = writeln!(
                m,
                "## {what}, open loop (latency from the scheduled send time)\n"
            );
            let _ = writeln!(
                m,
                "\"sent late\": how far behind its scheduled time the load generator sent a call \
                 (the timer ticks every 1 ms; more means a busy load generator or the in-flight \
                 cap); latency is counted from the scheduled time either way.\n"
            );
            let _ = writeln!(
                m,
                "| offered/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | \
                 sent late p99 / max ms | CPU µs/call giftxd / redis / load gen | box busy |"
            );
            let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|");
            for r in runs {
                let offered = match r.mode {
                    crate::stats::Mode::Open { rate_per_s } => rate_per_s,
                    crate::stats::Mode::Closed { .. } => 0.0,
                };
                let (split, busy) = match &r.cpu {
                    Some(c) => (
                        format!(
                            "{:.1} / {:.1} / {:.1}",
                            c.server_us_per_call.unwrap_or(0.0),
                            c.redis_us_per_call.unwrap_or(0.0),
                            c.loadgen_us_per_call
                        ),
                        format!("{:.0}%", c.box_busy_pct),
                    ),
                    None => ("—".to_owned(), "—".to_owned()),
                };
                let late = match (r.send_lag_p99_ms, r.send_lag_max_ms) {
                    (Some(p), Some(x)) => format!("{p:.2} / {x:.2}"),
                    _ => "—".to_owned(),
                };
                let _ = writeln!(
                    m,
                    "| {offered:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:?} | {late} | {split} | {busy} |",
                    r.throughput_per_s, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.errors
                );
            }
            let _ = writeln!(m);
        }
        if let Some(e) = &self.everysec {
            let _ = writeln!(
                m,
                "**appendfsync everysec** (not what giftx requires; for comparison): Exchange {:.0}/s \
                 p99 {:.2} ms; EVALSHA claim-sized {:.0}/s; ratio {:.2}.\n",
                e.exchange.throughput_per_s,
                e.exchange.p99_ms,
                e.ceiling_evalsha_claim.rps,
                ratio(e.exchange.throughput_per_s, e.ceiling_evalsha_claim.rps)
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(m, "## Issue 8 targets\n");
            let _ = writeln!(m, "| target | bar | measured | met |");
            let _ = writeln!(m, "|---|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} |",
                    t.name,
                    t.target,
                    t.measured,
                    if t.met { "met" } else { "**not met**" }
                );
            }
        }
        m
    }

    /// The "CPU per call" table: every process taking part in each closed
    /// run, per call, and how busy that kept the box.
    fn cpu_table(&self, m: &mut String) {
        let mut rows: Vec<(String, &CpuSplit)> = Vec::new();
        for (what, r) in [("Exchange", &self.exchange), ("VerifyCode", &self.verify)] {
            if let Some(cpu) = r.as_ref().and_then(|r| r.cpu.as_ref()) {
                rows.push((what.to_owned(), cpu));
            }
        }
        for b in [&self.ceiling_evalsha_claim, &self.ceiling_evalsha_trivial]
            .into_iter()
            .flatten()
        {
            if let Some(cpu) = &b.cpu {
                rows.push((format!("ceiling: {}", b.name), cpu));
            }
        }
        if let Some(cpu) = self
            .ceiling_tonic_echo
            .as_ref()
            .and_then(|r| r.cpu.as_ref())
        {
            rows.push(("ceiling: tonic echo".to_owned(), cpu));
        }
        if rows.is_empty() {
            return;
        }
        let cores = rows[0].1.cores;
        let _ = writeln!(m, "## CPU per call (closed loop, µs)\n");
        let _ = writeln!(
            m,
            "Each process's CPU time (user + system) over the run ÷ calls. \
             \"box busy\" = total per call × calls/s ÷ {cores} cores: how much of the machine \
             these processes used. \"whole machine\" is every process over the same time \
             (`/proc/stat`), other people's work included.\n"
        );
        let _ = writeln!(
            m,
            "| call | server | redis-server | load generator | total | calls/s | box busy | whole machine |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        let opt = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
        for (what, c) in rows {
            let server = match (&c.server, c.server_us_per_call) {
                (Some(n), Some(v)) => format!("{v:.1} ({n})"),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                m,
                "| {what} | {server} | {} | {:.1} ({}; {:.2} of {} thread{}{}) | **{:.1}** | {:.0} | {:.0}% | {} |",
                opt(c.redis_us_per_call),
                c.loadgen_us_per_call,
                c.loadgen,
                c.loadgen_cores_used,
                c.loadgen_threads,
                if c.loadgen_threads == 1 { "" } else { "s" },
                if c.loadgen_near_limit() {
                    ", **may be the limit**"
                } else {
                    ""
                },
                c.total_us_per_call,
                c.calls_per_s,
                c.box_busy_pct,
                c.machine_busy_pct
                    .map_or_else(|| "—".to_owned(), |v| format!("{v:.0}%"))
            );
        }
        let _ = writeln!(m);
    }

    /// Latency (p50, p99; log scale) vs achieved throughput, one panel per
    /// call, from the open-loop runs. `None` without open-loop runs.
    pub fn svg(&self) -> Option<String> {
        let panels: Vec<(&str, &Vec<RunStats>)> = [
            ("Exchange", &self.exchange_open_loop),
            ("VerifyCode", &self.verify_open_loop),
        ]
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .collect();
        if panels.is_empty() {
            return None;
        }
        let (pw, ph, ml, mt, mb, mr) = (440.0, 320.0, 60.0, 40.0, 50.0, 20.0);
        let width = pw * panels.len() as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="{width}" height="{ph}" fill="white"/>"#);
        for (k, (name, runs)) in panels.iter().enumerate() {
            let x0 = pw * k as f64;
            let (w, h) = (pw - ml - mr, ph - mt - mb);
            let xmax = runs
                .iter()
                .map(|r| r.throughput_per_s)
                .fold(1.0_f64, f64::max)
                * 1.1;
            let lats: Vec<f64> = runs
                .iter()
                .flat_map(|r| [r.p50_ms, r.p99_ms])
                .map(|v| v.max(0.01))
                .collect();
            let lo = lats
                .iter()
                .copied()
                .fold(f64::MAX, f64::min)
                .log10()
                .floor();
            let hi = lats
                .iter()
                .copied()
                .fold(f64::MIN, f64::max)
                .log10()
                .ceil()
                .max(lo + 1.0);
            let px = |v: f64| x0 + ml + v / xmax * w;
            let py = |v: f64| mt + h - (v.max(0.01).log10() - lo) / (hi - lo) * h;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="20" font-size="14" text-anchor="middle">{name}: latency vs throughput (open loop)</text>"#,
                x0 + pw / 2.0
            );
            let _ = writeln!(
                s,
                r##"<rect x="{}" y="{mt}" width="{w}" height="{h}" fill="none" stroke="#444"/>"##,
                x0 + ml
            );
            let mut e = lo;
            while e <= hi {
                let v = 10f64.powf(e);
                let y = py(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{} ms</text>"##,
                    x0 + ml,
                    x0 + ml + w,
                    x0 + ml - 4.0,
                    y + 4.0,
                    if v >= 1.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                );
                e += 1.0;
            }
            for i in 0..=4 {
                let v = xmax * f64::from(i) / 4.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">{v:.0}</text>"#,
                    px(v),
                    mt + h + 15.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">achieved requests/s</text>"#,
                x0 + ml + w / 2.0,
                ph - 12.0
            );
            for (label, color, f) in [
                (
                    "p50",
                    "#1f77b4",
                    (|r: &RunStats| r.p50_ms) as fn(&RunStats) -> f64,
                ),
                ("p99", "#d62728", |r: &RunStats| r.p99_ms),
            ] {
                let pts: Vec<String> = runs
                    .iter()
                    .map(|r| format!("{:.1},{:.1}", px(r.throughput_per_s), py(f(r))))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    pts.join(" ")
                );
                for r in runs.iter() {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                        px(r.throughput_per_s),
                        py(f(r))
                    );
                }
                let ly = if label == "p50" { mt + 14.0 } else { mt + 28.0 };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{ly}" fill="{color}">{label}</text>"#,
                    x0 + ml + 8.0
                );
            }
        }
        s.push_str("</svg>\n");
        Some(s)
    }
}
