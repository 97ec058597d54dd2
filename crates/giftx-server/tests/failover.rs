//! A Redis Sentinel failover under exchange load, with a real giftxd
//! process: many tasks exchange many codes while the master is killed
//! with SIGKILL and a replica is promoted. giftxd follows the new master
//! without a restart. Afterwards: no code has two deliverables, every
//! exchange acknowledged SUCCEEDED is still there with the same
//! deliverable, and nothing is left PENDING once the reconciler ran.
//!
//! Run twice: with claims and completions waiting for a replica (`WAIT`,
//! the default when the master has replicas), where nothing acknowledged
//! may be lost, and with `GIFTX_REDIS_MIN_REPLICAS_ACKED=0`, where the
//! test reports what was lost instead of failing on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_client::ExchangeServiceClient;
use giftx_proto::v1::expiry_service_client::ExpiryServiceClient;
use giftx_proto::v1::issuance_service_client::IssuanceServiceClient;
use giftx_testkit::SentinelGroup;
use tonic::transport::Channel;

mod support;
use support::{channel, free_port, giftxd_dir, start_giftxd_with};

const CONFIG: &str = r#"
[providers.sim]
kind = "simulated"
latency_ms = 5

[exchange]
provider_timeout_ms = 1500
lease_seconds = 2
backoff_base_ms = 100

[expiry]
interval_ms = 200
lease_ttl_ms = 1000
reconcile_min_age_seconds = 0
"#;

/// Calls made, errors seen (by status and message), and the last one.
#[derive(Default)]
struct Counts {
    calls: usize,
    errors: usize,
    kinds: HashMap<String, usize>,
    last_error: Option<Instant>,
}

/// Codes exchanged per run, and the tasks exchanging them.
const CODES: usize = 240;
const TASKS: usize = 12;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What a run saw.
#[derive(Debug, Default)]
struct Report {
    calls: usize,
    errors: usize,
    acknowledged: usize,
    /// From the kill to the last error a caller saw.
    outage: Option<Duration>,
    /// Codes whose callers were told two different deliverables.
    doubled: Vec<String>,
    /// Acknowledged SUCCEEDED exchanges missing or changed at the end.
    lost: Vec<String>,
    /// Exchanges still PENDING after the reconciler had time to run.
    pending: usize,
    /// The errors callers saw, by status code and message.
    error_kinds: HashMap<String, usize>,
}

async fn setup(ch: &Channel) -> Vec<pb::IssuedCode> {
    let mut issuance = IssuanceServiceClient::new(ch.clone());
    issuance
        .create_campaign(pb::CreateCampaignRequest {
            campaign_id: "failover".into(),
            campaign: Some(pb::Campaign {
                display_name: "failover".into(),
                face_value: Some(pb::Money {
                    currency_code: "JPY".into(),
                    minor_units: 500,
                }),
                expire_time: Some(prost_types::Timestamp {
                    seconds: now_secs() + 86_400,
                    nanos: 0,
                }),
                options: vec![pb::RedemptionOption {
                    option_id: "gift".into(),
                    display_name: "gift".into(),
                    provider: "sim".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    issuance
        .issue_codes(pb::IssueCodesRequest {
            campaign: "campaigns/failover".into(),
            batch_id: "b1".into(),
            count: CODES as i64,
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await
}

/// Exchanges `code` until an answer that ends the attempt, retrying an
/// UNAVAILABLE (or a dropped call) with the same request id, as a portal
/// does. Records every SUCCEEDED answer.
async fn exchange_until_answered(
    ch: Channel,
    code: pb::IssuedCode,
    seen: Arc<Mutex<Vec<(String, pb::Exchange, Instant)>>>,
    counts: Arc<Mutex<Counts>>,
) {
    let mut client = ExchangeServiceClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let r = client
            .exchange(pb::ExchangeRequest {
                code: code.code.clone(),
                login_key: code.login_key.clone(),
                option_id: "gift".into(),
                request_id: format!("req-{}", code.code),
                ..Default::default()
            })
            .await;
        {
            let mut c = counts.lock().unwrap();
            c.calls += 1;
            if let Err(e) = &r {
                c.errors += 1;
                c.last_error = Some(Instant::now());
                *c.kinds
                    .entry(format!("{:?}: {}", e.code(), e.message()))
                    .or_default() += 1;
            }
        }
        if let Ok(x) = r {
            let x = x.into_inner();
            if x.state() == pb::ExchangeState::Succeeded {
                seen.lock()
                    .unwrap()
                    .push((code.code.clone(), x, Instant::now()));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(min_acked: Option<&str>) -> Report {
    let mut group = tokio::task::spawn_blocking(SentinelGroup::start)
        .await
        .unwrap();
    let dir = giftxd_dir(CONFIG, None);
    let d = dir.path();
    let mut env = vec![
        ("GIFTX_REDIS_SENTINELS", group.sentinel_urls().join(",")),
        (
            "GIFTX_REDIS_SENTINEL_MASTER",
            giftx_testkit::sentinel::MASTER_NAME.to_owned(),
        ),
    ];
    if let Some(n) = min_acked {
        env.push(("GIFTX_REDIS_MIN_REPLICAS_ACKED", n.to_owned()));
    }
    let port = free_port();
    let mut giftxd = start_giftxd_with(d, port, &env);
    let pid = giftxd.id();
    let ch = channel(port).await;
    let codes = setup(&ch).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let queue = Arc::new(Mutex::new(codes.clone()));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (ch, seen, counts, queue) = (ch.clone(), seen.clone(), counts.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(code) = queue.lock().unwrap().pop() else {
                    return;
                };
                exchange_until_answered(ch.clone(), code, seen.clone(), counts.clone()).await;
            }
        }));
    }
    // Kill the master once a quarter of the codes are exchanged.
    while seen.lock().unwrap().len() < CODES / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = group.master_port().expect("a master");
    let killed_at = Instant::now();
    let killed = tokio::task::spawn_blocking(move || {
        let i = group.kill_master();
        group.wait_failover(old, Duration::from_secs(60));
        (group, i)
    })
    .await
    .unwrap();
    let (mut group, i) = killed;
    eprintln!(
        "failover: master {old} killed; new master named after {:?}",
        killed_at.elapsed()
    );
    for t in tasks {
        t.await.unwrap();
    }
    // The old master comes back (as a replica, once the sentinels see it).
    let group = tokio::task::spawn_blocking(move || {
        group.restart(i);
        group
    })
    .await
    .unwrap();

    let mut report = Report::default();
    {
        let c = counts.lock().unwrap();
        report.calls = c.calls;
        report.errors = c.errors;
        report.error_kinds = c.kinds.clone();
        report.outage = c
            .last_error
            .filter(|at| *at > killed_at)
            .map(|at| at - killed_at);
    }
    let seen = seen.lock().unwrap().clone();
    report.acknowledged = seen.len();

    // Nothing PENDING once the reconciler ran.
    let mut expiry = ExpiryServiceClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = expiry
            .list_pending_exchanges(pb::ListPendingExchangesRequest {
                older_than: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .map(|r| r.into_inner().exchanges.len());
        if let Ok(n) = p {
            report.pending = n;
            if n == 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every acknowledged exchange is still there, unchanged; no code has
    // two deliverables.
    let by_code: HashMap<&str, &pb::IssuedCode> =
        codes.iter().map(|c| (c.code.as_str(), c)).collect();
    let mut told: HashMap<String, pb::Exchange> = HashMap::new();
    for (code, x, _) in &seen {
        if let Some(first) = told.get(code)
            && (first.name != x.name || first.deliverable != x.deliverable)
        {
            report.doubled.push(code.clone());
        }
        told.entry(code.clone()).or_insert_with(|| x.clone());
    }
    let mut client = ExchangeServiceClient::new(ch.clone());
    for (code, x) in &told {
        let c = by_code[code.as_str()];
        let now = client
            .get_exchange(pb::GetExchangeRequest {
                code: c.code.clone(),
                login_key: c.login_key.clone(),
            })
            .await;
        match now {
            Ok(n) => {
                let n = n.into_inner();
                if n.name != x.name
                    || n.deliverable != x.deliverable
                    || n.state() != pb::ExchangeState::Succeeded
                {
                    report.lost.push(code.clone());
                }
            }
            Err(_) => report.lost.push(code.clone()),
        }
    }
    // The same giftxd served throughout.
    assert_eq!(giftxd.id(), pid);
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("giftxd still serving");
    giftxd.kill();
    drop(group);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_exchange_load_loses_no_acknowledged_exchange() {
    let with_wait = run(None).await;
    eprintln!("failover with WAIT (1 replica): {with_wait:?}");
    assert!(with_wait.doubled.is_empty(), "{with_wait:?}");
    assert!(with_wait.lost.is_empty(), "{with_wait:?}");
    assert_eq!(with_wait.pending, 0, "{with_wait:?}");
    assert_eq!(with_wait.acknowledged, CODES, "{with_wait:?}");

    // Without WAIT an acknowledged exchange may be lost: reported, not
    // asserted. Two deliverables for one code would still be a bug.
    let without = run(Some("0")).await;
    eprintln!(
        "failover without WAIT: {} acknowledged, {} lost, {:?}",
        without.acknowledged,
        without.lost.len(),
        without
    );
    assert!(without.doubled.is_empty(), "{without:?}");
}
