//! The ledger conformance suite: one set of tests, written against the
//! [`Ledger`] trait only, run against every implementation.
//!
//! - Each `async fn` below takes `&dyn Ledger` and asserts the documented
//!   behaviour (exact `Refusal` variants, exact counts).
//! - `suite!` turns the list of them into `#[test]`s for one backend;
//!   `mod memory` and `mod redis` instantiate it.
//! - `state_machine_matches_model` drives random operation sequences
//!   through a ledger and a small in-test model, and compares every outcome
//!   and the counts after every step.
//!
//! The Redis backend uses one private `redis-server` per test binary
//! (killed at exit); each test gets its own logical database, flushed first.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use giftx_core::hash::{Hasher, Secret};
use giftx_core::model::{
    Batch, BatchId, BatchState, Campaign, CampaignCounts, CampaignId, CampaignSpec, CodeState,
    ExchangeState, OptionId, ProviderId, RedemptionOption,
};
use giftx_core::{Clock, Currency, Digest, Money, Series, SystemClock, Timestamp};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, ExchangeId, ExchangeRecord, Lease, Ledger, LedgerConfig,
    LedgerError, MAX_FAILED_EXCHANGES, MemoryLedger, NewCode, Page, Preferences, Refusal,
    StoreOutcome,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

// ---------------------------------------------------------------- fixtures

const THRESHOLD: u32 = 3;
const LOCKOUT: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const STALL: Duration = Duration::from_secs(30);

fn config() -> LedgerConfig {
    LedgerConfig {
        lockout_threshold: THRESHOLD,
        lockout_duration: LOCKOUT,
        retention: RETENTION,
        batch_stall_timeout: STALL,
    }
}

/// A base instant near the wall clock (a Redis ledger may back its
/// retention with real key TTLs, so test times must not lie in the past),
/// rounded to the second.
fn t0() -> Timestamp {
    Timestamp(SystemClock.now().0 / 1000 * 1000)
}

fn ms(t: Timestamp, delta: i64) -> Timestamp {
    Timestamp(t.0 + delta)
}

/// A ledger under test, and whatever keeps its backing store alive.
pub struct Fixture {
    ledger: Box<dyn Ledger>,
    _guard: Option<Box<dyn Send>>,
}

impl Fixture {
    fn ledger(&self) -> &dyn Ledger {
        &*self.ledger
    }
}

pub async fn memory_fixture() -> Fixture {
    Fixture {
        ledger: Box::new(MemoryLedger::new(config())),
        _guard: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn hasher() -> Hasher {
    Hasher::new(Secret::new(vec![7; 32])).expect("hasher")
}

/// A deterministic digest for a label.
fn d(label: &str) -> Digest {
    hasher().fingerprint(&[label.as_bytes()])
}

fn opt(s: &str) -> OptionId {
    OptionId::parse("option", s).expect("option id")
}

fn cid(s: &str) -> CampaignId {
    CampaignId::parse("campaign", s).expect("campaign id")
}

fn bid(s: &str) -> BatchId {
    BatchId::parse("batch", s).expect("batch id")
}

const OPTIONS: [&str; 3] = ["gift-code", "book-card", "donation"];

fn spec(id: &str, deadline: Timestamp) -> CampaignSpec {
    CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: cid(id),
        display_name: format!("Apology {id}"),
        owner: "benesse".into(),
        face_value: Money::new(Currency::from_code("JPY").expect("JPY"), 500),
        expire_time: deadline,
        options: OPTIONS
            .iter()
            .map(|o| RedemptionOption {
                id: opt(o),
                display_name: o.to_string(),
                provider: ProviderId::parse("provider", "fake").expect("provider id"),
            })
            .collect(),
    }
}

/// A printed code as the ledger sees it.
#[derive(Clone, Copy, Debug)]
struct TestCode {
    code: CodeRef,
    key: Digest,
    wrong: Digest,
    /// Position in its batch (1 unless set with `at`).
    serial: u32,
}

impl TestCode {
    fn new(series: Series, label: &str) -> TestCode {
        TestCode {
            code: CodeRef {
                series,
                digest: d(&format!("code:{label}")),
            },
            key: d(&format!("key:{label}")),
            wrong: d(&format!("wrong:{label}")),
            serial: 1,
        }
    }

    /// The same code at another position in its batch.
    fn at(self, serial: usize) -> TestCode {
        TestCode {
            serial: u32::try_from(serial).expect("serial"),
            ..self
        }
    }

    fn new_code(&self) -> NewCode {
        NewCode {
            code: self.code.digest,
            login_key: self.key,
            serial: self.serial,
        }
    }
}

fn claim_req(
    c: &TestCode,
    option: &str,
    request: &str,
    holder: &str,
    until: Timestamp,
) -> ClaimRequest {
    ClaimRequest {
        code: c.code,
        login_key: c.key,
        option: opt(option),
        request: d(&format!("req:{:?}:{request}", c.code.digest.0)),
        fingerprint: d(&format!("fp:{option}")),
        contact: None,
        preferences: Preferences::default(),
        lease: Lease {
            holder: holder.into(),
            until,
        },
    }
}

/// The refusal in `r`; panics when `r` is anything else.
#[track_caller]
fn refusal<T: Debug>(r: Result<T, LedgerError>) -> Refusal {
    match r {
        Err(LedgerError::Refused(x)) => x,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[track_caller]
fn claimed(r: Result<ClaimOutcome, LedgerError>) -> ExchangeRecord {
    match r {
        // Every id a ledger gives out passes the API edge's check.
        Ok(ClaimOutcome::Claimed(x)) => {
            assert!(x.id.is_well_formed(), "{:?}", x.id);
            x
        }
        other => panic!("expected Claimed, got {other:?}"),
    }
}

#[track_caller]
fn existing(r: Result<ClaimOutcome, LedgerError>) -> ExchangeRecord {
    match r {
        Ok(ClaimOutcome::Existing(x)) => x,
        other => panic!("expected Existing, got {other:?}"),
    }
}

/// A campaign with one batch of `n` stored codes (labels `{id}-{i}`).
struct World {
    campaign: Campaign,
    batch: Batch,
    codes: Vec<TestCode>,
    start: Timestamp,
    deadline: Timestamp,
}

async fn world(l: &dyn Ledger, id: &str, n: usize) -> World {
    let start = t0();
    let deadline = ms(start, 24 * 3600 * 1000);
    let campaign = l
        .create_campaign(&spec(id, deadline), None, start)
        .await
        .expect("create campaign");
    let batch = l
        .begin_batch(&campaign.spec.id, &bid("b1"), n as u64, start)
        .await
        .expect("begin batch");
    let codes: Vec<TestCode> = (0..n)
        .map(|i| TestCode::new(campaign.series, &format!("{id}-{i}")).at(i + 1))
        .collect();
    let news: Vec<NewCode> = codes.iter().map(TestCode::new_code).collect();
    let out = l
        .store_codes(&campaign, &batch, &news, start)
        .await
        .expect("store codes");
    assert_eq!(
        out,
        StoreOutcome {
            issued: n as u64,
            collisions: vec![]
        }
    );
    let batch = l
        .finish_batch(&campaign.spec.id, &batch.id, true, start)
        .await
        .expect("finish batch");
    World {
        campaign,
        batch,
        codes,
        start,
        deadline,
    }
}

fn counts(
    issued: i64,
    active: i64,
    pending: i64,
    redeemed: i64,
    expired: i64,
    void: i64,
    by_option: [(i64, i64); 3],
) -> CampaignCounts {
    CampaignCounts {
        issued,
        active,
        pending,
        redeemed,
        expired,
        void,
        by_option: OPTIONS
            .iter()
            .zip(by_option)
            .map(|(o, (r, p))| (opt(o), r, p))
            .collect(),
        purge_time: None,
    }
}

// --------------------------------------------------------------- campaigns

async fn create_campaign_takes_first_free_series_and_is_idempotent(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let a = l
        .create_campaign(&spec("alpha", dl), Some("r1"), now)
        .await
        .unwrap();
    let b = l
        .create_campaign(&spec("beta", dl), None, now)
        .await
        .unwrap();
    assert_eq!(a.series, Series::from_index(0).unwrap());
    assert_eq!(b.series, Series::from_index(1).unwrap());
    assert_eq!(a.spec, spec("alpha", dl));
    assert_eq!(a.create_time, now);
    // Same spec, no request id: the existing campaign.
    let again = l
        .create_campaign(&spec("alpha", dl), None, ms(now, 5))
        .await
        .unwrap();
    assert_eq!(again, a);
    // Same request id, other content: the existing campaign.
    let mut other = spec("alpha", dl);
    other.display_name = "something else".into();
    let again = l
        .create_campaign(&other, Some("r1"), ms(now, 6))
        .await
        .unwrap();
    assert_eq!(again, a);
    // Same id, other content: refused, with or without another request id.
    assert_eq!(
        refusal(l.create_campaign(&other, Some("r2"), ms(now, 7)).await),
        Refusal::CampaignExists
    );
    assert_eq!(
        refusal(l.create_campaign(&other, None, ms(now, 8)).await),
        Refusal::CampaignExists
    );
    // Lookups.
    assert_eq!(
        l.get_campaign(&cid("alpha")).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(l.get_campaign(&cid("gamma")).await.unwrap(), None);
    assert_eq!(
        l.campaign_by_series(b.series).await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        l.campaign_by_series(Series::from_index(2).unwrap())
            .await
            .unwrap(),
        None
    );
    // A third campaign takes the next free series.
    let c = l
        .create_campaign(&spec("gamma", dl), None, now)
        .await
        .unwrap();
    assert_eq!(c.series, Series::from_index(2).unwrap());
}

async fn create_campaign_refuses_when_all_series_are_taken(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    for i in 0..Series::COUNT {
        let c = l
            .create_campaign(&spec(&format!("c{i}"), dl), None, now)
            .await
            .unwrap();
        assert_eq!(c.series.index(), i);
    }
    assert_eq!(
        refusal(
            l.create_campaign(&spec("one-too-many", dl), None, now)
                .await
        ),
        Refusal::SeriesExhausted
    );
    // Idempotent retries still answer.
    let c = l.create_campaign(&spec("c7", dl), None, now).await.unwrap();
    assert_eq!(c.series.index(), 7);
}

async fn list_campaigns_pages_in_creation_order(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let names = ["kilo", "alpha", "zulu", "mike", "bravo"];
    for (i, n) in names.iter().enumerate() {
        l.create_campaign(&spec(n, dl), None, ms(now, i as i64))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = l.list_campaigns(cursor.as_deref(), 2).await.unwrap();
        assert!(page.items.len() <= 2, "page larger than the limit");
        seen.extend(page.items.iter().map(|c| c.spec.id.to_string()));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "listing did not end");
    assert_eq!(seen, names);
}

async fn extend_campaign_refusals_and_moves(l: &dyn Ledger) {
    let w = world(l, "ext", 1).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    assert_eq!(
        refusal(
            l.extend_campaign(&cid("nope"), w.deadline, false, now)
                .await
        ),
        Refusal::CampaignNotFound
    );
    assert_eq!(
        refusal(l.extend_campaign(id, ms(w.deadline, -1), false, now).await),
        Refusal::DeadlineEarlier
    );
    let later = l
        .extend_campaign(id, ms(w.deadline, 60_000), false, now)
        .await
        .unwrap();
    assert_eq!(later.spec.expire_time, ms(w.deadline, 60_000));
    assert!(later.version > w.campaign.version, "version not bumped");
    let earlier = l
        .extend_campaign(id, ms(w.deadline, -60_000), true, ms(now, 1))
        .await
        .unwrap();
    assert_eq!(earlier.spec.expire_time, ms(w.deadline, -60_000));
    assert!(earlier.version > later.version, "version not bumped");
    assert_eq!(
        l.get_campaign(id)
            .await
            .unwrap()
            .map(|c| c.spec.expire_time),
        Some(ms(w.deadline, -60_000))
    );
    // The forced earlier deadline applies to claims at once.
    let c = w.codes[0];
    assert_eq!(
        refusal(
            l.claim(
                &claim_req(&c, "gift-code", "r", "h", ms(w.deadline, 0)),
                ms(w.deadline, -60_000)
            )
            .await
        ),
        Refusal::Expired
    );
}

// ----------------------------------------------------------------- batches

async fn begin_batch_refusals_and_ordinals(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let c = l
        .create_campaign(&spec("batches", dl), None, now)
        .await
        .unwrap();
    let id = &c.spec.id;
    assert_eq!(
        refusal(l.begin_batch(&cid("nope"), &bid("b1"), 5, now).await),
        Refusal::CampaignNotFound
    );
    let b1 = l.begin_batch(id, &bid("b1"), 5, now).await.unwrap();
    assert_eq!(
        (b1.ordinal, b1.requested, b1.issued, b1.state),
        (1, 5, 0, BatchState::Issuing)
    );
    assert_eq!(b1.campaign, *id);
    assert_eq!(
        refusal(l.begin_batch(id, &bid("b1"), 5, now).await),
        Refusal::BatchExists
    );
    let b2 = l.begin_batch(id, &bid("b2"), 3, now).await.unwrap();
    assert_eq!(b2.ordinal, 2);
    // Any earlier use of the id, even a finished or voided batch.
    l.finish_batch(id, &bid("b1"), true, now).await.unwrap();
    l.void_batch(id, &bid("b2"), now).await.unwrap();
    assert_eq!(
        refusal(l.begin_batch(id, &bid("b1"), 1, now).await),
        Refusal::BatchExists
    );
    assert_eq!(
        refusal(l.begin_batch(id, &bid("b2"), 1, now).await),
        Refusal::BatchExists
    );
    // At the deadline no new batch; a millisecond before, yes.
    assert_eq!(
        refusal(l.begin_batch(id, &bid("b3"), 1, dl).await),
        Refusal::CampaignExpired
    );
    assert_eq!(
        refusal(l.begin_batch(id, &bid("b3"), 1, ms(dl, 1)).await),
        Refusal::CampaignExpired
    );
    let b3 = l.begin_batch(id, &bid("b3"), 1, ms(dl, -1)).await.unwrap();
    assert_eq!(b3.ordinal, 3);
}

async fn store_codes_skips_and_reports_collisions(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let c = l
        .create_campaign(&spec("store", dl), None, now)
        .await
        .unwrap();
    let b1 = l
        .begin_batch(&c.spec.id, &bid("b1"), 10, now)
        .await
        .unwrap();
    let codes: Vec<TestCode> = (0..6)
        .map(|i| TestCode::new(c.series, &format!("s{i}")))
        .collect();
    let out = l
        .store_codes(&c, &b1, &[codes[0].new_code(), codes[1].new_code()], now)
        .await
        .unwrap();
    assert_eq!(
        out,
        StoreOutcome {
            issued: 2,
            collisions: vec![]
        }
    );
    // Already stored, and twice in one chunk.
    let chunk = [
        codes[2].new_code(),
        codes[0].new_code(),
        codes[3].new_code(),
        codes[3].new_code(),
        codes[1].new_code(),
    ];
    let out = l.store_codes(&c, &b1, &chunk, ms(now, 1)).await.unwrap();
    assert_eq!(
        out,
        StoreOutcome {
            issued: 4,
            collisions: vec![1, 3, 4]
        }
    );
    // Codes of another batch of the campaign collide too.
    let b2 = l
        .begin_batch(&c.spec.id, &bid("b2"), 10, now)
        .await
        .unwrap();
    let out = l
        .store_codes(
            &c,
            &b2,
            &[codes[2].new_code(), codes[4].new_code()],
            ms(now, 2),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        StoreOutcome {
            issued: 1,
            collisions: vec![0]
        }
    );
    let got = l
        .get_batch(&c.spec.id, &bid("b1"), ms(now, 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.issued, 4);
    let cnt = l.counts(&c.spec.id, ms(now, 3)).await.unwrap();
    assert_eq!(cnt, counts(5, 5, 0, 0, 0, 0, [(0, 0); 3]));
    // The stored login key is the one given.
    let v = l
        .verify(codes[3].code, codes[3].key, ms(now, 4))
        .await
        .unwrap();
    assert_eq!(v.state, CodeState::Active);
    assert_eq!(v.latest_exchange, None);
}

async fn store_codes_refusals(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let c = l
        .create_campaign(&spec("store-refusals", dl), None, now)
        .await
        .unwrap();
    let code = TestCode::new(c.series, "x");
    let b1 = l.begin_batch(&c.spec.id, &bid("b1"), 1, now).await.unwrap();
    let mut ghost = b1.clone();
    ghost.id = bid("ghost");
    assert_eq!(
        refusal(l.store_codes(&c, &ghost, &[code.new_code()], now).await),
        Refusal::BatchNotFound
    );
    l.finish_batch(&c.spec.id, &b1.id, true, now).await.unwrap();
    assert_eq!(
        refusal(l.store_codes(&c, &b1, &[code.new_code()], now).await),
        Refusal::BatchClosed
    );
    let b2 = l.begin_batch(&c.spec.id, &bid("b2"), 1, now).await.unwrap();
    l.void_batch(&c.spec.id, &b2.id, now).await.unwrap();
    assert_eq!(
        refusal(l.store_codes(&c, &b2, &[code.new_code()], now).await),
        Refusal::BatchClosed
    );
    let b3 = l.begin_batch(&c.spec.id, &bid("b3"), 1, now).await.unwrap();
    l.finish_batch(&c.spec.id, &b3.id, false, now)
        .await
        .unwrap();
    assert_eq!(
        refusal(l.store_codes(&c, &b3, &[code.new_code()], now).await),
        Refusal::BatchClosed
    );
    // An ISSUING batch idle past the stall timeout reads INCOMPLETE and
    // takes no more codes.
    let b4 = l.begin_batch(&c.spec.id, &bid("b4"), 2, now).await.unwrap();
    l.store_codes(&c, &b4, &[code.new_code()], ms(now, 30_000))
        .await
        .unwrap();
    let other = TestCode::new(c.series, "y");
    assert_eq!(
        refusal(
            l.store_codes(&c, &b4, &[other.new_code()], ms(now, 60_001))
                .await
        ),
        Refusal::BatchClosed
    );
    assert_eq!(
        l.get_batch(&c.spec.id, &b4.id, ms(now, 60_001))
            .await
            .unwrap()
            .map(|b| (b.state, b.issued)),
        Some((BatchState::Incomplete, 1))
    );
    assert_eq!(
        refusal(l.verify(other.code, other.key, now).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(l.counts(&c.spec.id, now).await.unwrap().issued, 1);
    let code = other;
    // Nothing was stored by any refused call.
    assert_eq!(
        refusal(l.verify(code.code, code.key, now).await),
        Refusal::LoginKeyMismatch
    );
}

async fn batches_finish_and_stalled_issuing_reads_incomplete(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let c = l
        .create_campaign(&spec("stall", dl), None, now)
        .await
        .unwrap();
    let id = &c.spec.id;
    assert_eq!(l.get_batch(id, &bid("none"), now).await.unwrap(), None);
    assert_eq!(
        l.get_batch(&cid("nope"), &bid("b1"), now).await.unwrap(),
        None
    );
    let b1 = l.begin_batch(id, &bid("b1"), 2, now).await.unwrap();
    assert_eq!(
        l.get_batch(id, &b1.id, now).await.unwrap(),
        Some(b1.clone())
    );
    let code = TestCode::new(c.series, "stall-1");
    let t1 = ms(now, 20_000);
    l.store_codes(&c, &b1, &[code.new_code()], t1)
        .await
        .unwrap();
    // Storing is activity: 20 s after the store it is still ISSUING.
    let got = l
        .get_batch(id, &b1.id, ms(t1, 20_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.state, got.issued), (BatchState::Issuing, 1));
    let got = l
        .get_batch(id, &b1.id, ms(t1, 31_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.state, got.issued), (BatchState::Incomplete, 1));
    // Finished batches keep their state however long they sit.
    let b2 = l.begin_batch(id, &bid("b2"), 0, now).await.unwrap();
    let fin = l.finish_batch(id, &b2.id, true, ms(now, 1)).await.unwrap();
    assert_eq!((fin.state, fin.ordinal), (BatchState::Complete, 2));
    let got = l
        .get_batch(id, &b2.id, ms(now, 3_600_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.state, BatchState::Complete);
    let b3 = l.begin_batch(id, &bid("b3"), 9, now).await.unwrap();
    let fin = l.finish_batch(id, &b3.id, false, ms(now, 1)).await.unwrap();
    assert_eq!(fin.state, BatchState::Incomplete);
    assert_eq!(
        l.get_batch(id, &b3.id, ms(now, 2))
            .await
            .unwrap()
            .map(|b| b.state),
        Some(BatchState::Incomplete)
    );
}

async fn void_batch_voids_unredeemed_codes_and_is_idempotent(l: &dyn Ledger) {
    let w = world(l, "void", 5).await;
    let id = &w.campaign.spec.id;
    let [a, b, p, f, q] = [w.codes[0], w.codes[1], w.codes[2], w.codes[3], w.codes[4]];
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let xb = claimed(
        l.claim(&claim_req(&b, "gift-code", "rb", "h", until), now)
            .await,
    );
    l.complete(&xb.id, Some(b"sealed".to_vec()), now)
        .await
        .unwrap();
    let xp = claimed(
        l.claim(&claim_req(&p, "book-card", "rp", "h", until), now)
            .await,
    );
    let xf = claimed(
        l.claim(&claim_req(&f, "donation", "rf", "h", until), now)
            .await,
    );
    let v = l.void_batch(id, &w.batch.id, ms(now, 1)).await.unwrap();
    assert_eq!(v.state, BatchState::Void);
    let again = l.void_batch(id, &w.batch.id, ms(now, 2)).await.unwrap();
    assert_eq!(again.state, BatchState::Void);
    assert_eq!(
        l.get_batch(id, &w.batch.id, ms(now, 3))
            .await
            .unwrap()
            .map(|b| b.state),
        Some(BatchState::Void)
    );
    let t = ms(now, 10);
    assert_eq!(
        l.verify(a.code, a.key, t).await.unwrap().state,
        CodeState::Void
    );
    assert_eq!(
        l.verify(b.code, b.key, t).await.unwrap().state,
        CodeState::Redeemed
    );
    assert_eq!(
        l.verify(p.code, p.key, t).await.unwrap().state,
        CodeState::Pending
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&a, "gift-code", "ra", "h", until), t)
                .await
        ),
        Refusal::Void
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&q, "gift-code", "rq", "h", until), t)
                .await
        ),
        Refusal::Void
    );
    assert_eq!(
        l.counts(id, t).await.unwrap(),
        counts(5, 0, 2, 1, 0, 2, [(1, 0), (0, 1), (0, 1)])
    );
    // A PENDING code of a voided batch may still finish...
    let done = l.complete(&xp.id, None, ms(t, 1)).await.unwrap();
    assert_eq!(done.state, ExchangeState::Succeeded);
    assert_eq!(
        l.verify(p.code, p.key, ms(t, 2)).await.unwrap().state,
        CodeState::Redeemed
    );
    // ...and one the provider refused reads VOID, not ACTIVE.
    let rel = l.release(&xf.id, "refused", false, ms(t, 1)).await.unwrap();
    assert_eq!(rel.state, ExchangeState::Failed);
    assert_eq!(
        l.verify(f.code, f.key, ms(t, 2)).await.unwrap().state,
        CodeState::Void
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&f, "gift-code", "rf2", "h", until), ms(t, 3))
                .await
        ),
        Refusal::Void
    );
    assert_eq!(
        l.counts(id, ms(t, 3)).await.unwrap(),
        counts(5, 0, 0, 2, 0, 3, [(1, 0), (1, 0), (0, 0)])
    );
    // Past the deadline a voided code still reads VOID, and the sweep
    // leaves it alone.
    let late = ms(w.deadline, 1);
    assert_eq!(
        l.verify(a.code, a.key, late).await.unwrap().state,
        CodeState::Void
    );
    assert_eq!(l.sweep(id, late).await.unwrap().expired, 0);
    assert_eq!(
        l.counts(id, late).await.unwrap(),
        counts(5, 0, 0, 2, 0, 3, [(1, 0), (1, 0), (0, 0)])
    );
}

async fn void_after_sweep_reads_void(l: &dyn Ledger) {
    let w = world(l, "void-swept", 2).await;
    let id = &w.campaign.spec.id;
    let late = ms(w.deadline, 1);
    assert_eq!(l.sweep(id, late).await.unwrap().expired, 2);
    l.void_batch(id, &w.batch.id, ms(late, 1)).await.unwrap();
    let c = w.codes[0];
    assert_eq!(
        l.verify(c.code, c.key, ms(late, 2)).await.unwrap().state,
        CodeState::Void
    );
    assert_eq!(
        l.counts(id, ms(late, 2)).await.unwrap(),
        counts(2, 0, 0, 0, 0, 2, [(0, 0); 3])
    );
}

// ------------------------------------------------------- verify and lockout

async fn unknown_code_and_wrong_key_get_the_same_refusal(l: &dyn Ledger) {
    let w = world(l, "verify", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 1);
    let unknown = TestCode::new(w.campaign.series, "never-stored");
    let other_series = TestCode::new(Series::from_index(900).unwrap(), "verify-0");
    assert_eq!(
        refusal(l.verify(c.code, c.wrong, now).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.verify(unknown.code, unknown.key, now).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.verify(other_series.code, other_series.key, now).await),
        Refusal::LoginKeyMismatch
    );
    // A login key of another code does not open this one.
    let mut crossed = c;
    crossed.key = unknown.key;
    assert_eq!(
        refusal(l.verify(crossed.code, crossed.key, now).await),
        Refusal::LoginKeyMismatch
    );
    let v = l.verify(c.code, c.key, now).await.unwrap();
    assert_eq!((v.state, v.latest_exchange), (CodeState::Active, None));
}

/// Sends THRESHOLD + 1 wrong keys for `tc` by `how` (0 verify, 1 claim,
/// 2 latest_exchange), the first THRESHOLD - 1 at `at`, `at` + 1, ...;
/// returns the answers.
async fn wrong_keys(l: &dyn Ledger, tc: &TestCode, how: u8, at: Timestamp) -> Vec<Refusal> {
    let mut out = Vec::new();
    for i in 0..=THRESHOLD {
        let now = ms(at, i64::from(i));
        let r = match how {
            0 => refusal(l.verify(tc.code, tc.wrong, now).await),
            1 => {
                let mut req = claim_req(tc, "gift-code", "r", "h", ms(now, 30_000));
                req.login_key = tc.wrong;
                refusal(l.claim(&req, now).await)
            }
            _ => refusal(l.latest_exchange(tc.code, tc.wrong, now).await),
        };
        out.push(r);
    }
    out
}

/// Item 9 of issue 12: a code that does not exist (of a campaign's series,
/// or of a series no campaign holds) answers wrong keys exactly as a real
/// code does: LOGIN_KEY_MISMATCH, then LOCKED at the threshold, locked for
/// the lockout duration, then counting from zero again.
async fn unknown_code_locks_exactly_like_a_real_one(l: &dyn Ledger) {
    let w = world(l, "unknown-lock", 3).await;
    let series = w.campaign.series;
    let other = Series::from_index(900).unwrap();
    for (how, start) in [(0u8, 1000), (1, 2000), (2, 3000)] {
        let at = ms(w.start, start);
        let until = ms(at, i64::from(THRESHOLD) - 1).plus(LOCKOUT);
        let mut want = vec![Refusal::LoginKeyMismatch; THRESHOLD as usize - 1];
        want.extend([Refusal::Locked { until }, Refusal::Locked { until }]);
        let real = w.codes[usize::from(how)];
        let unknown = TestCode::new(series, &format!("never-stored-{how}"));
        let no_campaign = TestCode::new(other, &format!("no-campaign-{how}"));
        for tc in [real, unknown, no_campaign] {
            assert_eq!(wrong_keys(l, &tc, how, at).await, want, "{how} {tc:?}");
            // Locked until `until`, even with the code's own key ...
            assert_eq!(
                refusal(l.verify(tc.code, tc.key, ms(until, -1)).await),
                Refusal::Locked { until },
                "{how} {tc:?}"
            );
            // ... then counting from zero again.
            assert_eq!(
                refusal(l.verify(tc.code, tc.wrong, until).await),
                Refusal::LoginKeyMismatch,
                "{how} {tc:?}"
            );
        }
        assert_eq!(
            l.verify(real.code, real.key, until).await.unwrap().state,
            CodeState::Active
        );
    }
}

/// Lockout entries expire: wrong keys further apart than the lockout
/// duration never add up to a lock, for a real code or one that does not
/// exist.
async fn lockout_entries_expire(l: &dyn Ledger) {
    let w = world(l, "lock-expiry", 1).await;
    let real = w.codes[0];
    let unknown = TestCode::new(w.campaign.series, "never-stored");
    for tc in [real, unknown] {
        let mut now = ms(w.start, 1000);
        for _ in 0..THRESHOLD * 2 {
            assert_eq!(
                refusal(l.verify(tc.code, tc.wrong, now).await),
                Refusal::LoginKeyMismatch
            );
            now = now.plus(LOCKOUT);
        }
        // Within the duration they do.
        for _ in 1..THRESHOLD {
            assert_eq!(
                refusal(l.verify(tc.code, tc.wrong, now).await),
                Refusal::LoginKeyMismatch
            );
            now = ms(now, 1);
        }
        assert_eq!(
            refusal(l.verify(tc.code, tc.wrong, now).await),
            Refusal::Locked {
                until: now.plus(LOCKOUT)
            }
        );
    }
}

async fn lockout_after_threshold_wrong_keys(l: &dyn Ledger) {
    let w = world(l, "lockout", 2).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    for i in 0..THRESHOLD - 1 {
        assert_eq!(
            refusal(l.verify(c.code, c.wrong, ms(now, i64::from(i))).await),
            Refusal::LoginKeyMismatch
        );
    }
    let lock_at = ms(now, 100);
    let until = lock_at.plus(LOCKOUT);
    // The threshold-th wrong key locks the code.
    assert_eq!(
        refusal(l.verify(c.code, c.wrong, lock_at).await),
        Refusal::Locked { until }
    );
    // While locked even the right key is refused, by every method, and the
    // lock is not extended.
    let during = ms(until, -1);
    assert_eq!(
        refusal(l.verify(c.code, c.key, during).await),
        Refusal::Locked { until }
    );
    assert_eq!(
        refusal(l.verify(c.code, c.wrong, during).await),
        Refusal::Locked { until }
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&c, "gift-code", "r", "h", until), during)
                .await
        ),
        Refusal::Locked { until }
    );
    assert_eq!(
        refusal(l.latest_exchange(c.code, c.key, during).await),
        Refusal::Locked { until }
    );
    // The other code is not affected.
    let o = w.codes[1];
    assert_eq!(
        l.verify(o.code, o.key, during).await.unwrap().state,
        CodeState::Active
    );
    // At `until` the lock is over and the counter starts from zero.
    assert_eq!(
        l.verify(c.code, c.key, until).await.unwrap().state,
        CodeState::Active
    );
    for i in 0..THRESHOLD - 1 {
        assert_eq!(
            refusal(l.verify(c.code, c.wrong, ms(until, 1 + i64::from(i))).await),
            Refusal::LoginKeyMismatch
        );
    }
    // A right key resets the count: THRESHOLD-1 more wrong keys do not lock.
    let t = ms(until, 100);
    assert_eq!(
        l.verify(c.code, c.key, t).await.unwrap().state,
        CodeState::Active
    );
    for i in 0..THRESHOLD - 1 {
        assert_eq!(
            refusal(l.verify(c.code, c.wrong, ms(t, 1 + i64::from(i))).await),
            Refusal::LoginKeyMismatch
        );
    }
    // Wrong keys count through claim too, and the right one works.
    let t2 = ms(t, 100);
    let x = claimed(
        l.claim(&claim_req(&c, "gift-code", "r", "h", ms(t2, 30_000)), t2)
            .await,
    );
    assert_eq!(x.state, ExchangeState::Pending);
    let mut bad = claim_req(&c, "gift-code", "r2", "h", ms(t2, 30_000));
    bad.login_key = c.wrong;
    for i in 0..THRESHOLD - 1 {
        assert_eq!(
            refusal(l.claim(&bad, ms(t2, 1 + i64::from(i))).await),
            Refusal::LoginKeyMismatch
        );
    }
    let t3 = ms(t2, 50);
    assert_eq!(
        refusal(l.latest_exchange(c.code, c.wrong, t3).await),
        Refusal::Locked {
            until: t3.plus(LOCKOUT)
        }
    );
}

// ------------------------------------------------------------------- claim

async fn claim_opens_a_pending_exchange(l: &dyn Ledger) {
    let w = world(l, "claim", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 5000);
    let mut req = claim_req(&c, "book-card", "req-1", "worker-a", ms(now, 30_000));
    req.contact = Some(d("a@example.org"));
    req.preferences = Preferences {
        delete_personal_data: true,
        stop_mail: false,
    };
    let x = claimed(l.claim(&req, now).await);
    assert_eq!(x.state, ExchangeState::Pending);
    assert_eq!(x.series, w.campaign.series);
    assert_eq!(x.option, opt("book-card"));
    assert_eq!((x.create_time, x.update_time), (now, now));
    assert_eq!(x.attempts, 1);
    assert!(!x.parked);
    assert_eq!(x.sealed_deliverable, None);
    assert_eq!(x.failure_reason, "");
    assert_eq!(x.contact, Some(d("a@example.org")));
    assert_eq!(x.preferences, req.preferences);
    assert_eq!((x.batch_ordinal, x.serial), (w.batch.ordinal, 1));
    assert!(!x.id.0.is_empty());
    let got = l
        .get_exchange(&x.id)
        .await
        .unwrap()
        .expect("exchange by id");
    assert_eq!(got, x);
    assert_eq!(got.id.provider_key(), x.id.provider_key());
    let v = l.verify(c.code, c.key, ms(now, 1)).await.unwrap();
    assert_eq!(v.state, CodeState::Pending);
    assert_eq!(v.latest_exchange, Some(x.clone()));
    assert_eq!(
        l.latest_exchange(c.code, c.key, ms(now, 1)).await.unwrap(),
        x
    );
    assert_eq!(
        l.get_exchange(&ExchangeId("no-such-exchange".into()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        l.counts(&w.campaign.spec.id, ms(now, 1)).await.unwrap(),
        counts(1, 0, 1, 0, 0, 0, [(0, 0), (0, 1), (0, 0)])
    );
}

async fn claim_refusals(l: &dyn Ledger) {
    let w = world(l, "claim-refusals", 6).await;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let [a, b, c, e, f, g] = [
        w.codes[0], w.codes[1], w.codes[2], w.codes[3], w.codes[4], w.codes[5],
    ];
    // LoginKeyMismatch.
    let mut wrong = claim_req(&a, "gift-code", "r", "h", until);
    wrong.login_key = a.wrong;
    assert_eq!(
        refusal(l.claim(&wrong, now).await),
        Refusal::LoginKeyMismatch
    );
    // Locked.
    for i in 0..THRESHOLD - 1 {
        assert_eq!(
            refusal(l.verify(g.code, g.wrong, ms(now, i64::from(i))).await),
            Refusal::LoginKeyMismatch
        );
    }
    let _ = l.verify(g.code, g.wrong, now).await;
    assert_eq!(
        refusal(
            l.claim(&claim_req(&g, "gift-code", "r", "h", until), ms(now, 1))
                .await
        ),
        Refusal::Locked {
            until: now.plus(LOCKOUT)
        }
    );
    // InFlight: another request while PENDING.
    let x = claimed(
        l.claim(&claim_req(&a, "gift-code", "r1", "h", until), now)
            .await,
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&a, "gift-code", "r2", "h", until), ms(now, 1))
                .await
        ),
        Refusal::InFlight
    );
    // RequestIdReused: same request id, another option.
    assert_eq!(
        refusal(
            l.claim(&claim_req(&a, "donation", "r1", "h", until), ms(now, 1))
                .await
        ),
        Refusal::RequestIdReused
    );
    // AlreadyRedeemed.
    l.complete(&x.id, None, ms(now, 2)).await.unwrap();
    assert_eq!(
        refusal(
            l.claim(&claim_req(&a, "gift-code", "r3", "h", until), ms(now, 3))
                .await
        ),
        Refusal::AlreadyRedeemed
    );
    // Still AlreadyRedeemed past the deadline (the code is not EXPIRED).
    assert_eq!(
        refusal(
            l.claim(
                &claim_req(&a, "gift-code", "r4", "h", until),
                ms(w.deadline, 1)
            )
            .await
        ),
        Refusal::AlreadyRedeemed
    );
    // Expired.
    assert_eq!(
        refusal(
            l.claim(&claim_req(&b, "gift-code", "r", "h", until), w.deadline)
                .await
        ),
        Refusal::Expired
    );
    // Void (in a second batch, voided).
    let b2 = l
        .begin_batch(&w.campaign.spec.id, &bid("b2"), 1, now)
        .await
        .unwrap();
    let v = TestCode::new(w.campaign.series, "claim-refusals-void");
    l.store_codes(&w.campaign, &b2, &[v.new_code()], now)
        .await
        .unwrap();
    l.void_batch(&w.campaign.spec.id, &b2.id, now)
        .await
        .unwrap();
    assert_eq!(
        refusal(
            l.claim(&claim_req(&v, "gift-code", "r", "h", until), ms(now, 1))
                .await
        ),
        Refusal::Void
    );
    // Void wins over the deadline.
    assert_eq!(
        refusal(
            l.claim(
                &claim_req(&v, "gift-code", "r", "h", until),
                ms(w.deadline, 1)
            )
            .await
        ),
        Refusal::Void
    );
    // InFlight holds past the deadline: the PENDING exchange may still finish.
    claimed(
        l.claim(&claim_req(&c, "gift-code", "r1", "h", until), now)
            .await,
    );
    assert_eq!(
        refusal(
            l.claim(
                &claim_req(&c, "gift-code", "r2", "h", until),
                ms(w.deadline, 1)
            )
            .await
        ),
        Refusal::InFlight
    );
    // None of the refusals changed anything.
    assert_eq!(
        l.verify(e.code, e.key, ms(now, 5)).await.unwrap().state,
        CodeState::Active
    );
    assert_eq!(
        l.verify(f.code, f.key, ms(now, 5)).await.unwrap().state,
        CodeState::Active
    );
    assert_eq!(
        l.verify(b.code, b.key, ms(now, 5)).await.unwrap().state,
        CodeState::Active
    );
}

async fn claim_is_idempotent_for_same_request_id(l: &dyn Ledger) {
    let w = world(l, "idem", 2).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    let req = claim_req(&c, "gift-code", "req-1", "h1", ms(now, 30_000));
    let x = claimed(l.claim(&req, now).await);
    // Same request: the same exchange, nothing new.
    let again = existing(l.claim(&req, ms(now, 10)).await);
    assert_eq!(again, x);
    // Even from another worker with another lease.
    let mut other_worker = req.clone();
    other_worker.lease = Lease {
        holder: "h2".into(),
        until: ms(now, 99_000),
    };
    assert_eq!(existing(l.claim(&other_worker, ms(now, 11)).await).id, x.id);
    // Same request id with other parameters.
    let other = claim_req(&c, "donation", "req-1", "h1", ms(now, 30_000));
    assert_eq!(
        refusal(l.claim(&other, ms(now, 20)).await),
        Refusal::RequestIdReused
    );
    let mut other_fp = req.clone();
    other_fp.fingerprint = d("something else");
    assert_eq!(
        refusal(l.claim(&other_fp, ms(now, 20)).await),
        Refusal::RequestIdReused
    );
    // After completion the retry sees the exchange as it is now.
    let done = l
        .complete(&x.id, Some(b"sealed".to_vec()), ms(now, 30))
        .await
        .unwrap();
    assert_eq!(done.state, ExchangeState::Succeeded);
    let again = existing(l.claim(&req, ms(now, 40)).await);
    assert_eq!(again, done);
    assert_eq!(again.sealed_deliverable, Some(b"sealed".to_vec()));
    // And after the deadline too (idempotency comes before the deadline).
    assert_eq!(existing(l.claim(&req, ms(w.deadline, 1)).await), done);
    assert_eq!(
        refusal(l.claim(&other, ms(w.deadline, 1)).await),
        Refusal::RequestIdReused
    );
    // The same request id on another code is another request.
    let c2 = w.codes[1];
    let mut req2 = claim_req(&c2, "gift-code", "req-1", "h1", ms(now, 30_000));
    req2.request = req.request;
    let x2 = claimed(l.claim(&req2, ms(now, 50)).await);
    assert_ne!(x2.id, x.id);
    assert_eq!(
        l.counts(&w.campaign.spec.id, ms(now, 60)).await.unwrap(),
        counts(2, 0, 1, 1, 0, 0, [(1, 1), (0, 0), (0, 0)])
    );
}

async fn deadline_is_exclusive_to_the_millisecond(l: &dyn Ledger) {
    let w = world(l, "deadline", 4).await;
    let id = &w.campaign.spec.id;
    let dl = w.deadline;
    let [a, b, c, e] = [w.codes[0], w.codes[1], w.codes[2], w.codes[3]];
    let until = ms(dl, 30_000);
    assert_eq!(
        l.verify(a.code, a.key, ms(dl, -1)).await.unwrap().state,
        CodeState::Active
    );
    assert_eq!(
        l.verify(a.code, a.key, dl).await.unwrap().state,
        CodeState::Expired
    );
    let x = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", until), ms(dl, -1))
            .await,
    );
    assert_eq!(x.create_time, ms(dl, -1));
    assert_eq!(
        refusal(
            l.claim(&claim_req(&b, "gift-code", "r", "h", until), dl)
                .await
        ),
        Refusal::Expired
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&c, "gift-code", "r", "h", until), ms(dl, 1))
                .await
        ),
        Refusal::Expired
    );
    assert_eq!(
        l.counts(id, ms(dl, 1)).await.unwrap(),
        counts(4, 0, 1, 0, 3, 0, [(0, 1), (0, 0), (0, 0)])
    );
    assert_eq!(
        l.counts(id, ms(dl, -1)).await.unwrap(),
        counts(4, 3, 1, 0, 0, 0, [(0, 1), (0, 0), (0, 0)])
    );
    // The claim begun before the deadline finishes after it.
    assert_eq!(
        l.verify(a.code, a.key, ms(dl, 1)).await.unwrap().state,
        CodeState::Pending
    );
    let done = l.complete(&x.id, None, ms(dl, 60_000)).await.unwrap();
    assert_eq!(done.state, ExchangeState::Succeeded);
    // After an extension the same instant claims.
    let ext = l
        .extend_campaign(id, ms(dl, 3_600_000), false, ms(dl, 2))
        .await
        .unwrap();
    assert_eq!(ext.spec.expire_time, ms(dl, 3_600_000));
    assert_eq!(
        l.verify(c.code, c.key, ms(dl, 2)).await.unwrap().state,
        CodeState::Active
    );
    let xc = claimed(
        l.claim(&claim_req(&c, "gift-code", "r2", "h", until), ms(dl, 2))
            .await,
    );
    assert_eq!(xc.state, ExchangeState::Pending);
    assert_eq!(
        refusal(
            l.claim(
                &claim_req(&e, "gift-code", "r", "h", until),
                ms(dl, 3_600_000)
            )
            .await
        ),
        Refusal::Expired
    );
}

async fn released_exchange_frees_the_code_for_a_new_request(l: &dyn Ledger) {
    let w = world(l, "release", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let r1 = claim_req(&c, "gift-code", "r1", "h", until);
    let x1 = claimed(l.claim(&r1, now).await);
    let failed = l
        .release(&x1.id, "out of stock", false, ms(now, 1))
        .await
        .unwrap();
    assert_eq!(failed.state, ExchangeState::Failed);
    assert_eq!(failed.failure_reason, "out of stock");
    assert_eq!(failed.update_time, ms(now, 1));
    assert_eq!(
        l.verify(c.code, c.key, ms(now, 2)).await.unwrap().state,
        CodeState::Active
    );
    // Releasing again returns it unchanged.
    assert_eq!(
        l.release(&x1.id, "again", false, ms(now, 3)).await.unwrap(),
        failed
    );
    // The same request sees its FAILED exchange.
    assert_eq!(existing(l.claim(&r1, ms(now, 4)).await), failed);
    // A new request opens a new exchange, which is now the latest.
    let x2 = claimed(
        l.claim(&claim_req(&c, "donation", "r2", "h", until), ms(now, 5))
            .await,
    );
    assert_ne!(x2.id, x1.id);
    assert_eq!(
        l.latest_exchange(c.code, c.key, ms(now, 6)).await.unwrap(),
        x2
    );
    let v = l.verify(c.code, c.key, ms(now, 6)).await.unwrap();
    assert_eq!(v.latest_exchange.map(|x| x.id), Some(x2.id.clone()));
    assert_eq!(l.get_exchange(&x1.id).await.unwrap(), Some(failed.clone()));
    assert_eq!(
        l.counts(&w.campaign.spec.id, ms(now, 6)).await.unwrap(),
        counts(1, 0, 1, 0, 0, 0, [(0, 0), (0, 0), (0, 1)])
    );
    // A release after the deadline leaves the code EXPIRED.
    let late = ms(w.deadline, 5);
    l.release(&x2.id, "refused", false, late).await.unwrap();
    assert_eq!(
        l.verify(c.code, c.key, late).await.unwrap().state,
        CodeState::Expired
    );
    assert_eq!(
        l.counts(&w.campaign.spec.id, late).await.unwrap(),
        counts(1, 0, 0, 0, 1, 0, [(0, 0); 3])
    );
}

async fn refused_exchanges_of_a_code_are_capped(l: &dyn Ledger) {
    let w = world(l, "cap", 2).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let max = i64::from(MAX_FAILED_EXCHANGES);
    let mut first = None;
    for i in 0..max {
        let r = claim_req(&c, OPTIONS[(i % 3) as usize], &format!("r{i}"), "h", until);
        let x = claimed(l.claim(&r, ms(now, 2 * i)).await);
        // Retryable and permanent refusals both count.
        let f = l
            .release(&x.id, "refused", i % 2 == 1, ms(now, 2 * i + 1))
            .await
            .unwrap();
        first.get_or_insert(f);
    }
    let first = first.unwrap();
    let at = ms(now, 2 * max);
    // A new request would start one more: refused, and nothing changes.
    let fresh = claim_req(&c, "gift-code", "one-too-many", "h", until);
    assert_eq!(refusal(l.claim(&fresh, at).await), Refusal::TooManyAttempts);
    // So would a request whose exchange failed retryably (it claims again).
    let retry = claim_req(&c, OPTIONS[1], "r1", "h", until);
    assert_eq!(refusal(l.claim(&retry, at).await), Refusal::TooManyAttempts);
    // A repeated request still gets its exchange back, and a reused id is
    // still told so.
    let r0 = claim_req(&c, OPTIONS[0], "r0", "h", until);
    assert_eq!(existing(l.claim(&r0, at).await), first);
    assert_eq!(
        refusal(
            l.claim(&claim_req(&c, OPTIONS[2], "r0", "h", until), at)
                .await
        ),
        Refusal::RequestIdReused
    );
    let v = l.verify(c.code, c.key, at).await.unwrap();
    assert_eq!(v.state, CodeState::Active);
    assert_eq!(
        v.latest_exchange.map(|x| x.state),
        Some(ExchangeState::Failed)
    );
    // The state refusals come first: past the deadline it reads EXPIRED.
    assert_eq!(refusal(l.claim(&fresh, w.deadline).await), Refusal::Expired);
    // Other codes are not affected.
    let other = claimed(
        l.claim(
            &claim_req(&w.codes[1], "gift-code", "one-too-many", "h", until),
            at,
        )
        .await,
    );
    assert_eq!(other.state, ExchangeState::Pending);
    assert_eq!(
        l.counts(&w.campaign.spec.id, at).await.unwrap(),
        counts(2, 1, 1, 0, 0, 0, [(0, 1), (0, 0), (0, 0)])
    );
    // One below the cap, a code still takes a new exchange, which may
    // succeed; once redeemed it answers ALREADY_REDEEMED, not the cap.
    let w2 = world(l, "cap-below", 1).await;
    let b = w2.codes[0];
    for i in 0..max - 1 {
        let r = claim_req(&b, "gift-code", &format!("r{i}"), "h", until);
        let x = claimed(l.claim(&r, ms(now, 2 * i)).await);
        l.release(&x.id, "refused", false, ms(now, 2 * i + 1))
            .await
            .unwrap();
    }
    let last = claimed(
        l.claim(&claim_req(&b, "donation", "last", "h", until), at)
            .await,
    );
    l.complete(&last.id, None, ms(at, 1)).await.unwrap();
    assert_eq!(
        refusal(l.claim(&fresh_for(&b, until), ms(at, 2)).await),
        Refusal::AlreadyRedeemed
    );
}

fn fresh_for(c: &TestCode, until: Timestamp) -> ClaimRequest {
    claim_req(c, "gift-code", "never-seen", "h", until)
}

async fn a_retryable_release_frees_the_code_and_its_request(l: &dyn Ledger) {
    let w = world(l, "retryable", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let r1 = claim_req(&c, "gift-code", "r1", "h", until);
    let x1 = claimed(l.claim(&r1, now).await);
    let f1 = l
        .release(&x1.id, "STOCK_EXHAUSTED", true, ms(now, 1))
        .await
        .unwrap();
    assert_eq!(f1.state, ExchangeState::Failed);
    assert_eq!(f1.failure_reason, "STOCK_EXHAUSTED");
    // Releasing again changes nothing (not even the retryable mark: a
    // permanent release of it now is a no-op too).
    assert_eq!(
        l.release(&x1.id, "other", false, ms(now, 2)).await.unwrap(),
        f1
    );
    let v = l.verify(c.code, c.key, ms(now, 2)).await.unwrap();
    assert_eq!(v.state, CodeState::Active);
    assert_eq!(v.latest_exchange, Some(f1.clone()));
    // The same request claims the code again, as a new exchange.
    let x1b = claimed(l.claim(&r1, ms(now, 3)).await);
    assert_ne!(x1b.id, x1.id);
    assert_eq!(x1b.create_time, ms(now, 3));
    assert_eq!(l.get_exchange(&x1.id).await.unwrap(), Some(f1.clone()));
    // From now on the request is that new exchange.
    assert_eq!(existing(l.claim(&r1, ms(now, 4)).await), x1b);
    // Its other parameters are still checked.
    assert_eq!(
        refusal(
            l.claim(&claim_req(&c, "donation", "r1", "h", until), ms(now, 4))
                .await
        ),
        Refusal::RequestIdReused
    );
    // Refused for good this time: the request answers that from now on.
    let f1b = l
        .release(&x1b.id, "OPTION_DISCONTINUED", false, ms(now, 5))
        .await
        .unwrap();
    assert_eq!(existing(l.claim(&r1, ms(now, 6)).await), f1b);
    // Another request failing retryably, then the holder picks another
    // option, which succeeds: the retried request meets a redeemed code.
    let r2 = claim_req(&c, "book-card", "r2", "h", until);
    let x2 = claimed(l.claim(&r2, ms(now, 7)).await);
    l.release(&x2.id, "STOCK_EXHAUSTED", true, ms(now, 8))
        .await
        .unwrap();
    let x3 = claimed(
        l.claim(&claim_req(&c, "donation", "r3", "h", until), ms(now, 9))
            .await,
    );
    let done = l.complete(&x3.id, None, ms(now, 10)).await.unwrap();
    assert_eq!(
        refusal(l.claim(&r2, ms(now, 11)).await),
        Refusal::AlreadyRedeemed
    );
    assert_eq!(
        refusal(
            l.claim(&claim_req(&c, "gift-code", "r2", "h", until), ms(now, 11))
                .await
        ),
        Refusal::RequestIdReused
    );
    assert_eq!(
        l.latest_exchange(c.code, c.key, ms(now, 12)).await.unwrap(),
        done
    );
    assert_eq!(
        l.counts(&w.campaign.spec.id, ms(now, 12)).await.unwrap(),
        counts(1, 0, 0, 1, 0, 0, [(0, 0), (0, 0), (1, 0)])
    );
}

async fn complete_and_release_refusals(l: &dyn Ledger) {
    let w = world(l, "finish", 2).await;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let ghost = ExchangeId("no-such-exchange".into());
    assert_eq!(
        refusal(l.complete(&ghost, None, now).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(l.release(&ghost, "x", false, now).await),
        Refusal::ExchangeNotFound
    );
    let lease = Lease {
        holder: "h".into(),
        until,
    };
    assert_eq!(
        refusal(l.begin_attempt(&ghost, &lease, now).await),
        Refusal::ExchangeNotFound
    );
    let [a, b] = [w.codes[0], w.codes[1]];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", until), now)
            .await,
    );
    let xb = claimed(
        l.claim(&claim_req(&b, "gift-code", "r", "h", until), now)
            .await,
    );
    let done = l
        .complete(&xa.id, Some(vec![1, 2, 3]), ms(now, 1))
        .await
        .unwrap();
    assert_eq!(done.state, ExchangeState::Succeeded);
    assert_eq!(done.sealed_deliverable, Some(vec![1, 2, 3]));
    assert_eq!(done.update_time, ms(now, 1));
    // Completing again: unchanged (not even the deliverable or the time).
    assert_eq!(
        l.complete(&xa.id, Some(vec![9]), ms(now, 2)).await.unwrap(),
        done
    );
    assert_eq!(
        refusal(l.release(&xa.id, "late", false, ms(now, 2)).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(l.get_exchange(&xa.id).await.unwrap(), Some(done.clone()));
    let failed = l.release(&xb.id, "no", false, ms(now, 1)).await.unwrap();
    assert_eq!(
        refusal(l.complete(&xb.id, None, ms(now, 2)).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(l.get_exchange(&xb.id).await.unwrap(), Some(failed));
    assert_eq!(
        refusal(l.begin_attempt(&xa.id, &lease, ms(now, 3)).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(
        refusal(l.begin_attempt(&xb.id, &lease, ms(now, 3)).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(
        l.verify(a.code, a.key, ms(now, 4)).await.unwrap().state,
        CodeState::Redeemed
    );
    assert_eq!(
        l.verify(b.code, b.key, ms(now, 4)).await.unwrap().state,
        CodeState::Active
    );
}

async fn latest_exchange_refusals(l: &dyn Ledger) {
    let w = world(l, "latest", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    assert_eq!(
        refusal(l.latest_exchange(c.code, c.key, now).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(l.latest_exchange(c.code, c.wrong, now).await),
        Refusal::LoginKeyMismatch
    );
    let x = claimed(
        l.claim(&claim_req(&c, "gift-code", "r", "h", ms(now, 1)), now)
            .await,
    );
    assert_eq!(
        l.latest_exchange(c.code, c.key, ms(now, 1)).await.unwrap(),
        x
    );
    // Re-display works after the deadline.
    assert_eq!(
        l.latest_exchange(c.code, c.key, ms(w.deadline, 1))
            .await
            .unwrap(),
        x
    );
    for _ in 0..THRESHOLD - 1 {
        let _ = l.latest_exchange(c.code, c.wrong, ms(now, 2)).await;
    }
    assert_eq!(
        refusal(l.latest_exchange(c.code, c.wrong, ms(now, 3)).await),
        Refusal::Locked {
            until: ms(now, 3).plus(LOCKOUT)
        }
    );
}

async fn attempts_are_leased_counted_and_deferred(l: &dyn Ledger) {
    let w = world(l, "attempts", 1).await;
    let c = w.codes[0];
    let now = ms(w.start, 1000);
    let x = claimed(
        l.claim(&claim_req(&c, "gift-code", "r", "a", ms(now, 30_000)), now)
            .await,
    );
    let lease_b = |until| Lease {
        holder: "b".into(),
        until,
    };
    // A's lease from the claim holds until now+30s.
    assert_eq!(
        refusal(
            l.begin_attempt(&x.id, &lease_b(ms(now, 90_000)), ms(now, 29_999))
                .await
        ),
        Refusal::Leased
    );
    // The holder itself may renew it.
    let a2 = l
        .begin_attempt(
            &x.id,
            &Lease {
                holder: "a".into(),
                until: ms(now, 40_000),
            },
            ms(now, 10),
        )
        .await
        .unwrap();
    assert_eq!(a2.attempts, 2);
    assert_eq!(a2.state, ExchangeState::Pending);
    assert_eq!(
        refusal(
            l.begin_attempt(&x.id, &lease_b(ms(now, 90_000)), ms(now, 39_999))
                .await
        ),
        Refusal::Leased
    );
    // Lapsed at `until`: B takes over.
    let b3 = l
        .begin_attempt(&x.id, &lease_b(ms(now, 90_000)), ms(now, 40_000))
        .await
        .unwrap();
    assert_eq!(b3.attempts, 3);
    assert_eq!(
        refusal(
            l.begin_attempt(
                &x.id,
                &Lease {
                    holder: "a".into(),
                    until: ms(now, 99_000)
                },
                ms(now, 50_000)
            )
            .await
        ),
        Refusal::Leased
    );
    // Deferring releases the lease and records the next attempt time.
    let next = ms(now, 600_000);
    let deferred = l
        .defer_attempt(&x.id, next, false, ms(now, 50_001))
        .await
        .unwrap();
    assert_eq!(deferred.next_attempt_time, next);
    assert!(!deferred.parked);
    assert_eq!(deferred.attempts, 3);
    assert_eq!(deferred.state, ExchangeState::Pending);
    let a4 = l
        .begin_attempt(
            &x.id,
            &Lease {
                holder: "a".into(),
                until: ms(now, 200_000),
            },
            ms(now, 50_002),
        )
        .await
        .unwrap();
    assert_eq!(a4.attempts, 4);
    let parked = l
        .defer_attempt(&x.id, next, true, ms(now, 50_003))
        .await
        .unwrap();
    assert!(parked.parked);
    assert_eq!(l.get_exchange(&x.id).await.unwrap(), Some(parked.clone()));
    // Still PENDING: the code stays claimed and listed.
    assert_eq!(
        l.verify(c.code, c.key, ms(now, 50_004))
            .await
            .unwrap()
            .state,
        CodeState::Pending
    );
    let done = l.complete(&x.id, None, ms(now, 60_000)).await.unwrap();
    assert_eq!((done.state, done.attempts), (ExchangeState::Succeeded, 4));
}

async fn list_pending_pages_through_old_pending_exchanges(l: &dyn Ledger) {
    let w = world(l, "pending", 7).await;
    let base = ms(w.start, 10_000);
    let mut ids = Vec::new();
    for (i, c) in w.codes.iter().enumerate() {
        let t = ms(base, 1000 * i as i64);
        let x = claimed(
            l.claim(&claim_req(c, "gift-code", "r", "h", ms(t, 1)), t)
                .await,
        );
        ids.push(x.id);
    }
    // Finished ones are not pending.
    l.complete(&ids[1], None, ms(base, 60_000)).await.unwrap();
    l.release(&ids[2], "no", false, ms(base, 60_000))
        .await
        .unwrap();
    // Created at or before base+4s: codes 0, 3, 4 (1 and 2 are finished).
    let cutoff = ms(base, 4000);
    let want: BTreeSet<ExchangeId> = [0, 3, 4].iter().map(|&i| ids[i].clone()).collect();
    for limit in [1, 2, 3, 10] {
        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = l
                .list_pending(cutoff, cursor.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.items.len() <= limit, "page over the limit {limit}");
            for x in &page.items {
                assert_eq!(x.state, ExchangeState::Pending);
                assert!(x.create_time <= cutoff);
            }
            got.extend(page.items.into_iter().map(|x| x.id));
            pages += 1;
            assert!(pages <= 20, "paging does not end");
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        let set: BTreeSet<ExchangeId> = got.iter().cloned().collect();
        assert_eq!(
            set.len(),
            got.len(),
            "an exchange listed twice (limit {limit})"
        );
        assert_eq!(set, want, "limit {limit}");
    }
    let all = l
        .list_pending(ms(base, 3_600_000), None, 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(all.next, None);
    let none = l.list_pending(ms(base, -1), None, 100).await.unwrap();
    assert!(none.items.is_empty());
}

async fn list_pending_skips_nothing_when_listed_exchanges_finish_between_pages(l: &dyn Ledger) {
    let w = world(l, "pending-moving", 12).await;
    let base = ms(w.start, 10_000);
    let mut want = BTreeSet::new();
    for (i, c) in w.codes.iter().enumerate() {
        // Pairs share a millisecond: the cursor must order within a score.
        let t = ms(base, 1000 * (i as i64 / 2));
        let x = claimed(
            l.claim(&claim_req(c, "gift-code", "r", "h", ms(t, 1)), t)
                .await,
        );
        want.insert(x.id);
    }
    let cutoff = ms(base, 3_600_000);
    for limit in [1, 2, 5] {
        let mut got = BTreeSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = l
                .list_pending(cutoff, cursor.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.items.len() <= limit);
            // The first entry of each page finishes before the next page.
            if let Some(x) = page.items.first() {
                l.defer_attempt(&x.id, ms(base, 5000), false, ms(base, 60_000))
                    .await
                    .unwrap();
            }
            for x in page.items {
                assert!(got.insert(x.id), "an exchange listed twice (limit {limit})");
            }
            pages += 1;
            assert!(pages <= 40, "paging does not end");
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(got, want, "limit {limit}");
    }
    // Now finish listed ones between pages for real: each page's first
    // exchange completes, and nothing still pending is skipped.
    let mut got = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = l.list_pending(cutoff, cursor.as_deref(), 3).await.unwrap();
        if let Some(x) = page.items.first() {
            l.complete(&x.id, None, ms(base, 60_000)).await.unwrap();
            done.insert(x.id.clone());
        }
        got.extend(page.items.into_iter().map(|x| x.id));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(got, want);
    let left: BTreeSet<ExchangeId> = l
        .list_pending(cutoff, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, want.difference(&done).cloned().collect());
}

// ------------------------------------------------------------- preferences

fn with_prefs(mut r: ClaimRequest, delete_personal_data: bool, stop_mail: bool) -> ClaimRequest {
    r.preferences = Preferences {
        delete_personal_data,
        stop_mail,
    };
    r
}

/// Every page of `list_preferences` from the start, checking page sizes
/// and that nothing is listed twice.
async fn all_preferences(
    l: &dyn Ledger,
    campaign: &CampaignId,
    limit: usize,
) -> Vec<ExchangeRecord> {
    let mut got: Vec<ExchangeRecord> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = l
            .list_preferences(campaign, cursor.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.items.len() <= limit, "page over the limit {limit}");
        for x in page.items {
            assert!(
                got.iter().all(|y| y.id != x.id),
                "{:?} listed twice (limit {limit})",
                x.id
            );
            got.push(x);
        }
        pages += 1;
        assert!(pages <= 40, "paging does not end");
        cursor = page.next;
        if cursor.is_none() {
            return got;
        }
    }
}

async fn list_preferences_lists_each_codes_latest_exchange_with_a_preference(l: &dyn Ledger) {
    let w = world(l, "prefs", 8).await;
    let id = &w.campaign.spec.id;
    let base = ms(w.start, 10_000);
    let until = ms(base, 3_600_000);
    let c = &w.codes;
    let mut want: HashMap<ExchangeId, (usize, bool, bool)> = HashMap::new();
    // Pairs share a millisecond: the cursor must order within a time.
    let at = |i: usize| ms(base, 1000 * (i as i64 / 2));
    for (i, (del, stop)) in [(true, false), (false, false), (false, true), (true, true)]
        .into_iter()
        .enumerate()
    {
        let r = with_prefs(claim_req(&c[i], "gift-code", "r1", "h", until), del, stop);
        let x = claimed(l.claim(&r, at(i)).await);
        assert_eq!(x.preferences, r.preferences);
        if del || stop {
            want.insert(x.id, (i, del, stop));
        }
    }
    // Code 4: asked with a FAILED exchange, then exchanged again without
    // asking: the request stands.
    let r = with_prefs(claim_req(&c[4], "gift-code", "r1", "h", until), true, false);
    let x4 = claimed(l.claim(&r, at(4)).await);
    l.release(&x4.id, "refused", false, at(4)).await.unwrap();
    claimed(
        l.claim(&claim_req(&c[4], "donation", "r2", "h", until), at(5))
            .await,
    );
    want.insert(x4.id, (4, true, false));
    // Code 5: asked twice: only the latest is listed.
    let r = with_prefs(claim_req(&c[5], "gift-code", "r1", "h", until), true, false);
    let x5 = claimed(l.claim(&r, at(5)).await);
    l.release(&x5.id, "refused", false, at(5)).await.unwrap();
    let r = with_prefs(claim_req(&c[5], "donation", "r2", "h", until), false, true);
    let x5b = claimed(l.claim(&r, at(6)).await);
    want.insert(x5b.id.clone(), (5, false, true));
    // Code 6: asked, and the exchange succeeded: still listed.
    let r = with_prefs(claim_req(&c[6], "book-card", "r1", "h", until), false, true);
    let x6 = claimed(l.claim(&r, at(6)).await);
    l.complete(&x6.id, None, at(7)).await.unwrap();
    want.insert(x6.id, (6, false, true));
    // Another campaign's exchanges are not listed.
    let other = world(l, "prefs-other", 1).await;
    let r = with_prefs(
        claim_req(&other.codes[0], "gift-code", "r1", "h", until),
        true,
        true,
    );
    claimed(l.claim(&r, at(1)).await);

    for limit in [1, 2, 3, 100] {
        let got = all_preferences(l, id, limit).await;
        let ids: BTreeSet<ExchangeId> = got.iter().map(|x| x.id.clone()).collect();
        let want_ids: BTreeSet<ExchangeId> = want.keys().cloned().collect();
        assert_eq!(ids, want_ids, "limit {limit}");
        for x in &got {
            let (i, del, stop) = want[&x.id];
            assert_eq!(x.series, w.campaign.series);
            assert_eq!(
                (x.batch_ordinal, x.serial),
                (w.batch.ordinal, i as u32 + 1),
                "code {i}"
            );
            assert_eq!(
                (x.preferences.delete_personal_data, x.preferences.stop_mail),
                (del, stop),
                "code {i}"
            );
            assert_eq!(
                l.get_exchange(&x.id).await.unwrap().as_ref(),
                Some(x),
                "listed as stored"
            );
        }
    }
    // The same pages on a second walk.
    let first = l.list_preferences(id, None, 3).await.unwrap();
    assert_eq!(l.list_preferences(id, None, 3).await.unwrap(), first);
    let after = first.next.expect("more than one page");
    assert_eq!(
        l.list_preferences(id, Some(&after), 3).await.unwrap(),
        l.list_preferences(id, Some(&after), 3).await.unwrap()
    );
    let page = l
        .list_preferences(&other.campaign.spec.id, None, 100)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next, None);
    assert_eq!(
        refusal(l.list_preferences(&cid("nope"), None, 10).await),
        Refusal::CampaignNotFound
    );
}

async fn list_preferences_skips_nothing_when_exchanges_change_between_pages(l: &dyn Ledger) {
    let w = world(l, "prefs-moving", 12).await;
    let id = &w.campaign.spec.id;
    let base = ms(w.start, 10_000);
    let until = ms(base, 3_600_000);
    let mut want = BTreeSet::new();
    for (i, c) in w.codes[..8].iter().enumerate() {
        let t = ms(base, 1000 * (i as i64 / 2));
        let r = with_prefs(claim_req(c, "gift-code", "r", "h", until), true, false);
        want.insert(claimed(l.claim(&r, t).await).id);
    }
    // Between pages: each page's first exchange finishes (succeeds or
    // fails, in turn), and a new code is exchanged with a preference.
    let mut fresh = w.codes[8..].iter();
    let mut n = 0;
    let mut added = BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut seen = BTreeSet::new();
    loop {
        let page = l.list_preferences(id, cursor.as_deref(), 2).await.unwrap();
        if let Some(x) = page.items.first() {
            if n % 2 == 0 {
                l.complete(&x.id, None, ms(base, 60_000)).await.unwrap();
            } else {
                l.release(&x.id, "no", false, ms(base, 60_000))
                    .await
                    .unwrap();
            }
            n += 1;
        }
        if let Some(c) = fresh.next() {
            let r = with_prefs(claim_req(c, "donation", "r", "h", until), false, true);
            added.insert(claimed(l.claim(&r, ms(base, 30_000)).await).id);
        }
        for x in page.items {
            assert!(seen.insert(x.id), "listed twice");
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(n > 1, "more than one page");
    assert!(want.is_subset(&seen), "an exchange was skipped");
    assert!(seen.is_subset(&want.union(&added).cloned().collect()));
    // Everything, once more from the start.
    let all: BTreeSet<ExchangeId> = all_preferences(l, id, 5)
        .await
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(all, want.union(&added).cloned().collect());
}

async fn list_preferences_lists_nothing_past_retention(l: &dyn Ledger) {
    let w = world(l, "prefs-retention", 3).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let r = with_prefs(
        claim_req(&w.codes[0], "gift-code", "r", "h", until),
        true,
        true,
    );
    let x = claimed(l.claim(&r, now).await);
    l.complete(&x.id, None, now).await.unwrap();
    let r = with_prefs(
        claim_req(&w.codes[1], "donation", "r", "h", until),
        false,
        true,
    );
    claimed(l.claim(&r, now).await);
    let end = w.deadline.plus(RETENTION);
    // Still listed after the deadline (the owner exports after it).
    l.sweep(id, ms(w.deadline, 1)).await.unwrap();
    let listed = all_preferences(l, id, 10).await;
    assert_eq!(listed.len(), 2);
    l.sweep(id, ms(end, -1)).await.unwrap();
    assert_eq!(all_preferences(l, id, 10).await.len(), 2);
    // Past retention the exchanges are gone, and so is the listing.
    l.sweep(id, end).await.unwrap();
    assert_eq!(l.get_exchange(&x.id).await.unwrap(), None);
    let page = l.list_preferences(id, None, 10).await.unwrap();
    assert_eq!(
        page,
        Page {
            items: vec![],
            next: None
        }
    );
}

async fn batch_by_ordinal_finds_each_batch(l: &dyn Ledger) {
    let w = world(l, "ordinals", 2).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let b2 = l.begin_batch(id, &bid("b2"), 1, now).await.unwrap();
    let code = TestCode::new(w.campaign.series, "ordinals-b2").at(1);
    l.store_codes(&w.campaign, &b2, &[code.new_code()], now)
        .await
        .unwrap();
    let b3 = l.begin_batch(id, &bid("b3"), 4, now).await.unwrap();
    l.void_batch(id, &b3.id, now).await.unwrap();
    for b in [&w.batch.id, &b2.id, &b3.id] {
        let want = l.get_batch(id, b, ms(now, 1)).await.unwrap().unwrap();
        assert_eq!(
            l.batch_by_ordinal(id, want.ordinal).await.unwrap(),
            Some(want)
        );
    }
    // A stalled ISSUING batch reads as stored (no clock to age it).
    let stalled = ms(now, 10 * 60_000);
    assert_eq!(
        l.get_batch(id, &b2.id, stalled)
            .await
            .unwrap()
            .unwrap()
            .state,
        BatchState::Incomplete
    );
    let by_ord = l.batch_by_ordinal(id, 2).await.unwrap().unwrap();
    assert_eq!(
        (by_ord.id, by_ord.state, by_ord.issued),
        (bid("b2"), BatchState::Issuing, 1)
    );
    // An exchange leads back to its batch and serial.
    let x = claimed(
        l.claim(
            &claim_req(&code, "gift-code", "r", "h", ms(now, 30_000)),
            now,
        )
        .await,
    );
    assert_eq!((x.batch_ordinal, x.serial), (b2.ordinal, 1));
    let b = l
        .batch_by_ordinal(id, x.batch_ordinal)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.id, b2.id);
    for o in [0, 4, u32::MAX] {
        assert_eq!(
            l.batch_by_ordinal(id, o).await.unwrap(),
            None,
            "ordinal {o}"
        );
    }
    assert_eq!(l.batch_by_ordinal(&cid("nope"), 1).await.unwrap(), None);
}

async fn sweep_marks_each_code_once(l: &dyn Ledger) {
    let w = world(l, "sweep", 6).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let [a, b, p] = [w.codes[0], w.codes[1], w.codes[2]];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", until), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let xb = claimed(
        l.claim(&claim_req(&b, "gift-code", "r", "h", until), now)
            .await,
    );
    l.release(&xb.id, "no", false, now).await.unwrap();
    claimed(
        l.claim(&claim_req(&p, "book-card", "r", "h", until), now)
            .await,
    );
    assert_eq!(l.sweep(id, ms(w.deadline, -1)).await.unwrap().expired, 0);
    assert_eq!(
        l.counts(id, ms(w.deadline, -1)).await.unwrap(),
        counts(6, 4, 1, 1, 0, 0, [(1, 0), (0, 1), (0, 0)])
    );
    // 4 live codes (b was released), not the redeemed or the pending one.
    assert_eq!(l.sweep(id, w.deadline).await.unwrap().expired, 4);
    assert_eq!(l.sweep(id, ms(w.deadline, 1)).await.unwrap().expired, 0);
    let expired = counts(6, 0, 1, 1, 4, 0, [(1, 0), (0, 1), (0, 0)]);
    assert_eq!(l.counts(id, ms(w.deadline, 2)).await.unwrap(), expired);
    assert_eq!(
        l.verify(b.code, b.key, ms(w.deadline, 2))
            .await
            .unwrap()
            .state,
        CodeState::Expired
    );
    // Extending brings them back; the next deadline expires them again.
    let dl2 = ms(w.deadline, 3_600_000);
    l.extend_campaign(id, dl2, false, ms(w.deadline, 3))
        .await
        .unwrap();
    let t = ms(w.deadline, 4);
    assert_eq!(
        l.verify(b.code, b.key, t).await.unwrap().state,
        CodeState::Active
    );
    assert_eq!(
        l.counts(id, t).await.unwrap(),
        counts(6, 4, 1, 1, 0, 0, [(1, 0), (0, 1), (0, 0)])
    );
    let xb2 = claimed(
        l.claim(&claim_req(&b, "donation", "r2", "h", ms(t, 1)), t)
            .await,
    );
    l.complete(&xb2.id, None, t).await.unwrap();
    assert_eq!(l.sweep(id, t).await.unwrap().expired, 0);
    assert_eq!(l.sweep(id, dl2).await.unwrap().expired, 3);
    assert_eq!(l.sweep(id, dl2).await.unwrap().expired, 0);
    assert_eq!(
        l.counts(id, dl2).await.unwrap(),
        counts(6, 0, 1, 2, 3, 0, [(1, 0), (0, 1), (1, 0)])
    );
}

async fn counts_are_exact_after_a_mixed_workload(l: &dyn Ledger) {
    let w = world(l, "mixed", 10).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let b2 = l.begin_batch(id, &bid("b2"), 4, now).await.unwrap();
    let extra: Vec<TestCode> = (0..4)
        .map(|i| TestCode::new(w.campaign.series, &format!("mixed-x{i}")))
        .collect();
    let news: Vec<NewCode> = extra.iter().map(TestCode::new_code).collect();
    l.store_codes(&w.campaign, &b2, &news, now).await.unwrap();
    let c = &w.codes;
    // Redeemed: 0 (gift-code), 1 (book-card), 2 (book-card).
    for (i, o) in [(0, "gift-code"), (1, "book-card"), (2, "book-card")] {
        let x = claimed(l.claim(&claim_req(&c[i], o, "r", "h", until), now).await);
        l.complete(&x.id, None, ms(now, 1)).await.unwrap();
    }
    // Pending: 3 (donation), 4 (gift-code); failed-then-pending: 5 (donation).
    claimed(
        l.claim(&claim_req(&c[3], "donation", "r", "h", until), now)
            .await,
    );
    claimed(
        l.claim(&claim_req(&c[4], "gift-code", "r", "h", until), now)
            .await,
    );
    let x = claimed(
        l.claim(&claim_req(&c[5], "gift-code", "r", "h", until), now)
            .await,
    );
    l.release(&x.id, "no", false, ms(now, 1)).await.unwrap();
    claimed(
        l.claim(&claim_req(&c[5], "donation", "r2", "h", until), ms(now, 2))
            .await,
    );
    // Failed only: 6 (active again).
    let x = claimed(
        l.claim(&claim_req(&c[6], "book-card", "r", "h", until), now)
            .await,
    );
    l.release(&x.id, "no", false, ms(now, 1)).await.unwrap();
    // Batch 2: one redeemed, one pending, then voided.
    let x = claimed(
        l.claim(&claim_req(&extra[0], "gift-code", "r", "h", until), now)
            .await,
    );
    l.complete(&x.id, None, ms(now, 1)).await.unwrap();
    let xp = claimed(
        l.claim(&claim_req(&extra[1], "donation", "r", "h", until), now)
            .await,
    );
    l.void_batch(id, &b2.id, ms(now, 3)).await.unwrap();
    // Refusals and wrong keys change nothing.
    let _ = l
        .claim(&claim_req(&c[0], "gift-code", "r9", "h", until), ms(now, 4))
        .await;
    let _ = l.verify(c[7].code, c[7].wrong, ms(now, 4)).await;
    let t = ms(now, 5);
    // 14 issued; active 6,7,8,9; pending 3,4,5,x1; redeemed 0,1,2,x0; void x2,x3.
    let before = counts(14, 4, 4, 4, 0, 2, [(2, 1), (2, 0), (0, 3)]);
    assert_eq!(l.counts(id, t).await.unwrap(), before);
    // Past the deadline ACTIVE reads EXPIRED, with or without a sweep.
    let late = ms(w.deadline, 0);
    let after = counts(14, 0, 4, 4, 4, 2, [(2, 1), (2, 0), (0, 3)]);
    assert_eq!(l.counts(id, late).await.unwrap(), after);
    assert_eq!(l.sweep(id, late).await.unwrap().expired, 4);
    assert_eq!(l.counts(id, late).await.unwrap(), after);
    // The voided batch's pending code finishes after the deadline.
    l.complete(&xp.id, None, ms(late, 1)).await.unwrap();
    assert_eq!(
        l.counts(id, ms(late, 2)).await.unwrap(),
        counts(14, 0, 3, 5, 4, 2, [(2, 1), (2, 0), (1, 2)])
    );
}

async fn singleton_leases(l: &dyn Ledger) {
    let now = t0();
    let lease = |h: &str, until| Lease {
        holder: h.into(),
        until,
    };
    assert!(
        l.acquire_lease("sweeper", &lease("a", ms(now, 10_000)), now)
            .await
            .unwrap()
    );
    assert!(
        !l.acquire_lease("sweeper", &lease("b", ms(now, 20_000)), ms(now, 9_999))
            .await
            .unwrap()
    );
    // Other names are independent.
    assert!(
        l.acquire_lease("reconciler", &lease("b", ms(now, 20_000)), now)
            .await
            .unwrap()
    );
    // The holder renews.
    assert!(
        l.acquire_lease("sweeper", &lease("a", ms(now, 30_000)), ms(now, 5_000))
            .await
            .unwrap()
    );
    assert!(
        !l.acquire_lease("sweeper", &lease("b", ms(now, 40_000)), ms(now, 29_999))
            .await
            .unwrap()
    );
    // Lapsed at `until`.
    assert!(
        l.acquire_lease("sweeper", &lease("b", ms(now, 40_000)), ms(now, 30_000))
            .await
            .unwrap()
    );
    assert!(
        !l.acquire_lease("sweeper", &lease("a", ms(now, 50_000)), ms(now, 30_001))
            .await
            .unwrap()
    );
    // Releasing by a non-holder does nothing; by the holder frees it.
    l.release_lease("sweeper", "a").await.unwrap();
    assert!(
        !l.acquire_lease("sweeper", &lease("a", ms(now, 50_000)), ms(now, 30_002))
            .await
            .unwrap()
    );
    l.release_lease("sweeper", "b").await.unwrap();
    assert!(
        l.acquire_lease("sweeper", &lease("a", ms(now, 50_000)), ms(now, 30_003))
            .await
            .unwrap()
    );
    l.release_lease("never-taken", "a").await.unwrap();
}

async fn state_changes_leave_events_without_secrets(l: &dyn Ledger) {
    let now = t0();
    let dl = ms(now, 3_600_000);
    let c = l
        .create_campaign(&spec("events", dl), None, now)
        .await
        .unwrap();
    let b = l
        .begin_batch(&c.spec.id, &bid("b1"), 1, ms(now, 1))
        .await
        .unwrap();
    let code = TestCode::new(c.series, "events-0");
    l.store_codes(&c, &b, &[code.new_code()], ms(now, 2))
        .await
        .unwrap();
    let x = claimed(
        l.claim(
            &claim_req(&code, "gift-code", "r", "h", ms(now, 99)),
            ms(now, 3),
        )
        .await,
    );
    l.complete(&x.id, Some(b"SEALED-SECRET".to_vec()), ms(now, 4))
        .await
        .unwrap();
    let events = l.recent_events(1000).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} event in {kinds:?}"))
    };
    let order = [
        pos("campaign.created"),
        pos("batch.stored"),
        pos("code.claimed"),
        pos("exchange.succeeded"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "events out of order: {kinds:?}"
    );
    let claim_ev = &events[pos("code.claimed")];
    assert_eq!(claim_ev.time, ms(now, 3));
    assert!(
        claim_ev.fields.iter().any(|(_, v)| v.contains(&x.id.0)),
        "code.claimed does not name the exchange: {claim_ev:?}"
    );
    let hex = |dg: Digest| dg.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for e in &events {
        for (k, v) in &e.fields {
            for secret in [
                hex(code.key),
                hex(code.code.digest),
                "SEALED-SECRET".to_string(),
            ] {
                assert!(
                    !v.contains(&secret) && !k.contains(&secret),
                    "secret in event {e:?}"
                );
            }
            assert!(
                !v.as_bytes().windows(8).any(|w| w == &code.key.0[..8]),
                "login key in {e:?}"
            );
        }
    }
    // Oldest first, at most `limit`, the most recent ones.
    let last2 = l.recent_events(2).await.unwrap();
    assert_eq!(last2.len(), 2);
    assert_eq!(last2[..], events[events.len() - 2..]);
    assert_eq!(last2[1].kind, "exchange.succeeded");
}

async fn retention_drops_codes_and_exchanges_but_keeps_counts(l: &dyn Ledger) {
    let w = world(l, "retention", 3).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let [a, b] = [w.codes[0], w.codes[1]];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", until), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let xb = claimed(
        l.claim(&claim_req(&b, "donation", "r", "h", until), now)
            .await,
    );
    let end = w.deadline.plus(RETENTION);
    let kept = counts(3, 0, 1, 1, 1, 0, [(1, 0), (0, 0), (0, 1)]);
    // Just before the end of retention everything is still there.
    let before = ms(end, -1);
    assert_eq!(l.counts(id, before).await.unwrap(), kept);
    assert_eq!(
        l.latest_exchange(a.code, a.key, before).await.unwrap().id,
        xa.id
    );
    assert_eq!(
        l.get_exchange(&xb.id).await.unwrap().map(|x| x.state),
        Some(ExchangeState::Pending)
    );
    // After it the codes are gone (read as unknown) and so are exchanges.
    assert_eq!(
        refusal(l.verify(a.code, a.key, end).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.latest_exchange(b.code, b.key, end).await),
        Refusal::LoginKeyMismatch
    );
    l.sweep(id, end).await.unwrap();
    assert_eq!(l.get_exchange(&xa.id).await.unwrap(), None);
    assert_eq!(l.get_exchange(&xb.id).await.unwrap(), None);
    let pending = l.list_pending(end, None, 100).await.unwrap();
    assert!(
        pending.items.iter().all(|x| x.id != xb.id),
        "purged exchange still listed"
    );
    // The campaign and its counters survive, as history, with the purge
    // time.
    let mut history = kept.clone();
    history.purge_time = Some(end);
    assert_eq!(l.counts(id, ms(end, 5)).await.unwrap(), history);
    assert!(l.get_campaign(id).await.unwrap().is_some());
}

/// Issue 12 item 1: a forced ExtendCampaign to a deadline before now (a
/// one-digit slip in the year) is refused and deletes nothing.
async fn forced_extend_to_the_past_is_refused_and_deletes_nothing(l: &dyn Ledger) {
    let w = world(l, "slip", 3).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let until = ms(now, 30_000);
    let [a, b, c] = [w.codes[0], w.codes[1], w.codes[2]];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", until), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let xb = claimed(
        l.claim(&claim_req(&b, "donation", "r", "h", until), now)
            .await,
    );
    let before = l.counts(id, now).await.unwrap();
    let year = 365 * 24 * 3600 * 1000;
    for (to, force) in [
        (ms(w.deadline, -year), true),
        (ms(now, -1), true),
        (ms(w.deadline, -year), false),
    ] {
        assert_eq!(
            refusal(l.extend_campaign(id, to, force, now).await),
            Refusal::DeadlineInPast,
            "{to:?} force {force}"
        );
    }
    let t = ms(now, 10);
    assert_eq!(
        l.get_campaign(id).await.unwrap().unwrap().spec.expire_time,
        w.deadline
    );
    let sweep = l.sweep(id, t).await.unwrap();
    assert_eq!(sweep.purged, None);
    let va = l.verify(a.code, a.key, t).await.unwrap();
    assert_eq!(va.state, CodeState::Redeemed);
    assert_eq!(va.latest_exchange.map(|x| x.id), Some(xa.id.clone()));
    assert_eq!(
        l.verify(b.code, b.key, t).await.unwrap().state,
        CodeState::Pending
    );
    assert_eq!(
        l.verify(c.code, c.key, t).await.unwrap().state,
        CodeState::Active
    );
    assert!(l.get_exchange(&xb.id).await.unwrap().is_some());
    assert_eq!(l.counts(id, t).await.unwrap(), before);
}

/// A forced earlier deadline that is still ahead keeps every code and
/// exchange, and moving it back undoes it.
async fn forced_earlier_deadline_keeps_everything_and_is_reversible(l: &dyn Ledger) {
    let w = world(l, "earlier", 2).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let [a, c] = [w.codes[0], w.codes[1]];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", ms(now, 30_000)), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let before = l.counts(id, now).await.unwrap();
    let soon = ms(now, 1000);
    l.extend_campaign(id, soon, true, now).await.unwrap();
    let t = ms(soon, 1);
    assert_eq!(
        l.verify(c.code, c.key, t).await.unwrap().state,
        CodeState::Expired
    );
    assert_eq!(l.sweep(id, t).await.unwrap().expired, 1);
    assert_eq!(l.sweep(id, t).await.unwrap().purged, None);
    l.extend_campaign(id, w.deadline, false, ms(t, 1))
        .await
        .unwrap();
    let t = ms(t, 2);
    assert_eq!(
        l.verify(c.code, c.key, t).await.unwrap().state,
        CodeState::Active
    );
    let va = l.verify(a.code, a.key, t).await.unwrap();
    assert_eq!(
        (va.state, va.latest_exchange.map(|x| x.id)),
        (CodeState::Redeemed, Some(xa.id.clone()))
    );
    assert_eq!(l.counts(id, t).await.unwrap(), before);
}

/// The purge happens only in the sweep, only once deadline + retention has
/// passed by the ledger's clock; after it (and from the end of retention
/// on) the deadline no longer moves.
async fn purge_only_by_the_sweep_after_retention_then_no_extend(l: &dyn Ledger) {
    let w = world(l, "purge", 2).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let a = w.codes[0];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", ms(now, 30_000)), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let end = w.deadline.plus(RETENTION);
    let s = l.sweep(id, ms(end, -1)).await.unwrap();
    assert_eq!((s.purged, s.purge_due), (None, end));
    assert_eq!(
        l.verify(a.code, a.key, ms(end, -1)).await.unwrap().state,
        CodeState::Redeemed
    );
    // At the end of retention, before the sweep: the code reads as gone,
    // nothing is deleted yet, and the deadline no longer moves.
    assert_eq!(
        refusal(l.verify(a.code, a.key, end).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.complete(&xa.id, None, end).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(l.counts(id, end).await.unwrap().purge_time, None);
    let later = w.deadline.plus(RETENTION).plus(RETENTION);
    assert_eq!(
        refusal(l.extend_campaign(id, later, false, end).await),
        Refusal::CampaignPurged
    );
    // The sweep purges.
    let s = l.sweep(id, ms(end, 7)).await.unwrap();
    assert_eq!(s.purged, Some(ms(end, 7)));
    assert_eq!(l.get_exchange(&xa.id).await.unwrap(), None);
    assert_eq!(
        l.counts(id, ms(end, 8)).await.unwrap().purge_time,
        Some(ms(end, 7))
    );
    // A repeat answers the first purge; the deadline stays put.
    assert_eq!(
        l.sweep(id, ms(end, 9)).await.unwrap().purged,
        Some(ms(end, 7))
    );
    assert_eq!(
        refusal(l.extend_campaign(id, later, true, ms(end, 10)).await),
        Refusal::CampaignPurged
    );
}

/// A sweep at a time past the *old* deadline's retention does not purge a
/// campaign whose deadline was extended meanwhile.
async fn a_sweep_past_the_old_retention_spares_an_extended_campaign(l: &dyn Ledger) {
    let w = world(l, "extended", 2).await;
    let id = &w.campaign.spec.id;
    let now = ms(w.start, 1000);
    let a = w.codes[0];
    let xa = claimed(
        l.claim(&claim_req(&a, "gift-code", "r", "h", ms(now, 30_000)), now)
            .await,
    );
    l.complete(&xa.id, None, now).await.unwrap();
    let new_deadline = w.deadline.plus(RETENTION).plus(RETENTION);
    l.extend_campaign(id, new_deadline, false, now)
        .await
        .unwrap();
    let old_end = w.deadline.plus(RETENTION);
    let s = l.sweep(id, old_end).await.unwrap();
    assert_eq!(s.purged, None);
    assert_eq!(s.purge_due, new_deadline.plus(RETENTION));
    let va = l.verify(a.code, a.key, old_end).await.unwrap();
    assert_eq!(
        (va.state, va.latest_exchange.map(|x| x.id)),
        (CodeState::Redeemed, Some(xa.id.clone()))
    );
    assert_eq!(l.counts(id, old_end).await.unwrap().purge_time, None);
}

// ----------------------------------------------------- model-based property

#[derive(Clone, Copy, Debug)]
enum Step {
    Milli,
    Second,
    PastLockout,
    ToDeadlineMinus1,
    ToDeadline,
    PastDeadline,
}

#[derive(Clone, Debug)]
enum Op {
    /// Store one new code in a batch (or an existing one again).
    Store {
        batch: usize,
        dup: usize,
        is_dup: bool,
    },
    NewBatch,
    Verify {
        code: usize,
        right: bool,
    },
    Claim {
        code: usize,
        right: bool,
        option: usize,
        request: u8,
    },
    Complete {
        ex: usize,
    },
    Release {
        ex: usize,
    },
    Void {
        batch: usize,
    },
    Advance(Step),
    Extend {
        minutes: i64,
    },
    Sweep,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let step = prop_oneof![
        Just(Step::Milli),
        Just(Step::Second),
        Just(Step::PastLockout),
        Just(Step::ToDeadlineMinus1),
        Just(Step::ToDeadline),
        Just(Step::PastDeadline),
    ];
    prop_oneof![
        4 => (0..3usize, 0..8usize, prop::bool::weighted(0.15))
            .prop_map(|(batch, dup, is_dup)| Op::Store { batch, dup, is_dup }),
        3 => (0..9usize, prop::bool::weighted(0.7)).prop_map(|(code, right)| Op::Verify { code, right }),
        6 => (0..9usize, prop::bool::weighted(0.85), 0..3usize, 0..3u8)
            .prop_map(|(code, right, option, request)| Op::Claim { code, right, option, request }),
        3 => (0..8usize).prop_map(|ex| Op::Complete { ex }),
        2 => (0..8usize).prop_map(|ex| Op::Release { ex }),
        1 => (0..3usize).prop_map(|batch| Op::Void { batch }),
        1 => Just(Op::NewBatch),
        2 => step.prop_map(Op::Advance),
        1 => (1..4i64).prop_map(|minutes| Op::Extend { minutes }),
        1 => Just(Op::Sweep),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MStored {
    Active,
    Pending,
    Redeemed,
    Expired,
}

/// A lockout entry as the ledgers keep it: counts until `expires`.
#[derive(Clone, Copy, Debug)]
struct MLock {
    fails: u32,
    until: Timestamp,
    expires: Timestamp,
}

struct MCode {
    tc: TestCode,
    batch: usize,
    stored: MStored,
    lock: Option<MLock>,
    exchanges: Vec<usize>,
    requests: HashMap<u8, (usize, usize)>,
}

struct MExchange {
    id: ExchangeId,
    code: usize,
    option: usize,
    state: ExchangeState,
}

struct MBatch {
    batch: Batch,
    voided: bool,
    last_store: Timestamp,
}

struct Model {
    now: Timestamp,
    deadline: Timestamp,
    batches: Vec<MBatch>,
    codes: Vec<MCode>,
    exchanges: Vec<MExchange>,
    stored_labels: usize,
    /// The lockout entry of the code that was never stored.
    unknown_lock: Option<MLock>,
}

impl Model {
    fn state(&self, c: &MCode) -> CodeState {
        match c.stored {
            MStored::Pending => CodeState::Pending,
            MStored::Redeemed => CodeState::Redeemed,
            MStored::Active | MStored::Expired if self.batches[c.batch].voided => CodeState::Void,
            MStored::Expired => CodeState::Expired,
            MStored::Active if self.now >= self.deadline => CodeState::Expired,
            MStored::Active => CodeState::Active,
        }
    }

    fn counts(&self) -> CampaignCounts {
        let mut k = counts(self.codes.len() as i64, 0, 0, 0, 0, 0, [(0, 0); 3]);
        for c in &self.codes {
            match self.state(c) {
                CodeState::Active => k.active += 1,
                CodeState::Pending => k.pending += 1,
                CodeState::Redeemed => k.redeemed += 1,
                CodeState::Expired => k.expired += 1,
                CodeState::Void => k.void += 1,
            }
        }
        for x in &self.exchanges {
            match x.state {
                ExchangeState::Succeeded => k.by_option[x.option].1 += 1,
                ExchangeState::Pending => k.by_option[x.option].2 += 1,
                ExchangeState::Failed => {}
            }
        }
        k
    }

    /// The login check; Ok(()) when the key is right. The code that was
    /// never stored counts wrong keys (every key is wrong for it) exactly
    /// like a stored one; entries count until they expire.
    fn authenticate(&mut self, i: usize, right: bool) -> Result<(), Refusal> {
        let now = self.now;
        let exists = i < self.codes.len();
        let slot = match self.codes.get_mut(i) {
            Some(c) => &mut c.lock,
            None => &mut self.unknown_lock,
        };
        let (fails, until) = slot
            .filter(|e| e.expires > now)
            .map_or((0, Timestamp(0)), |e| (e.fails, e.until));
        if until > now {
            return Err(Refusal::Locked { until });
        }
        if exists && right {
            *slot = None;
            return Ok(());
        }
        let fails = fails + 1;
        if fails >= THRESHOLD {
            let until = now.plus(LOCKOUT);
            *slot = Some(MLock {
                fails: 0,
                until,
                expires: until,
            });
            return Err(Refusal::Locked { until });
        }
        *slot = Some(MLock {
            fails,
            until: Timestamp(0),
            expires: now.plus(LOCKOUT),
        });
        Err(Refusal::LoginKeyMismatch)
    }
}

fn code_for(series: Series, model: &Model, i: usize) -> TestCode {
    match model.codes.get(i) {
        Some(c) => c.tc,
        None => TestCode::new(series, "model-unknown"),
    }
}

fn refused<T: Debug>(r: Result<T, LedgerError>) -> Result<Refusal, TestCaseError> {
    match r {
        Err(LedgerError::Refused(x)) => Ok(x),
        other => Err(TestCaseError::fail(format!(
            "expected a refusal, got {other:?}"
        ))),
    }
}

async fn run_model(l: &dyn Ledger, ops: &[Op]) -> Result<(), TestCaseError> {
    let start = t0();
    let mut m = Model {
        now: start,
        deadline: ms(start, 10 * 60_000),
        batches: Vec::new(),
        codes: Vec::new(),
        exchanges: Vec::new(),
        stored_labels: 0,
        unknown_lock: None,
    };
    let campaign = l
        .create_campaign(&spec("model", m.deadline), None, start)
        .await
        .map_err(|e| TestCaseError::fail(format!("create: {e}")))?;
    let id = campaign.spec.id.clone();
    let first = l
        .begin_batch(&id, &bid("b0"), 10, start)
        .await
        .map_err(|e| TestCaseError::fail(format!("begin: {e}")))?;
    m.batches.push(MBatch {
        batch: first,
        voided: false,
        last_store: start,
    });
    let series = campaign.series;
    for (n, op) in ops.iter().enumerate() {
        let now = m.now;
        match *op {
            Op::NewBatch => {
                let name = bid(&format!("b{}", m.batches.len()));
                let got = l.begin_batch(&id, &name, 10, now).await;
                if now >= m.deadline {
                    prop_assert_eq!(
                        refused(got)?,
                        Refusal::CampaignExpired,
                        "op {}: {:?}",
                        n,
                        op
                    );
                    continue;
                }
                let b = got.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                prop_assert_eq!(b.ordinal as usize, m.batches.len() + 1);
                m.batches.push(MBatch {
                    batch: b,
                    voided: false,
                    last_store: now,
                });
            }
            Op::Store { batch, dup, is_dup } => {
                // Storing past the deadline is not specified.
                if now >= m.deadline {
                    continue;
                }
                let batch = batch % m.batches.len();
                let (tc, new) = if is_dup && !m.codes.is_empty() {
                    (m.codes[dup % m.codes.len()].tc, false)
                } else {
                    m.stored_labels += 1;
                    (
                        TestCode::new(series, &format!("m{}", m.stored_labels)),
                        true,
                    )
                };
                let got = l
                    .store_codes(&campaign, &m.batches[batch].batch, &[tc.new_code()], now)
                    .await;
                let mb = &m.batches[batch];
                if mb.voided || now > mb.last_store.plus(STALL) {
                    prop_assert_eq!(refused(got)?, Refusal::BatchClosed, "op {}: {:?}", n, op);
                    continue;
                }
                m.batches[batch].last_store = now;
                if new {
                    m.codes.push(MCode {
                        tc,
                        batch,
                        stored: MStored::Active,
                        lock: None,
                        exchanges: Vec::new(),
                        requests: HashMap::new(),
                    });
                }
                let issued = m.codes.iter().filter(|c| c.batch == batch).count() as u64;
                let collisions = if new { vec![] } else { vec![0] };
                let got = got.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                prop_assert_eq!(
                    got,
                    StoreOutcome { issued, collisions },
                    "op {}: {:?}",
                    n,
                    op
                );
            }
            Op::Verify { code, right } => {
                let i = code % (m.codes.len() + 1);
                let tc = code_for(series, &m, i);
                let got = l
                    .verify(tc.code, if right { tc.key } else { tc.wrong }, now)
                    .await;
                match m.authenticate(i, right) {
                    Err(r) => prop_assert_eq!(refused(got)?, r, "op {}: {:?}", n, op),
                    Ok(()) => {
                        let c = &m.codes[i];
                        let v =
                            got.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                        prop_assert_eq!(v.state, m.state(c), "op {}: {:?}", n, op);
                        let want = c
                            .exchanges
                            .last()
                            .map(|&x| (m.exchanges[x].id.clone(), m.exchanges[x].state));
                        let got = v.latest_exchange.map(|x| (x.id, x.state));
                        prop_assert_eq!(got, want, "op {}: {:?}", n, op);
                    }
                }
            }
            Op::Claim {
                code,
                right,
                option,
                request,
            } => {
                let i = code % (m.codes.len() + 1);
                let tc = code_for(series, &m, i);
                let mut req = claim_req(
                    &tc,
                    OPTIONS[option],
                    &format!("{request}"),
                    "h",
                    ms(now, 30_000),
                );
                if !right {
                    req.login_key = tc.wrong;
                }
                let got = l.claim(&req, now).await;
                if let Err(r) = m.authenticate(i, right) {
                    prop_assert_eq!(refused(got)?, r, "op {}: {:?}", n, op);
                    continue;
                }
                let state = m.state(&m.codes[i]);
                if let Some(&(x, o)) = m.codes[i].requests.get(&request) {
                    if o != option {
                        prop_assert_eq!(
                            refused(got)?,
                            Refusal::RequestIdReused,
                            "op {}: {:?}",
                            n,
                            op
                        );
                    } else {
                        match got {
                            Ok(ClaimOutcome::Existing(rec)) => {
                                prop_assert_eq!(&rec.id, &m.exchanges[x].id, "op {}: {:?}", n, op);
                                prop_assert_eq!(
                                    rec.state,
                                    m.exchanges[x].state,
                                    "op {}: {:?}",
                                    n,
                                    op
                                );
                            }
                            other => {
                                return Err(TestCaseError::fail(format!(
                                    "op {n} {op:?}: expected Existing, got {other:?}"
                                )));
                            }
                        }
                    }
                    continue;
                }
                let want = match state {
                    CodeState::Void => Some(Refusal::Void),
                    CodeState::Expired => Some(Refusal::Expired),
                    CodeState::Redeemed => Some(Refusal::AlreadyRedeemed),
                    CodeState::Pending => Some(Refusal::InFlight),
                    CodeState::Active
                        if m.codes[i].exchanges.len() >= MAX_FAILED_EXCHANGES as usize =>
                    {
                        Some(Refusal::TooManyAttempts)
                    }
                    CodeState::Active => None,
                };
                if let Some(r) = want {
                    prop_assert_eq!(refused(got)?, r, "op {}: {:?}", n, op);
                    continue;
                }
                match got {
                    Ok(ClaimOutcome::Claimed(rec)) => {
                        prop_assert_eq!(rec.state, ExchangeState::Pending);
                        prop_assert_eq!(rec.attempts, 1);
                        prop_assert!(
                            m.exchanges.iter().all(|x| x.id != rec.id),
                            "exchange id reused"
                        );
                        let x = m.exchanges.len();
                        m.exchanges.push(MExchange {
                            id: rec.id,
                            code: i,
                            option,
                            state: ExchangeState::Pending,
                        });
                        let c = &mut m.codes[i];
                        c.stored = MStored::Pending;
                        c.exchanges.push(x);
                        c.requests.insert(request, (x, option));
                    }
                    other => {
                        return Err(TestCaseError::fail(format!(
                            "op {n} {op:?}: expected Claimed, got {other:?}"
                        )));
                    }
                }
            }
            Op::Complete { ex } | Op::Release { ex } => {
                if m.exchanges.is_empty() {
                    continue;
                }
                let x = ex % m.exchanges.len();
                let id = m.exchanges[x].id.clone();
                let completing = matches!(op, Op::Complete { .. });
                let got = if completing {
                    l.complete(&id, None, now).await
                } else {
                    l.release(&id, "refused", false, now).await
                };
                let cur = m.exchanges[x].state;
                let (done, to, stored) = if completing {
                    (
                        ExchangeState::Succeeded,
                        ExchangeState::Failed,
                        MStored::Redeemed,
                    )
                } else {
                    (
                        ExchangeState::Failed,
                        ExchangeState::Succeeded,
                        MStored::Active,
                    )
                };
                if cur == to {
                    prop_assert_eq!(
                        refused(got)?,
                        Refusal::ExchangeFinished,
                        "op {}: {:?}",
                        n,
                        op
                    );
                    continue;
                }
                let rec = got.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                prop_assert_eq!(rec.state, done, "op {}: {:?}", n, op);
                if cur == ExchangeState::Pending {
                    m.exchanges[x].state = done;
                    let c = m.exchanges[x].code;
                    m.codes[c].stored = stored;
                }
            }
            Op::Void { batch } => {
                let batch = batch % m.batches.len();
                let got = l.void_batch(&id, &m.batches[batch].batch.id, now).await;
                let b = got.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                prop_assert_eq!(b.state, BatchState::Void);
                m.batches[batch].voided = true;
            }
            Op::Advance(step) => {
                let target = match step {
                    Step::Milli => ms(now, 1),
                    Step::Second => ms(now, 1000),
                    Step::PastLockout => now.plus(LOCKOUT).plus(Duration::from_millis(1)),
                    Step::ToDeadlineMinus1 => ms(m.deadline, -1),
                    Step::ToDeadline => m.deadline,
                    Step::PastDeadline => ms(m.deadline, 1),
                };
                m.now = now.max(target);
            }
            Op::Extend { minutes } => {
                // Always to a deadline still ahead, where every reading of
                // "codes expired only by the old deadline" agrees.
                let to = ms(now.max(m.deadline), minutes * 60_000);
                let c = l
                    .extend_campaign(&id, to, false, now)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                prop_assert_eq!(c.spec.expire_time, to);
                m.deadline = to;
                for c in &mut m.codes {
                    if c.stored == MStored::Expired {
                        c.stored = MStored::Active;
                    }
                }
            }
            Op::Sweep => {
                let got = l
                    .sweep(&id, now)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
                let mut marked = 0;
                if now >= m.deadline {
                    let voided: Vec<bool> = m.batches.iter().map(|b| b.voided).collect();
                    for c in &mut m.codes {
                        if c.stored == MStored::Active && !voided[c.batch] {
                            c.stored = MStored::Expired;
                            marked += 1;
                        }
                    }
                }
                prop_assert_eq!(got.expired, marked, "op {}: {:?}", n, op);
            }
        }
        let got = l
            .counts(&id, m.now)
            .await
            .map_err(|e| TestCaseError::fail(format!("counts: {e}")))?;
        prop_assert_eq!(got, m.counts(), "counts after op {}: {:?}", n, op);
    }
    Ok(())
}

fn state_machine_matches_model<F, Fut>(make: F, cases: u32)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Fixture>,
{
    let rt = runtime();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op_strategy(), 1..40), |ops| {
        rt.block_on(async {
            let fx = make().await;
            run_model(fx.ledger(), &ops).await
        })
    });
    if let Err(e) = result {
        panic!("ledger diverges from the model: {e}");
    }
}

// ---------------------------------------------------------------- backends

macro_rules! suite {
    ($make:path, $cases:expr) => {
        suite!(@tests $make;
            create_campaign_takes_first_free_series_and_is_idempotent,
            create_campaign_refuses_when_all_series_are_taken,
            list_campaigns_pages_in_creation_order,
            extend_campaign_refusals_and_moves,
            begin_batch_refusals_and_ordinals,
            store_codes_skips_and_reports_collisions,
            store_codes_refusals,
            batches_finish_and_stalled_issuing_reads_incomplete,
            void_batch_voids_unredeemed_codes_and_is_idempotent,
            void_after_sweep_reads_void,
            unknown_code_and_wrong_key_get_the_same_refusal,
            unknown_code_locks_exactly_like_a_real_one,
            lockout_entries_expire,
            lockout_after_threshold_wrong_keys,
            claim_opens_a_pending_exchange,
            claim_refusals,
            claim_is_idempotent_for_same_request_id,
            deadline_is_exclusive_to_the_millisecond,
            released_exchange_frees_the_code_for_a_new_request,
            refused_exchanges_of_a_code_are_capped,
            a_retryable_release_frees_the_code_and_its_request,
            complete_and_release_refusals,
            latest_exchange_refusals,
            attempts_are_leased_counted_and_deferred,
            list_pending_pages_through_old_pending_exchanges,
            list_pending_skips_nothing_when_listed_exchanges_finish_between_pages,
            sweep_marks_each_code_once,
            counts_are_exact_after_a_mixed_workload,
            singleton_leases,
            state_changes_leave_events_without_secrets,
            retention_drops_codes_and_exchanges_but_keeps_counts,
            forced_extend_to_the_past_is_refused_and_deletes_nothing,
            forced_earlier_deadline_keeps_everything_and_is_reversible,
            purge_only_by_the_sweep_after_retention_then_no_extend,
            a_sweep_past_the_old_retention_spares_an_extended_campaign,
            list_preferences_lists_each_codes_latest_exchange_with_a_preference,
            list_preferences_skips_nothing_when_exchanges_change_between_pages,
            list_preferences_lists_nothing_past_retention,
            batch_by_ordinal_finds_each_batch,
        );

        #[test]
        fn state_machine_matches_model() {
            super::state_machine_matches_model($make, $cases);
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::runtime().block_on(async {
                    let fx = $make().await;
                    super::$name(fx.ledger()).await;
                });
            }
        )*
    };
}

mod memory {
    suite!(super::memory_fixture, 128);
}

mod redis {
    suite!(super::redis_fixture, 24);
}

/// One `redis-server` for the whole test binary, and a pool of its logical
/// databases: each test (or model case) takes one and flushes it, so tests
/// run in parallel without seeing each other.
mod redis_support {
    use std::sync::{Condvar, Mutex, OnceLock};

    use giftx_testkit::RedisServer;

    struct Shared {
        port: u16,
        free: Mutex<Vec<u8>>,
        returned: Condvar,
    }

    static SERVER: Mutex<Option<RedisServer>> = Mutex::new(None);
    static SHARED: OnceLock<Shared> = OnceLock::new();

    unsafe extern "C" {
        fn atexit(cb: extern "C" fn()) -> std::ffi::c_int;
    }

    extern "C" fn stop_server() {
        // Statics are never dropped: kill the server as the process exits.
        if let Ok(mut s) = SERVER.lock() {
            s.take();
        }
    }

    fn shared() -> &'static Shared {
        SHARED.get_or_init(|| {
            let server = RedisServer::start();
            let port = server.port();
            *SERVER.lock().expect("server slot") = Some(server);
            // SAFETY: registers a plain function; libc runs it at exit.
            unsafe {
                atexit(stop_server);
            }
            Shared {
                port,
                free: Mutex::new((0..16).collect()),
                returned: Condvar::new(),
            }
        })
    }

    /// A flushed logical database, returned to the pool on drop.
    pub struct TestDb {
        db: u8,
    }

    impl TestDb {
        pub fn acquire() -> TestDb {
            let s = shared();
            let mut free = s.free.lock().expect("db pool");
            let db = loop {
                if let Some(db) = free.pop() {
                    break db;
                }
                free = s.returned.wait(free).expect("db pool");
            };
            drop(free);
            let t = TestDb { db };
            let mut c = redis::Client::open(t.url())
                .and_then(|c| c.get_connection())
                .expect("connect to test redis");
            redis::cmd("FLUSHDB").query::<()>(&mut c).expect("FLUSHDB");
            t
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/{}", shared().port, self.db)
        }

        pub fn dbsize(&self) -> i64 {
            let mut c = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .expect("connect to test redis");
            redis::cmd("DBSIZE").query(&mut c).expect("DBSIZE")
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let s = shared();
            if let Ok(mut free) = s.free.lock() {
                free.push(self.db);
                s.returned.notify_one();
            }
        }
    }
}

pub async fn redis_fixture() -> Fixture {
    let db = redis_support::TestDb::acquire();
    let ledger = giftx_ledger::RedisLedger::connect(&db.url(), config())
        .await
        .expect("connect the Redis ledger");
    Fixture {
        ledger: Box::new(ledger),
        _guard: Some(Box::new(db)),
    }
}

mod sentinel {
    suite!(super::sentinel_fixture, 6);
}

/// One Sentinel group (master, two replicas, three sentinels) for the
/// whole test binary; each test takes a logical database of its master.
mod sentinel_support {
    use std::sync::{Condvar, Mutex, OnceLock};

    use giftx_testkit::SentinelGroup;

    pub struct Shared {
        pub sentinels: Vec<String>,
        free: Mutex<Vec<i64>>,
        returned: Condvar,
    }

    static GROUP: Mutex<Option<SentinelGroup>> = Mutex::new(None);
    static SHARED: OnceLock<Shared> = OnceLock::new();

    unsafe extern "C" {
        fn atexit(cb: extern "C" fn()) -> std::ffi::c_int;
    }

    extern "C" fn stop_group() {
        if let Ok(mut g) = GROUP.lock() {
            g.take();
        }
    }

    pub fn shared() -> &'static Shared {
        SHARED.get_or_init(|| {
            let group = SentinelGroup::start();
            let sentinels = group.sentinel_urls();
            *GROUP.lock().expect("group slot") = Some(group);
            // SAFETY: registers a plain function; libc runs it at exit.
            unsafe {
                atexit(stop_group);
            }
            Shared {
                sentinels,
                free: Mutex::new((0..16).collect()),
                returned: Condvar::new(),
            }
        })
    }

    /// A flushed logical database of the master, returned on drop.
    pub struct SentinelDb {
        pub db: i64,
    }

    impl SentinelDb {
        pub fn acquire() -> SentinelDb {
            let s = shared();
            let mut free = s.free.lock().expect("db pool");
            let db = loop {
                if let Some(db) = free.pop() {
                    break db;
                }
                free = s.returned.wait(free).expect("db pool");
            };
            drop(free);
            let port = GROUP
                .lock()
                .expect("group slot")
                .as_ref()
                .and_then(SentinelGroup::master_port)
                .expect("an agreed master");
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/{db}"))
                .and_then(|c| c.get_connection())
                .expect("connect to the master");
            redis::cmd("FLUSHDB").query::<()>(&mut c).expect("FLUSHDB");
            SentinelDb { db }
        }
    }

    impl Drop for SentinelDb {
        fn drop(&mut self) {
            let s = shared();
            if let Ok(mut free) = s.free.lock() {
                free.push(self.db);
                s.returned.notify_one();
            }
        }
    }
}

/// The Redis ledger on the master a Sentinel group names (claims and
/// completions wait for a replica: the master has two).
pub async fn sentinel_fixture() -> Fixture {
    let db = sentinel_support::SentinelDb::acquire();
    let sentinels = sentinel_support::shared().sentinels.clone();
    let options = giftx_ledger::redis::RedisOptions {
        database: db.db,
        ..Default::default()
    };
    let ledger = giftx_ledger::RedisLedger::connect_sentinel(
        &sentinels,
        giftx_testkit::sentinel::MASTER_NAME,
        config(),
        options,
    )
    .await
    .expect("connect the Redis ledger through Sentinel");
    Fixture {
        ledger: Box::new(ledger),
        _guard: Some(Box::new(db)),
    }
}

/// The Redis ledger keeps its data in the database its URL names (the
/// other tests rely on it for isolation).
#[test]
fn redis_ledger_uses_the_database_of_its_url() {
    runtime().block_on(async {
        let db = redis_support::TestDb::acquire();
        let l = giftx_ledger::RedisLedger::connect(&db.url(), config())
            .await
            .expect("connect the Redis ledger");
        assert_eq!(db.dbsize(), 0);
        l.create_campaign(&spec("db", ms(t0(), 60_000)), None, t0())
            .await
            .expect("create");
        assert!(db.dbsize() > 0, "nothing written to the URL's database");
    });
}
