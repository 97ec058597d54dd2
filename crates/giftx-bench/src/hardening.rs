//! `giftx-bench hardening`: the figures that show the hardening holds.
//!
//! - **Verify path, unknown code vs wrong key**: VerifyCode of a code that
//!   does not exist (right series, valid check symbol) and of a real code
//!   with a wrong login key, one call at a time, interleaved (A, B, A, B…)
//!   so both see the same machine. Their medians must be within 10 %: the
//!   latency must not tell an attacker which codes exist.
//! - **Exchange while issuance runs**: closed-loop Exchange alone, then the
//!   same with `--issue-streams` concurrent IssueCodes streams opened
//!   against another campaign (read as fast as they come, then left unread),
//!   reporting Exchange p99 in each, how many streams giftxd accepted and
//!   how many it refused (RESOURCE_EXHAUSTED), and giftxd's peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use giftx_core::{Code, LoginKey, Series};
use giftx_proto::v1 as pb;
use serde::Serialize;

use crate::drive::closed_loop;
use crate::giftx::{Cred, Env};
use crate::procs::RssSampler;
use crate::stats::{RunStats, round3};

/// What `hardening` measured.
#[derive(Debug, Default, Serialize)]
pub struct Hardening {
    /// VerifyCode of real codes with a wrong login key.
    pub verify_wrong_key: Option<Latencies>,
    /// VerifyCode of codes that do not exist.
    pub verify_unknown_code: Option<Latencies>,
    /// Median of unknown ÷ median of wrong key.
    pub verify_median_ratio: Option<f64>,
    /// Exchange alone.
    pub exchange_alone: Option<RunStats>,
    /// Exchange while the issuance streams are read.
    pub exchange_with_issuance_read: Option<RunStats>,
    /// Exchange while the issuance streams are left unread.
    pub exchange_with_issuance_unread: Option<RunStats>,
    /// Streams opened.
    pub issue_streams: usize,
    /// Streams giftxd served.
    pub issue_streams_accepted: usize,
    /// Streams refused with RESOURCE_EXHAUSTED.
    pub issue_streams_refused: usize,
    /// Codes the accepted streams delivered while Exchange ran.
    pub issued_codes_during: u64,
    /// giftxd's peak RSS during the issuance phases (MB).
    pub giftxd_peak_rss_mb: f64,
}

/// Sequential latencies of one kind of call.
#[derive(Debug, Serialize)]
pub struct Latencies {
    /// Calls.
    pub calls: usize,
    /// Median (ms).
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// The status every call answered with (name → count).
    pub answers: std::collections::BTreeMap<String, u64>,
}

impl Latencies {
    fn of(mut us: Vec<u64>, answers: std::collections::BTreeMap<String, u64>) -> Latencies {
        us.sort_unstable();
        let pct = |p: f64| {
            let i = ((us.len() as f64 - 1.0) * p).round() as usize;
            us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        Latencies {
            calls: us.len(),
            p50_ms: round3(pct(0.5)),
            p90_ms: round3(pct(0.9)),
            p99_ms: round3(pct(0.99)),
            answers,
        }
    }

    /// One line for the console.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {} calls  p50 {:.3} p90 {:.3} p99 {:.3} ms  answers {:?}",
            self.calls, self.p50_ms, self.p90_ms, self.p99_ms, self.answers
        )
    }
}

/// Settings of the run.
pub struct HardeningOpts {
    /// Calls of each kind for the verify comparison.
    pub verify_calls: usize,
    /// Concurrent issuance streams opened.
    pub issue_streams: usize,
    /// Requests in flight for Exchange.
    pub concurrency: usize,
    /// Seconds of each Exchange run.
    pub duration: Duration,
}

/// Runs every hardening figure on `env`.
pub async fn run(env: &mut Env, o: &HardeningOpts) -> Result<Hardening> {
    let mut out = Hardening {
        issue_streams: o.issue_streams,
        ..Hardening::default()
    };
    let campaign = "bench-h";
    env.create_campaign(campaign).await?;
    let exchange_codes = 40_000u64;
    let need = o.verify_calls as u64 + exchange_codes * 3;
    let (codes, _) = env.issue(campaign, "h-1", need, true).await?;
    let codes = Arc::new(codes);

    println!(
        "== verify path: unknown code vs wrong login key ({} each, interleaved, one at a time)",
        o.verify_calls
    );
    let (wrong, unknown) = verify_pair(env, &codes[..o.verify_calls]).await?;
    println!("  {}", wrong.line("VerifyCode wrong key"));
    println!("  {}", unknown.line("VerifyCode unknown code"));
    let ratio = if wrong.p50_ms > 0.0 {
        round3(unknown.p50_ms / wrong.p50_ms)
    } else {
        0.0
    };
    println!("  median unknown / wrong key = {ratio:.3} (bar: within 0.90–1.10)");
    out.verify_wrong_key = Some(wrong);
    out.verify_unknown_code = Some(unknown);
    out.verify_median_ratio = Some(ratio);

    println!(
        "== Exchange alone vs with {} concurrent IssueCodes streams",
        o.issue_streams
    );
    let mut base = o.verify_calls;
    let alone = exchange_run(env, &codes, &mut base, o).await?;
    println!("  {}", alone.line());
    out.exchange_alone = Some(alone);

    env.create_campaign("bench-h-issue").await?;
    let rss = RssSampler::start(env.giftxd.proc.pid());
    for read in [true, false] {
        let streams = open_streams(env, o.issue_streams, read).await?;
        let (accepted, refused) = (streams.accepted, streams.refused);
        let issued0 = streams.issued();
        let r = exchange_run(env, &codes, &mut base, o).await?;
        let issued = streams.issued().saturating_sub(issued0);
        streams.stop().await;
        println!(
            "  {}  [{} streams {}: {accepted} accepted, {refused} refused; {issued} codes streamed during the run]",
            r.line(),
            o.issue_streams,
            if read { "read" } else { "unread" }
        );
        out.issue_streams_accepted = accepted;
        out.issue_streams_refused = refused;
        out.issued_codes_during += issued;
        if read {
            out.exchange_with_issuance_read = Some(r);
        } else {
            out.exchange_with_issuance_unread = Some(r);
        }
    }
    out.giftxd_peak_rss_mb = round3(rss.finish() as f64 / 1024.0);
    println!("  giftxd peak RSS {:.1} MB", out.giftxd_peak_rss_mb);
    Ok(out)
}

/// VerifyCode with a wrong key on each of `codes`, interleaved with
/// VerifyCode of as many codes that do not exist.
async fn verify_pair(env: &Env, codes: &[Cred]) -> Result<(Latencies, Latencies)> {
    let Some((first, _)) = codes.first() else {
        bail!("no codes to verify");
    };
    let series: Series = Code::parse(first)
        .map_err(|e| anyhow::anyhow!("bench code: {e}"))?
        .series();
    let mut client = env.exchange[0].clone();
    let (mut a, mut b) = (
        Vec::with_capacity(codes.len()),
        Vec::with_capacity(codes.len()),
    );
    let (mut ans_a, mut ans_b) = (Default::default(), Default::default());
    // Warm the connection and both paths.
    for _ in 0..50 {
        let _ = verify_once(&mut client, first, &wrong_key()?).await;
    }
    for (code, _) in codes {
        let d = verify_once_counted(&mut client, code, &wrong_key()?, &mut ans_a).await;
        a.push(d);
        let unknown = Code::generate(series).context("random code")?;
        let d =
            verify_once_counted(&mut client, &unknown.printed(), &wrong_key()?, &mut ans_b).await;
        b.push(d);
    }
    Ok((Latencies::of(a, ans_a), Latencies::of(b, ans_b)))
}

fn wrong_key() -> Result<String> {
    Ok(LoginKey::generate().context("random login key")?.printed())
}

async fn verify_once(
    c: &mut giftx_proto::v1::exchange_service_client::ExchangeServiceClient<
        tonic::transport::Channel,
    >,
    code: &str,
    key: &str,
) -> std::result::Result<(), tonic::Status> {
    c.verify_code(pb::VerifyCodeRequest {
        code: code.to_owned(),
        login_key: key.to_owned(),
    })
    .await
    .map(|_| ())
}

async fn verify_once_counted(
    c: &mut giftx_proto::v1::exchange_service_client::ExchangeServiceClient<
        tonic::transport::Channel,
    >,
    code: &str,
    key: &str,
    answers: &mut std::collections::BTreeMap<String, u64>,
) -> u64 {
    let t = Instant::now();
    let r = verify_once(c, code, key).await;
    let us = t.elapsed().as_micros() as u64;
    let name = match r {
        Ok(()) => "OK".to_owned(),
        Err(s) => format!("{:?}", s.code()),
    };
    *answers.entry(name).or_default() += 1;
    us
}

/// One closed-loop Exchange run over fresh codes from `base` on.
async fn exchange_run(
    env: &Env,
    codes: &Arc<Vec<Cred>>,
    base: &mut usize,
    o: &HardeningOpts,
) -> Result<RunStats> {
    let left = codes.len().saturating_sub(*base) as u64;
    let op = env.exchange_op(codes.clone(), *base);
    let (r, used) = closed_loop("Exchange", op, o.concurrency.max(1), o.duration, left).await;
    *base += used as usize;
    Ok(r)
}

/// Issuance streams held open while Exchange runs.
struct Streams {
    accepted: usize,
    refused: usize,
    counters: Vec<Arc<std::sync::atomic::AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Streams {
    fn issued(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens `n` IssueCodes streams of 10M codes each; `read`: read them as
/// fast as they come, else hold them unread.
async fn open_streams(env: &Env, n: usize, read: bool) -> Result<Streams> {
    static ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut s = Streams {
        accepted: 0,
        refused: 0,
        counters: Vec::new(),
        tasks: Vec::new(),
    };
    for k in 0..n {
        let mut client = env.issuance.clone();
        let r = client
            .issue_codes(pb::IssueCodesRequest {
                campaign: "campaigns/bench-h-issue".to_owned(),
                batch_id: format!("load-{round}-{k}"),
                count: 10_000_000,
            })
            .await;
        let mut stream = match r {
            Ok(r) => r.into_inner(),
            Err(st) if st.code() == tonic::Code::ResourceExhausted => {
                s.refused += 1;
                continue;
            }
            Err(st) => bail!("IssueCodes stream {k}: {st}"),
        };
        // A refusal may also come as the stream's first message.
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        match first {
            Ok(Some(Err(st))) if st.code() == tonic::Code::ResourceExhausted => {
                s.refused += 1;
                continue;
            }
            Ok(Some(Err(st))) => bail!("IssueCodes stream {k}: {st}"),
            _ => {}
        }
        s.accepted += 1;
        let count = Arc::new(std::sync::atomic::AtomicU64::new(1));
        s.counters.push(count.clone());
        s.tasks.push(tokio::spawn(async move {
            if !read {
                // Hold the stream open, unread, until stopped.
                std::future::pending::<()>().await;
            }
            while let Some(Ok(_)) = stream.next().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Let the accepted streams get going.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(s)
}
