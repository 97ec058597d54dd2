//! The Redis ledger against a private redis-server: every script return
//! value, races, script cache loss, a Redis crash, key hygiene and memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use giftx_core::model::{
    BatchId, BatchState, Campaign, CampaignId, CampaignSpec, CodeState, ExchangeState, OptionId,
    ProviderId, RedemptionOption,
};
use giftx_core::{Code, Currency, Digest, Hasher, LoginKey, Money, Secret, Series, Timestamp};
use giftx_ledger::redis::{RedisOptions, script_catalog};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, LedgerError, NewCode,
    Preferences, RedisLedger, Refusal,
};
use giftx_testkit::RedisServer;

/// Codes raced over by 64 tasks each.
const RACE_CODES: usize = 200;
const T0: Timestamp = Timestamp(1_400_000_000_000);
const DEADLINE: Timestamp = Timestamp(1_418_601_600_000);

struct Fx {
    server: RedisServer,
    ledger: Arc<RedisLedger>,
    hasher: Hasher,
}

fn config() -> LedgerConfig {
    LedgerConfig {
        lockout_threshold: 3,
        ..LedgerConfig::default()
    }
}

async fn setup() -> Fx {
    // Generous: the test box is shared and busy.
    setup_with(Duration::from_secs(5)).await
}

async fn setup_with(timeout: Duration) -> Fx {
    let server = RedisServer::start();
    let options = RedisOptions {
        timeout,
        ..RedisOptions::default()
    };
    let ledger = RedisLedger::connect_with(&server.url(), config(), options)
        .await
        .unwrap();
    Fx {
        server,
        ledger: Arc::new(ledger),
        hasher: Hasher::new(Secret::new(vec![42; 32])).unwrap(),
    }
}

fn spec(id: &str, deadline: Timestamp) -> CampaignSpec {
    CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("id", id).unwrap(),
        display_name: "Apology".into(),
        owner: "owner".into(),
        face_value: Money::new(Currency::from_code("JPY").unwrap(), 500),
        expire_time: deadline,
        options: vec![
            RedemptionOption {
                id: OptionId::parse("o", "amazon").unwrap(),
                display_name: "Amazon".into(),
                provider: ProviderId::parse("p", "fake").unwrap(),
            },
            RedemptionOption {
                id: OptionId::parse("o", "donation").unwrap(),
                display_name: "Donation".into(),
                provider: ProviderId::parse("p", "fake").unwrap(),
            },
        ],
    }
}

struct Printed {
    code: Code,
    key: LoginKey,
}

impl Fx {
    async fn campaign(&self, id: &str) -> Campaign {
        self.ledger
            .create_campaign(&spec(id, DEADLINE), None, T0)
            .await
            .unwrap()
    }

    async fn issue(&self, c: &Campaign, batch: &str, n: usize) -> Vec<Printed> {
        let b = self
            .ledger
            .begin_batch(
                &c.spec.id,
                &BatchId::parse("b", batch).unwrap(),
                n as u64,
                T0,
            )
            .await
            .unwrap();
        let printed: Vec<Printed> = (0..n)
            .map(|_| Printed {
                code: Code::generate(c.series).unwrap(),
                key: LoginKey::generate().unwrap(),
            })
            .collect();
        // Serials as printed: 1-based position in the batch.
        let codes: Vec<NewCode> = printed
            .iter()
            .enumerate()
            .map(|(i, p)| NewCode {
                serial: u32::try_from(i + 1).unwrap(),
                ..self.new_code(p)
            })
            .collect();
        for chunk in codes.chunks(100_000) {
            let out = self.ledger.store_codes(c, &b, chunk, T0).await.unwrap();
            assert!(out.collisions.is_empty());
        }
        self.ledger
            .finish_batch(&c.spec.id, &b.id, true, T0)
            .await
            .unwrap();
        printed
    }

    fn new_code(&self, p: &Printed) -> NewCode {
        NewCode {
            code: self.hasher.code(&p.code),
            login_key: self.hasher.login_key(&p.code, &p.key),
            serial: 1,
        }
    }

    fn code_ref(&self, p: &Printed) -> CodeRef {
        CodeRef {
            series: p.code.series(),
            digest: self.hasher.code(&p.code),
        }
    }

    fn claim_req(&self, p: &Printed, request: &str, option: &str) -> ClaimRequest {
        ClaimRequest {
            code: self.code_ref(p),
            login_key: self.hasher.login_key(&p.code, &p.key),
            option: OptionId::parse("o", option).unwrap(),
            request: self.hasher.request_id(&p.code, request),
            fingerprint: self.hasher.fingerprint(&[option.as_bytes()]),
            contact: Some(self.hasher.email("a@example.org")),
            preferences: Preferences {
                delete_personal_data: true,
                stop_mail: false,
            },
            lease: Lease {
                holder: "worker-1".into(),
                until: T0.plus(Duration::from_secs(30)),
            },
        }
    }
}

fn refusal<T: std::fmt::Debug>(r: Result<T, LedgerError>) -> Refusal {
    match r {
        Err(LedgerError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn claimed(o: ClaimOutcome) -> giftx_ledger::ExchangeRecord {
    match o {
        ClaimOutcome::Claimed(r) => r,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

#[tokio::test]
async fn create_campaign_returns_created_existing_exists_and_series_exhausted() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = l
        .create_campaign(&spec("leak", DEADLINE), Some("r1"), T0)
        .await
        .unwrap();
    assert_eq!(c.version, 1);
    // Same request id, even with another spec: the same campaign.
    let again = l
        .create_campaign(&spec("other", DEADLINE), Some("r1"), T0)
        .await
        .unwrap();
    assert_eq!(again, c);
    // Same spec, no request id: existing.
    assert_eq!(
        l.create_campaign(&spec("leak", DEADLINE), None, T0)
            .await
            .unwrap(),
        c
    );
    // Same id, other content.
    let mut other = spec("leak", DEADLINE);
    other.display_name = "x".into();
    assert_eq!(
        refusal(l.create_campaign(&other, None, T0).await),
        Refusal::CampaignExists
    );
    assert_eq!(
        l.campaign_by_series(c.series).await.unwrap(),
        Some(c.clone())
    );
    assert_eq!(l.get_campaign(&c.spec.id).await.unwrap(), Some(c.clone()));
    for i in 1..1024 {
        l.create_campaign(&spec(&format!("c{i}"), DEADLINE), None, T0)
            .await
            .unwrap();
    }
    assert_eq!(
        refusal(l.create_campaign(&spec("full", DEADLINE), None, T0).await),
        Refusal::SeriesExhausted
    );
    let first = l.list_campaigns(None, 1000).await.unwrap();
    assert_eq!(first.items.len(), 1000);
    assert_eq!(first.items[0], c);
    let rest = l.list_campaigns(first.next.as_deref(), 1000).await.unwrap();
    assert_eq!(rest.items.len(), 24);
    assert_eq!(rest.next, None);
}

#[tokio::test]
async fn extend_campaign_moves_deadline_for_every_code_and_refuses_earlier() {
    let fx = setup().await;
    let l = &fx.ledger;
    assert_eq!(
        refusal(
            l.extend_campaign(
                &CampaignId::parse("c", "nope").unwrap(),
                DEADLINE,
                false,
                T0
            )
            .await
        ),
        Refusal::CampaignNotFound
    );
    let c = fx.campaign("leak").await;
    let codes = fx.issue(&c, "b1", 50).await;
    let after = DEADLINE.plus(Duration::from_millis(1));
    assert_eq!(
        refusal(
            l.claim(&fx.claim_req(&codes[0], "r", "amazon"), after)
                .await
        ),
        Refusal::Expired
    );
    // Same deadline: no change, no new version.
    assert_eq!(
        l.extend_campaign(&c.spec.id, DEADLINE, false, T0)
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        refusal(
            l.extend_campaign(&c.spec.id, Timestamp(DEADLINE.0 - 1), false, T0)
                .await
        ),
        Refusal::DeadlineEarlier
    );
    let later = DEADLINE.plus(Duration::from_secs(86_400));
    let e = l
        .extend_campaign(&c.spec.id, later, false, after)
        .await
        .unwrap();
    assert_eq!((e.version, e.spec.expire_time), (2, later));
    claimed(
        l.claim(&fx.claim_req(&codes[0], "r", "amazon"), after)
            .await
            .unwrap(),
    );
    // Forced earlier: not before now (nothing may vanish), down to now.
    assert_eq!(
        refusal(l.extend_campaign(&c.spec.id, DEADLINE, true, after).await),
        Refusal::DeadlineInPast
    );
    let f = l
        .extend_campaign(&c.spec.id, after, true, after)
        .await
        .unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(
        refusal(
            l.claim(&fx.claim_req(&codes[1], "r", "amazon"), after)
                .await
        ),
        Refusal::Expired
    );
}

#[tokio::test]
async fn deadline_is_exact_to_the_millisecond() {
    let fx = setup().await;
    let c = fx.campaign("leak").await;
    let codes = fx.issue(&c, "b1", 2).await;
    let l = &fx.ledger;
    claimed(
        l.claim(
            &fx.claim_req(&codes[0], "r", "amazon"),
            Timestamp(DEADLINE.0 - 1),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        refusal(
            l.claim(&fx.claim_req(&codes[1], "r", "amazon"), DEADLINE)
                .await
        ),
        Refusal::Expired
    );
    let v = l
        .verify(
            fx.code_ref(&codes[1]),
            fx.new_code(&codes[1]).login_key,
            DEADLINE,
        )
        .await
        .unwrap();
    assert_eq!(v.state, CodeState::Expired);
    // A claim begun before the deadline finishes after it.
    let pending = l
        .verify(
            fx.code_ref(&codes[0]),
            fx.new_code(&codes[0]).login_key,
            DEADLINE,
        )
        .await
        .unwrap();
    let id = pending.latest_exchange.unwrap().id;
    let done = l
        .complete(&id, Some(vec![1, 2, 3]), Timestamp(DEADLINE.0 + 1))
        .await
        .unwrap();
    assert_eq!(done.state, ExchangeState::Succeeded);
}

#[tokio::test]
async fn batches_return_every_documented_outcome() {
    let fx = setup().await;
    let l = &fx.ledger;
    let nope = CampaignId::parse("c", "nope").unwrap();
    let b1 = BatchId::parse("b", "b1").unwrap();
    assert_eq!(
        refusal(l.begin_batch(&nope, &b1, 10, T0).await),
        Refusal::CampaignNotFound
    );
    let c = fx.campaign("leak").await;
    assert_eq!(
        refusal(l.begin_batch(&c.spec.id, &b1, 10, DEADLINE).await),
        Refusal::CampaignExpired
    );
    let b = l.begin_batch(&c.spec.id, &b1, 10, T0).await.unwrap();
    assert_eq!((b.ordinal, b.state, b.issued), (1, BatchState::Issuing, 0));
    assert_eq!(
        refusal(l.begin_batch(&c.spec.id, &b1, 10, T0).await),
        Refusal::BatchExists
    );

    let p: Vec<Printed> = (0..10)
        .map(|_| Printed {
            code: Code::generate(c.series).unwrap(),
            key: LoginKey::generate().unwrap(),
        })
        .collect();
    let mut chunk: Vec<NewCode> = p[..6].iter().map(|x| fx.new_code(x)).collect();
    chunk.push(fx.new_code(&p[0])); // duplicate in the chunk
    let out = l.store_codes(&c, &b, &chunk, T0).await.unwrap();
    assert_eq!((out.issued, out.collisions), (6, vec![6]));
    let chunk: Vec<NewCode> = p[5..].iter().map(|x| fx.new_code(x)).collect();
    let out = l.store_codes(&c, &b, &chunk, T0).await.unwrap();
    assert_eq!((out.issued, out.collisions), (10, vec![0]));
    assert_eq!(
        l.get_batch(&c.spec.id, &b1, T0)
            .await
            .unwrap()
            .unwrap()
            .issued,
        10
    );

    // Stalled: reads INCOMPLETE and takes no codes.
    let late = T0.plus(Duration::from_secs(31));
    assert_eq!(
        l.get_batch(&c.spec.id, &b1, late)
            .await
            .unwrap()
            .unwrap()
            .state,
        BatchState::Incomplete
    );
    assert_eq!(
        refusal(l.store_codes(&c, &b, &chunk, late).await),
        Refusal::BatchClosed
    );

    let done = l.finish_batch(&c.spec.id, &b1, true, T0).await.unwrap();
    assert_eq!((done.state, done.issued), (BatchState::Complete, 10));
    assert_eq!(
        refusal(l.store_codes(&c, &b, &chunk, T0).await),
        Refusal::BatchClosed
    );
    let ghost = BatchId::parse("b", "ghost").unwrap();
    let mut gb = b.clone();
    gb.id = ghost.clone();
    assert_eq!(
        refusal(l.store_codes(&c, &gb, &chunk, T0).await),
        Refusal::BatchNotFound
    );
    assert_eq!(
        refusal(l.finish_batch(&c.spec.id, &ghost, true, T0).await),
        Refusal::BatchNotFound
    );
    assert_eq!(
        refusal(l.void_batch(&c.spec.id, &ghost, T0).await),
        Refusal::BatchNotFound
    );
    assert_eq!(l.get_batch(&c.spec.id, &ghost, T0).await.unwrap(), None);

    // Void: every unredeemed code reads VOID; idempotent.
    let r = claimed(
        l.claim(&fx.claim_req(&p[1], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    l.complete(&r.id, None, T0).await.unwrap();
    let v = l.void_batch(&c.spec.id, &b1, T0).await.unwrap();
    assert_eq!((v.state, v.issued), (BatchState::Void, 10));
    assert_eq!(
        l.void_batch(&c.spec.id, &b1, T0).await.unwrap().state,
        BatchState::Void
    );
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[2], "r", "amazon"), T0).await),
        Refusal::Void
    );
    let view = l
        .verify(fx.code_ref(&p[1]), fx.new_code(&p[1]).login_key, T0)
        .await
        .unwrap();
    assert_eq!(view.state, CodeState::Redeemed);
    let n = l.counts(&c.spec.id, T0).await.unwrap();
    assert_eq!((n.issued, n.void, n.redeemed, n.active), (10, 9, 1, 0));
}

#[tokio::test]
async fn claim_returns_every_documented_outcome() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 5).await;

    let req = fx.claim_req(&p[0], "r1", "amazon");
    let x = claimed(l.claim(&req, T0).await.unwrap());
    assert_eq!(
        (x.state, x.attempts, x.series),
        (ExchangeState::Pending, 1, c.series)
    );
    assert_eq!(x.contact, req.contact);
    assert!(x.preferences.delete_personal_data);
    assert_eq!(x.id.provider_key(), format!("giftx-{}", x.id.0));
    match l.claim(&req, T0).await.unwrap() {
        ClaimOutcome::Existing(e) => assert_eq!(e, x),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[0], "r1", "donation"), T0).await),
        Refusal::RequestIdReused
    );
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[0], "r2", "amazon"), T0).await),
        Refusal::InFlight
    );
    l.complete(&x.id, Some(b"sealed".to_vec()), T0)
        .await
        .unwrap();
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[0], "r3", "amazon"), T0).await),
        Refusal::AlreadyRedeemed
    );
    match l.claim(&req, T0).await.unwrap() {
        ClaimOutcome::Existing(e) => {
            assert_eq!(e.sealed_deliverable.as_deref(), Some(&b"sealed"[..]))
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[1], "r", "amazon"), DEADLINE).await),
        Refusal::Expired
    );

    // Unknown code and wrong key: the same refusal.
    let stranger = Printed {
        code: Code::generate(c.series).unwrap(),
        key: LoginKey::generate().unwrap(),
    };
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&stranger, "r", "amazon"), T0).await),
        Refusal::LoginKeyMismatch
    );
    let other_series = Printed {
        code: Code::generate(Series::from_index(999).unwrap()).unwrap(),
        key: LoginKey::generate().unwrap(),
    };
    assert_eq!(
        refusal(
            l.claim(&fx.claim_req(&other_series, "r", "amazon"), T0)
                .await
        ),
        Refusal::LoginKeyMismatch
    );
    let mut wrong = fx.claim_req(&p[2], "r", "amazon");
    wrong.login_key = Digest([9; 32]);
    assert_eq!(
        refusal(l.claim(&wrong, T0).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.claim(&wrong, T0).await),
        Refusal::LoginKeyMismatch
    );
    let until = T0.plus(config().lockout_duration);
    assert_eq!(
        refusal(l.claim(&wrong, T0).await),
        Refusal::Locked { until }
    );
    // Locked even with the right key, until the lock ends.
    assert_eq!(
        refusal(l.claim(&fx.claim_req(&p[2], "r", "amazon"), T0).await),
        Refusal::Locked { until }
    );
    claimed(
        l.claim(&fx.claim_req(&p[2], "r", "amazon"), until)
            .await
            .unwrap(),
    );
    // A right key resets the count.
    let mut w3 = fx.claim_req(&p[3], "r", "amazon");
    w3.login_key = Digest([9; 32]);
    assert_eq!(refusal(l.claim(&w3, T0).await), Refusal::LoginKeyMismatch);
    assert_eq!(refusal(l.claim(&w3, T0).await), Refusal::LoginKeyMismatch);
    l.verify(fx.code_ref(&p[3]), fx.new_code(&p[3]).login_key, T0)
        .await
        .unwrap();
    assert_eq!(refusal(l.claim(&w3, T0).await), Refusal::LoginKeyMismatch);
}

#[tokio::test]
async fn verify_and_latest_exchange_return_every_documented_outcome() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 2).await;
    let key = fx.new_code(&p[0]).login_key;
    let v = l.verify(fx.code_ref(&p[0]), key, T0).await.unwrap();
    assert_eq!((v.state, v.latest_exchange), (CodeState::Active, None));
    assert_eq!(
        refusal(l.latest_exchange(fx.code_ref(&p[0]), key, T0).await),
        Refusal::ExchangeNotFound
    );
    let x = claimed(
        l.claim(&fx.claim_req(&p[0], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    let v = l.verify(fx.code_ref(&p[0]), key, T0).await.unwrap();
    assert_eq!(
        (v.state, v.latest_exchange.as_ref()),
        (CodeState::Pending, Some(&x))
    );
    assert_eq!(
        l.latest_exchange(fx.code_ref(&p[0]), key, T0)
            .await
            .unwrap(),
        x
    );
    let bad = Digest([1; 32]);
    assert_eq!(
        refusal(l.verify(fx.code_ref(&p[1]), bad, T0).await),
        Refusal::LoginKeyMismatch
    );
    assert_eq!(
        refusal(l.verify(fx.code_ref(&p[1]), bad, T0).await),
        Refusal::LoginKeyMismatch
    );
    assert!(matches!(
        refusal(l.verify(fx.code_ref(&p[1]), bad, T0).await),
        Refusal::Locked { .. }
    ));
    assert!(matches!(
        refusal(l.latest_exchange(fx.code_ref(&p[1]), bad, T0).await),
        Refusal::Locked { .. }
    ));
}

#[tokio::test]
async fn exchange_lifecycle_returns_every_documented_outcome() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 3).await;
    let ghost = giftx_ledger::ExchangeId("0000".repeat(8));
    let lease2 = Lease {
        holder: "worker-2".into(),
        until: T0.plus(Duration::from_secs(60)),
    };
    assert_eq!(
        refusal(l.begin_attempt(&ghost, &lease2, T0).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(l.defer_attempt(&ghost, T0, false, T0).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(l.complete(&ghost, None, T0).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(l.release(&ghost, "x", false, T0).await),
        Refusal::ExchangeNotFound
    );
    assert_eq!(
        refusal(
            l.complete(&giftx_ledger::ExchangeId("bogus".into()), None, T0)
                .await
        ),
        Refusal::ExchangeNotFound
    );
    assert_eq!(l.get_exchange(&ghost).await.unwrap(), None);

    let x = claimed(
        l.claim(&fx.claim_req(&p[0], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    assert_eq!(l.get_exchange(&x.id).await.unwrap(), Some(x.clone()));
    assert_eq!(
        refusal(l.begin_attempt(&x.id, &lease2, T0).await),
        Refusal::Leased
    );
    let lapsed = T0.plus(Duration::from_secs(31));
    let a = l.begin_attempt(&x.id, &lease2, lapsed).await.unwrap();
    assert_eq!(a.attempts, 2);
    let d = l
        .defer_attempt(&x.id, lapsed.plus(Duration::from_secs(5)), true, lapsed)
        .await
        .unwrap();
    assert!(d.parked);
    assert_eq!(d.next_attempt_time, lapsed.plus(Duration::from_secs(5)));
    // Lease dropped: anyone may take it now.
    assert_eq!(
        l.begin_attempt(&x.id, &lease2, T0).await.unwrap().attempts,
        3
    );

    let pend = l.list_pending(lapsed, None, 10).await.unwrap();
    assert_eq!(pend.items.len(), 1);
    let s = l.complete(&x.id, Some(vec![7; 40]), lapsed).await.unwrap();
    assert_eq!((s.state, s.update_time), (ExchangeState::Succeeded, lapsed));
    assert_eq!(l.complete(&x.id, Some(vec![1]), T0).await.unwrap(), s);
    assert_eq!(
        refusal(l.release(&x.id, "no", false, T0).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(
        refusal(l.begin_attempt(&x.id, &lease2, lapsed).await),
        Refusal::ExchangeFinished
    );
    assert_eq!(
        refusal(l.defer_attempt(&x.id, T0, false, T0).await),
        Refusal::ExchangeFinished
    );
    assert!(
        l.list_pending(lapsed, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let y = claimed(
        l.claim(&fx.claim_req(&p[1], "r", "donation"), T0)
            .await
            .unwrap(),
    );
    let f = l.release(&y.id, "out of stock", false, T0).await.unwrap();
    assert_eq!(
        (f.state, f.failure_reason.as_str()),
        (ExchangeState::Failed, "out of stock")
    );
    assert_eq!(l.release(&y.id, "again", false, T0).await.unwrap(), f);
    assert_eq!(
        refusal(l.complete(&y.id, None, T0).await),
        Refusal::ExchangeFinished
    );
    // The code is ACTIVE again and may be exchanged anew.
    let v = l
        .verify(fx.code_ref(&p[1]), fx.new_code(&p[1]).login_key, T0)
        .await
        .unwrap();
    assert_eq!(v.state, CodeState::Active);
    let y2 = claimed(
        l.claim(&fx.claim_req(&p[1], "r2", "amazon"), T0)
            .await
            .unwrap(),
    );
    assert_ne!(y2.id, y.id);

    let n = l.counts(&c.spec.id, T0).await.unwrap();
    assert_eq!((n.issued, n.active, n.pending, n.redeemed), (3, 1, 1, 1));
    assert_eq!(
        n.by_option[0],
        (OptionId::parse("o", "amazon").unwrap(), 1, 1)
    );
    assert_eq!(
        n.by_option[1],
        (OptionId::parse("o", "donation").unwrap(), 0, 0)
    );
    let n = l.counts(&c.spec.id, DEADLINE).await.unwrap();
    assert_eq!((n.active, n.expired, n.pending), (0, 1, 1));
}

#[tokio::test]
async fn sweep_reports_once_and_unsweeps_on_extend() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 30).await;
    claimed(
        l.claim(&fx.claim_req(&p[0], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    assert_eq!(l.sweep(&c.spec.id, T0).await.unwrap().expired, 0);
    let s = l.sweep(&c.spec.id, DEADLINE).await.unwrap();
    assert_eq!((s.expired, s.buckets), (29, 4096));
    assert_eq!(l.sweep(&c.spec.id, DEADLINE).await.unwrap().expired, 0);
    let later = DEADLINE.plus(Duration::from_secs(3600));
    l.extend_campaign(&c.spec.id, later, false, DEADLINE)
        .await
        .unwrap();
    assert_eq!(l.counts(&c.spec.id, DEADLINE).await.unwrap().active, 29);
    claimed(
        l.claim(&fx.claim_req(&p[1], "r", "amazon"), DEADLINE)
            .await
            .unwrap(),
    );
    assert_eq!(l.sweep(&c.spec.id, later).await.unwrap().expired, 28);
    assert_eq!(
        refusal(l.sweep(&CampaignId::parse("c", "nope").unwrap(), T0).await),
        Refusal::CampaignNotFound
    );
}

#[tokio::test]
async fn singleton_leases_and_events() {
    let fx = setup().await;
    let l = &fx.ledger;
    let a = Lease {
        holder: "a".into(),
        until: T0.plus(Duration::from_secs(10)),
    };
    let b = Lease {
        holder: "b".into(),
        until: T0.plus(Duration::from_secs(20)),
    };
    assert!(l.acquire_lease("sweeper", &a, T0).await.unwrap());
    assert!(!l.acquire_lease("sweeper", &b, T0).await.unwrap());
    assert!(l.acquire_lease("sweeper", &a, T0).await.unwrap());
    l.release_lease("sweeper", "b").await.unwrap();
    assert!(!l.acquire_lease("sweeper", &b, T0).await.unwrap());
    l.release_lease("sweeper", "a").await.unwrap();
    assert!(l.acquire_lease("sweeper", &b, T0).await.unwrap());
    assert!(
        l.acquire_lease("sweeper", &a, a.until.plus(Duration::from_secs(11)))
            .await
            .unwrap()
    );

    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 1).await;
    let x = claimed(
        l.claim(&fx.claim_req(&p[0], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    l.complete(&x.id, None, T0).await.unwrap();
    let ev = l.recent_events(3).await.unwrap();
    let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["batch.finished", "code.claimed", "exchange.succeeded"]
    );
    assert!(ev[2].fields.contains(&("exchange".into(), x.id.0.clone())));
}

#[tokio::test]
async fn list_pending_pages_through_every_bucket() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 25).await;
    for (i, x) in p.iter().enumerate() {
        let mut r = fx.claim_req(x, "r", "amazon");
        r.lease.until = T0;
        let t = T0.plus(Duration::from_millis(i as u64));
        claimed(l.claim(&r, t).await.unwrap());
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = l
            .list_pending(T0.plus(Duration::from_millis(19)), cursor.as_deref(), 7)
            .await
            .unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.into_iter().map(|x| x.id));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_racing_claims_give_exactly_one_claimed_per_code() {
    let fx = setup().await;
    let c = fx.campaign("leak").await;
    let p = Arc::new(fx.issue(&c, "b1", RACE_CODES).await);
    let fx = Arc::new(fx);
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (fx, p) = (fx.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = 0usize;
            for x in p.iter() {
                match fx
                    .ledger
                    .claim(&fx.claim_req(x, &format!("task-{t}"), "amazon"), T0)
                    .await
                {
                    Ok(ClaimOutcome::Claimed(_)) => won += 1,
                    Err(LedgerError::Refused(Refusal::InFlight)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            won
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, RACE_CODES);
    let n = fx.ledger.counts(&c.spec.id, T0).await.unwrap();
    assert_eq!((n.pending, n.active), (RACE_CODES as i64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_is_invisible_to_callers() {
    let fx = setup().await;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 200).await;
    let url = fx.server.url();
    let flusher = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for _ in 0..20 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for x in &p {
        let r = claimed(
            fx.ledger
                .claim(&fx.claim_req(x, "r", "amazon"), T0)
                .await
                .unwrap(),
        );
        fx.ledger.complete(&r.id, None, T0).await.unwrap();
    }
    flusher.await.unwrap();
    assert_eq!(
        fx.ledger.counts(&c.spec.id, T0).await.unwrap().redeemed,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill_and_calls_fail_fast_while_down() {
    let mut fx = setup_with(Duration::from_millis(500)).await;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 100).await;
    let mut done = Vec::new();
    for x in &p[..50] {
        let r = claimed(
            fx.ledger
                .claim(&fx.claim_req(x, "r", "amazon"), T0)
                .await
                .unwrap(),
        );
        fx.ledger.complete(&r.id, Some(vec![1]), T0).await.unwrap();
        done.push(r.id);
    }
    fx.server.kill();
    let started = Instant::now();
    let err = fx
        .ledger
        .claim(&fx.claim_req(&p[60], "r", "amazon"), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(matches!(
        fx.ledger.get_exchange(&done[0]).await,
        Err(LedgerError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    fx.server.restart();
    // The same ledger works again; its script cache on the server is gone.
    let mut ok = None;
    for _ in 0..50 {
        match fx.ledger.get_exchange(&done[0]).await {
            Ok(x) => {
                ok = x;
                break;
            }
            Err(LedgerError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok.unwrap().state, ExchangeState::Succeeded);
    for id in &done {
        assert_eq!(
            fx.ledger.get_exchange(id).await.unwrap().unwrap().state,
            ExchangeState::Succeeded
        );
    }
    assert_eq!(
        refusal(
            fx.ledger
                .claim(&fx.claim_req(&p[0], "x", "amazon"), T0)
                .await
        ),
        Refusal::AlreadyRedeemed
    );
    claimed(
        fx.ledger
            .claim(&fx.claim_req(&p[60], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    let n = fx.ledger.counts(&c.spec.id, T0).await.unwrap();
    assert_eq!((n.redeemed, n.pending, n.active), (50, 1, 49));
}

#[test]
fn every_script_header_matches_its_file_name_and_its_wrapper() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
    let catalog = script_catalog();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".lua"))
        .collect();
    files.sort();
    let mut names: Vec<String> = catalog.iter().map(|c| c.0.to_owned()).collect();
    names.sort();
    assert_eq!(files, names, "every lua file is loaded, and only those");
    for (file, wrapper_keys, source) in catalog {
        let from_name: usize = file
            .trim_end_matches(".lua")
            .rsplit_once('-')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let header: Vec<&str> = source.lines().take_while(|l| l.starts_with("--")).collect();
        let keys: Vec<usize> = header
            .iter()
            .filter_map(|l| l.strip_prefix("-- KEYS[")?.split(']').next()?.parse().ok())
            .collect();
        assert_eq!(
            keys,
            (1..=from_name).collect::<Vec<_>>(),
            "{file}: KEYS in header"
        );
        assert_eq!(wrapper_keys, from_name, "{file}: wrapper key count");
        assert!(
            header.iter().any(|l| l.starts_with("-- Returns")),
            "{file}: Returns"
        );
        let first_code = source.lines().find(|l| !l.starts_with("--")).unwrap();
        assert_eq!(first_code, "local rcall = redis.call", "{file}");
        assert!(
            !source.contains("'TIME'") && !source.contains("\"TIME\""),
            "{file}: no TIME"
        );
        let max_used = (1..=9)
            .rev()
            .find(|i| source.contains(&format!("KEYS[{i}]")))
            .unwrap_or(0);
        assert_eq!(max_used, from_name, "{file}: KEYS used in code");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_hash_tag_and_no_plaintext_reaches_redis() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let p = fx.issue(&c, "b1", 50).await;
    for x in &p[..10] {
        let r = claimed(l.claim(&fx.claim_req(x, "r", "amazon"), T0).await.unwrap());
        l.complete(&r.id, Some(b"sealed-bytes".to_vec()), T0)
            .await
            .unwrap();
    }
    l.acquire_lease(
        "sweeper",
        &Lease {
            holder: "h".into(),
            until: T0,
        },
        T0,
    )
    .await
    .unwrap();
    l.sweep(&c.spec.id, DEADLINE).await.unwrap();
    let mut conn = fx.server.connection();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.len() > 10);
    let mut dump = Vec::new();
    for k in &keys {
        let s = String::from_utf8_lossy(k);
        let open = s.find('{').unwrap_or_else(|| panic!("no hash tag: {s}"));
        let close = s[open..]
            .find('}')
            .unwrap_or_else(|| panic!("no hash tag: {s}"));
        assert!(close > 1, "empty hash tag: {s}");
        let d: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut conn).unwrap();
        dump.extend(d);
        dump.extend(k);
    }
    let hay = String::from_utf8_lossy(&dump).to_uppercase();
    for x in &p {
        assert!(!hay.contains(x.code.canonical()), "plaintext code found");
        assert!(
            !hay.contains(x.key.canonical()),
            "plaintext login key found"
        );
    }
    assert!(!hay.contains("A@EXAMPLE.ORG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_code_costs_at_most_160_bytes() {
    const N: usize = 100_000;
    let fx = setup().await;
    let c = fx.campaign("leak").await;
    let mut conn = fx.server.connection();
    let used = |conn: &mut redis::Connection| -> i64 {
        let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = used(&mut conn);
    fx.issue(&c, "b1", N).await;
    let per_code = (used(&mut conn) - before) as f64 / N as f64;
    println!("bytes per code: {per_code:.1}");
    for k in ["{b0}:e", "{b0}:m:0", "{b0}:c:0", "{b1}:c:0"] {
        let n: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .query(&mut conn)
            .unwrap();
        let len: i64 = redis::cmd("HLEN").arg(k).query(&mut conn).unwrap_or(-1);
        println!("{k}: {n:?} ({len})");
    }
    assert!(per_code <= 160.0, "{per_code} bytes per code");
}

/// The key and field of a code's record (see `keys.rs`: bucket from the
/// digest's first two bytes, field its next ten).
fn code_slot(fx: &Fx, p: &Printed) -> (u16, Vec<u8>) {
    let d = fx.hasher.code(&p.code).0;
    (u16::from_be_bytes([d[0], d[1]]) % 4096, d[2..12].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_and_batch_ordinal_round_trip_from_store_to_every_exchange_reply() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let s = c.series.index();
    let b1 = fx.issue(&c, "b1", 300).await;
    let b2 = fx.issue(&c, "b2", 3).await;
    let mut conn = fx.server.connection();
    // The code record: state, login8, seq2, serial (4 bytes big-endian),
    // batch ordinal (decimal).
    for (p, serial, ord) in [(&b1[0], 1u32, "1"), (&b1[299], 300, "1"), (&b2[2], 3, "2")] {
        let (bucket, field) = code_slot(&fx, p);
        let rec: Vec<u8> = redis::cmd("HGET")
            .arg(format!("{{b{bucket}}}:c:{s}"))
            .arg(&field)
            .query(&mut conn)
            .unwrap();
        assert_eq!(rec[0], b'A');
        assert_eq!(&rec[9..11], &[0, 0]);
        assert_eq!(&rec[11..15], &serial.to_be_bytes());
        assert_eq!(&rec[15..], ord.as_bytes());
    }
    // Claim (with a preference), verify, attempt, defer, complete, re-read:
    // every reply carries the code's batch ordinal and serial.
    let p = &b1[166];
    let x = claimed(l.claim(&fx.claim_req(p, "r", "amazon"), T0).await.unwrap());
    assert_eq!((x.batch_ordinal, x.serial), (1, 167));
    let v = l
        .verify(fx.code_ref(p), fx.new_code(p).login_key, T0)
        .await
        .unwrap();
    assert_eq!(v.latest_exchange.as_ref(), Some(&x));
    let lease = Lease {
        holder: "worker-2".into(),
        until: T0.plus(Duration::from_secs(600)),
    };
    let later = T0.plus(Duration::from_secs(60));
    for r in [
        l.begin_attempt(&x.id, &lease, later).await.unwrap(),
        l.defer_attempt(&x.id, later, false, later).await.unwrap(),
        l.complete(&x.id, None, later).await.unwrap(),
        l.get_exchange(&x.id).await.unwrap().unwrap(),
    ] {
        assert_eq!((r.batch_ordinal, r.serial), (1, 167));
    }
    let y = claimed(
        l.claim(&fx.claim_req(&b2[0], "r", "donation"), T0)
            .await
            .unwrap(),
    );
    let y = l.release(&y.id, "no", false, T0).await.unwrap();
    assert_eq!((y.batch_ordinal, y.serial), (2, 1));
    // The code record keeps serial and ordinal through claim and complete.
    let (bucket, field) = code_slot(&fx, p);
    let rec: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{{b{bucket}}}:c:{s}"))
        .arg(&field)
        .query(&mut conn)
        .unwrap();
    assert_eq!(rec[0], b'R');
    assert_eq!(&rec[9..11], &[0, 1]);
    assert_eq!(&rec[11..15], &167u32.to_be_bytes());
    assert_eq!(&rec[15..], b"1");
    // The preference index of the bucket expires with its codes, also
    // after the deadline moves.
    let pttl = |conn: &mut redis::Connection, k: &str| -> i64 {
        redis::cmd("PTTL").arg(k).query(conn).unwrap()
    };
    let (ck, fk) = (
        format!("{{b{bucket}}}:c:{s}"),
        format!("{{b{bucket}}}:f:{s}"),
    );
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(&fk)
        .arg(&x.id.0)
        .query(&mut conn)
        .unwrap();
    assert_eq!(score, Some(T0.0 as f64));
    assert!((pttl(&mut conn, &ck) - pttl(&mut conn, &fk)).abs() < 5_000);
    let moved = DEADLINE.plus(Duration::from_secs(30 * 86_400));
    l.extend_campaign(&c.spec.id, moved, false, later)
        .await
        .unwrap();
    let (tc, tf) = (pttl(&mut conn, &ck), pttl(&mut conn, &fk));
    assert!(
        tf > 0 && (tc - tf).abs() < 5_000,
        "codes {tc} ms, index {tf} ms"
    );
}

/// A claim (or a store, or a sweep) that meets a newer deadline version
/// than its bucket's copy syncs the copy itself. The push that follows the
/// extension must still move the TTLs of that bucket's keys: before, it
/// saw a current copy and skipped the bucket, and the exchanges kept the
/// old deadline's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_moves_ttls_of_a_bucket_whose_copy_a_claim_already_synced() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let s = c.series.index();
    let codes = fx.issue(&c, "b1", 3).await;
    claimed(
        l.claim(&fx.claim_req(&codes[0], "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    let (bucket, _) = code_slot(&fx, &codes[0]);
    let (xk, mk) = (
        format!("{{b{bucket}}}:x:{s}"),
        format!("{{b{bucket}}}:m:{s}"),
    );
    let mut conn = fx.server.connection();
    let pttl = |conn: &mut redis::Connection, k: &str| -> i64 {
        redis::cmd("PTTL").arg(k).query(conn).unwrap()
    };
    let before = pttl(&mut conn, &xk);
    assert!(before > 0, "the exchanges hash has a TTL: {before}");
    // As if a claim with a fresher campaign cache had synced version 2 into
    // this bucket before the extension's push reached it.
    let moved = DEADLINE.plus(Duration::from_secs(90 * 86_400));
    let () = redis::cmd("HSET")
        .arg(&mk)
        .arg("dl")
        .arg(moved.0)
        .arg("ver")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    let e = l
        .extend_campaign(&c.spec.id, moved, false, T0)
        .await
        .unwrap();
    assert_eq!(e.version, 2);
    let after = pttl(&mut conn, &xk);
    let gained = after - before;
    assert!(
        (gained - 90 * 86_400_000).abs() < 60_000,
        "the exchanges' TTL moved by {gained} ms, not by the 90 days the deadline moved"
    );
}

/// Kills every normal client connection (the ledger's) from a separate
/// connection, which `CLIENT KILL` skips.
fn kill_clients(server: &RedisServer) -> u64 {
    let mut c = server.connection();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query::<u64>(&mut c)
        .unwrap()
}

/// Verify and re-display of `codes` (every other one claimed), `n` calls
/// in all, 50 at a time; the number that failed.
async fn redisplay_load(fx: &Fx, codes: &[Printed], n: usize) -> usize {
    use futures::StreamExt;
    let now = T0.plus(Duration::from_secs(1));
    futures::stream::iter(0..n)
        .map(|i| async move {
            let p = &codes[i % codes.len()];
            let key = fx.hasher.login_key(&p.code, &p.key);
            let ok = if i % 2 == 0 {
                fx.ledger.verify(fx.code_ref(p), key, now).await.is_ok()
            } else {
                let r = fx.ledger.latest_exchange(fx.code_ref(p), key, now).await;
                // Unclaimed codes have no exchange: a refusal is an answer.
                !matches!(
                    r,
                    Err(LedgerError::Unavailable(_) | LedgerError::Internal(_))
                )
            };
            usize::from(!ok)
        })
        .buffer_unordered(50)
        .fold(0, |a, b| async move { a + b })
        .await
}

/// Issue 12 item 8: connections Redis closed (`CLIENT KILL TYPE normal`)
/// during a load and while idle fail no call made once Redis answers
/// again: a dead pooled connection is replaced before it is handed out
/// (before the fix, each dead connection failed the next call on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_fail_no_call_once_redis_answers() {
    let fx = setup().await;
    let c = fx.campaign("killed").await;
    let codes = fx.issue(&c, "b", 40).await;
    for p in codes.iter().step_by(2) {
        fx.ledger
            .claim(&fx.claim_req(p, "r", "amazon"), T0)
            .await
            .unwrap();
    }
    // Killed in the middle of a load (its errors are not counted) ...
    let (_, killed) = tokio::join!(redisplay_load(&fx, &codes, 2000), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        kill_clients(&fx.server)
    });
    assert!(killed > 0, "the ledger had connections to kill");
    // ... and again while every connection sits idle.
    assert!(kill_clients(&fx.server) > 0);
    // Redis answers again (it never stopped): no call may fail now.
    let ping = || redis::cmd("PING").query::<String>(&mut fx.server.connection());
    ping().unwrap();
    for round in 0..3 {
        assert_eq!(redisplay_load(&fx, &codes, 400).await, 0, "round {round}");
        // A write (a claim) on a connection that died while idle too.
        kill_clients(&fx.server);
        ping().unwrap();
        let p = &codes[1 + 2 * round];
        let r = fx.ledger.claim(&fx.claim_req(p, "r", "amazon"), T0).await;
        assert!(r.is_ok(), "round {round}: {r:?}");
    }
}

/// Issue 12 item 9: `rediss://` works (the redis crate was built without
/// TLS): the ledger reaches a TLS-only listener through the CA it is
/// given, as an ACL user whose password comes in the options (not the
/// URL); without the CA, with a wrong password or as `default`, it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_with_an_acl_user_serves_the_ledger() {
    use giftx_ledger::redis::{RedisPassword, TlsOptions};
    use giftx_testkit::redis::{ACL_PASSWORD, ACL_USER};
    let server = RedisServer::start_tls();
    let ca = std::fs::read(server.ca_file()).unwrap();
    let url = server
        .tls_url()
        .replace("rediss://", &format!("rediss://{ACL_USER}@"));
    let options = |password: &str, ca: Option<Vec<u8>>| RedisOptions {
        tls: TlsOptions { ca_pem: ca },
        password: Some(RedisPassword(password.into())),
        ..RedisOptions::default()
    };
    let ledger = RedisLedger::connect_with(&url, config(), options(ACL_PASSWORD, Some(ca.clone())))
        .await
        .unwrap();
    let fx = Fx {
        server,
        ledger: Arc::new(ledger),
        hasher: Hasher::new(Secret::new(vec![42; 32])).unwrap(),
    };
    let c = fx.campaign("tls").await;
    let codes = fx.issue(&c, "b", 10).await;
    let p = &codes[3];
    claimed(
        fx.ledger
            .claim(&fx.claim_req(p, "r", "amazon"), T0)
            .await
            .unwrap(),
    );
    let key = fx.hasher.login_key(&p.code, &p.key);
    fx.ledger
        .latest_exchange(fx.code_ref(p), key, T0)
        .await
        .unwrap();
    // The provider store shares the connections.
    let store = fx.ledger.provider_store();
    let ns = ProviderId::parse("p", "stock").unwrap();
    use giftx_provider::ProviderStore;
    assert!(store.put_if_absent(&ns, "k", b"v").await.unwrap().created);
    // The data went to the TLS server's Redis (seen on its plain port).
    let mut admin = fx.server.connection();
    let n: i64 = redis::cmd("DBSIZE").query(&mut admin).unwrap();
    assert!(n > 0);
    // Refused: no CA, a wrong password, and `default` (no user).
    let no_ca = RedisLedger::connect_with(&url, config(), options(ACL_PASSWORD, None)).await;
    assert!(
        matches!(&no_ca, Err(LedgerError::Internal(m)) if m.contains("GIFTX_REDIS_CA_FILE")),
        "{no_ca:?}"
    );
    let wrong = RedisLedger::connect_with(&url, config(), options("nope", Some(ca.clone()))).await;
    assert!(wrong.is_err());
    let plain_tls = fx.server.tls_url();
    let anonymous = RedisLedger::connect_with(
        &plain_tls,
        config(),
        RedisOptions {
            tls: TlsOptions {
                ca_pem: Some(ca.clone()),
            },
            ..RedisOptions::default()
        },
    )
    .await;
    assert!(anonymous.is_err());
    // Another CA does not vouch for the server.
    let other = RedisServer::start_tls();
    let other_ca = std::fs::read(other.ca_file()).unwrap();
    let untrusted =
        RedisLedger::connect_with(&url, config(), options(ACL_PASSWORD, Some(other_ca))).await;
    assert!(
        untrusted.is_err(),
        "a certificate from another CA was accepted"
    );
}

/// Redis commands run since the last `CONFIG RESETSTAT`, the scripts' own
/// calls included (Redis counts those too), INFO and CONFIG aside.
fn commands_run(server: &RedisServer) -> u64 {
    let mut c = server.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter(|l| !l.starts_with("cmdstat_info") && !l.starts_with("cmdstat_config"))
        // The foreground marker (`{g}:fg`: a SET at most every 100 ms from a
        // spawned task, an EXISTS when issuance asks) is not the claim's
        // work, and its timing is the scheduler's.
        .filter(|l| !l.starts_with("cmdstat_set:") && !l.starts_with("cmdstat_exists:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// The commands one claim costs Redis, with the campaign cache empty so
/// every measured claim loads it the same way.
async fn claim_cost(fx: &Fx, req: &ClaimRequest) -> (u64, Result<ClaimOutcome, LedgerError>) {
    fx.ledger.forget_cache();
    let mut c = fx.server.connection();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let out = fx.ledger.claim(req, T0).await;
    (commands_run(&fx.server), out)
}

/// Issue 12 item 2: every refused exchange used to add a record that the
/// next claim of the code scanned. The work of a claim must not depend on
/// the code's history, and the history is capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_redis_work_does_not_grow_with_the_codes_history() {
    let fx = setup().await;
    let c = fx.campaign("bounded").await;
    let codes = fx.issue(&c, "b1", 3).await;
    let max = giftx_ledger::MAX_FAILED_EXCHANGES;
    // `refusals` refused exchanges of `p`, permanent and retryable in turn.
    let refuse = |p: &Printed, refusals: u32| {
        let fx = &fx;
        let reqs: Vec<ClaimRequest> = (0..refusals)
            .map(|i| fx.claim_req(p, &format!("old-{i}"), "amazon"))
            .collect();
        async move {
            for (i, r) in reqs.iter().enumerate() {
                let x = claimed(fx.ledger.claim(r, T0).await.unwrap());
                fx.ledger
                    .release(&x.id, "REFUSED", i % 2 == 1, T0)
                    .await
                    .unwrap();
            }
        }
    };
    let (fresh, out) = claim_cost(&fx, &fx.claim_req(&codes[0], "new", "amazon")).await;
    claimed(out.unwrap());
    refuse(&codes[1], 1).await;
    let (one, out) = claim_cost(&fx, &fx.claim_req(&codes[1], "new", "amazon")).await;
    claimed(out.unwrap());
    refuse(&codes[2], max - 1).await;
    let (many, out) = claim_cost(&fx, &fx.claim_req(&codes[2], "new", "amazon")).await;
    let last = claimed(out.unwrap());
    assert_eq!(
        many,
        one,
        "a claim after {} refusals costs what one after 1 does",
        max - 1
    );
    // A code with history reads its latest record once more than a fresh
    // code (a record written before the request index is compared too).
    assert!(one <= fresh + 1, "fresh {fresh}, with history {one}");
    // At the cap: a new request is refused, a repeated one answered, and
    // neither costs more than claiming a fresh code.
    fx.ledger
        .release(&last.id, "REFUSED", false, T0)
        .await
        .unwrap();
    let (capped, out) = claim_cost(&fx, &fx.claim_req(&codes[2], "newer", "amazon")).await;
    assert_eq!(refusal(out), Refusal::TooManyAttempts);
    assert!(
        capped <= fresh,
        "fresh {fresh}, refused at the cap {capped}"
    );
    let (repeat, out) = claim_cost(&fx, &fx.claim_req(&codes[2], "old-0", "amazon")).await;
    match out.unwrap() {
        ClaimOutcome::Existing(x) => assert_eq!(x.state, ExchangeState::Failed),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert!(
        repeat <= fresh,
        "fresh {fresh}, repeated at the cap {repeat}"
    );
}

/// Issue 12 item 9: a wrong key for a code that does not exist does the
/// same write as one for a real code (a lockout entry), and every lockout
/// entry is a key of its own that Redis drops after the lockout duration
/// (no hash that grows with guesses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_entries_are_written_alike_and_expire_in_redis() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let codes = fx.issue(&c, "b1", 1).await;
    let stranger = Printed {
        code: Code::generate(c.series).unwrap(),
        key: LoginKey::generate().unwrap(),
    };
    let no_campaign = Printed {
        code: Code::generate(Series::from_index(999).unwrap()).unwrap(),
        key: LoginKey::generate().unwrap(),
    };
    let mut conn = fx.server.connection();
    let duration = i64::try_from(config().lockout_duration.as_millis()).unwrap();
    for p in [&codes[0], &stranger, &no_campaign] {
        let (bucket, field) = code_slot(&fx, p);
        let key = format!(
            "{{b{bucket}}}:l:{}:{}",
            p.code.series().index(),
            hex::encode(&field)
        );
        assert_eq!(
            refusal(l.verify(fx.code_ref(p), Digest([9; 32]), T0).await),
            Refusal::LoginKeyMismatch
        );
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
        assert!(
            pttl > 0 && pttl <= duration,
            "{key}: PTTL {pttl}, lockout {duration} ms"
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("{b*}:l*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
}

/// A purge step run with a stale campaign version (a sweeper that read the
/// campaign before its deadline moved) leaves a bucket whose deadline copy
/// is newer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_bucket_spares_a_bucket_with_a_newer_deadline_copy() {
    let fx = setup().await;
    let l = &fx.ledger;
    let c = fx.campaign("leak").await;
    let s = c.series.index();
    let codes = fx.issue(&c, "b1", 1).await;
    let later = DEADLINE.plus(Duration::from_secs(86_400));
    let e = l
        .extend_campaign(&c.spec.id, later, false, T0)
        .await
        .unwrap();
    assert_eq!(e.version, 2);
    let (bucket, _) = code_slot(&fx, &codes[0]);
    let k = |t: &str| format!("{{b{bucket}}}:{t}:{s}");
    let source = script_catalog()
        .into_iter()
        .find(|(f, _, _)| *f == "purge_bucket-6.lua")
        .unwrap()
        .2;
    let mut conn = fx.server.connection();
    let run = |conn: &mut redis::Connection, version: u64| -> Vec<i64> {
        redis::cmd("EVAL")
            .arg(source)
            .arg(6)
            .arg(k("m"))
            .arg(format!("{{b{bucket}}}:e"))
            .arg(k("c"))
            .arg(k("x"))
            .arg(format!("{{b{bucket}}}:p"))
            .arg(k("f"))
            .arg(T0.0)
            .arg(version)
            .arg(0)
            .arg(hex::encode(s.to_be_bytes()))
            .query(conn)
            .unwrap()
    };
    assert_eq!(run(&mut conn, 1), vec![0, 0]);
    let exists: i64 = redis::cmd("EXISTS").arg(k("c")).query(&mut conn).unwrap();
    assert_eq!(exists, 1, "a stale purge deleted the codes");
    l.verify(fx.code_ref(&codes[0]), fx.new_code(&codes[0]).login_key, T0)
        .await
        .unwrap();
    // At the bucket's own version it purges.
    assert_eq!(run(&mut conn, 2), vec![0, 1]);
    let exists: i64 = redis::cmd("EXISTS").arg(k("c")).query(&mut conn).unwrap();
    assert_eq!(exists, 0);
}

/// Issuance yields to foreground scripts (claims, verifies): its stores
/// then take turns and pause, so a chunk can take longer than the batch
/// stall timeout. The batch must stay alive while its chunk is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_stored_while_yielding_to_foreground_work_keeps_its_batch_alive() {
    let server = RedisServer::start();
    let stall = Duration::from_millis(150);
    let ledger = Arc::new(
        RedisLedger::connect_with(
            &server.url(),
            LedgerConfig {
                batch_stall_timeout: stall,
                ..config()
            },
            RedisOptions::default(),
        )
        .await
        .unwrap(),
    );
    let fx = Fx {
        server,
        ledger: ledger.clone(),
        hasher: Hasher::new(Secret::new(vec![42; 32])).unwrap(),
    };
    let c = fx.campaign("yield").await;
    let real = fx.issue(&c, "real", 1).await;
    // Foreground work all along: a verify every 20 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fg = {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        let (code, key) = (fx.code_ref(&real[0]), fx.new_code(&real[0]).login_key);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = ledger.verify(code, key, T0).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b1 = BatchId::parse("b", "slow").unwrap();
    let b = ledger
        .begin_batch(&c.spec.id, &b1, 40_000, T0)
        .await
        .unwrap();
    let chunk = |n: usize| -> Vec<NewCode> {
        (0..n)
            .map(|i| NewCode {
                serial: u32::try_from(i + 1).unwrap(),
                ..fx.new_code(&Printed {
                    code: Code::generate(c.series).unwrap(),
                    key: LoginKey::generate().unwrap(),
                })
            })
            .collect()
    };
    // One chunk over every bucket: 128 pipelines, each followed by a pause
    // while the verifies run, so it outlasts the stall timeout.
    let first = chunk(20_000);
    let started = Instant::now();
    let store = {
        let (ledger, c, b) = (ledger.clone(), c.clone(), b.clone());
        tokio::spawn(async move { ledger.store_codes(&c, &b, &first, T0).await })
    };
    // Mid-chunk, past the stall timeout, the batch still reads ISSUING.
    tokio::time::sleep(stall * 3).await;
    let mid = Timestamp(T0.0 + i64::try_from(started.elapsed().as_millis()).unwrap());
    let state = ledger
        .get_batch(&c.spec.id, &b1, mid)
        .await
        .unwrap()
        .unwrap()
        .state;
    assert!(
        !store.is_finished(),
        "the chunk ended too soon to show anything"
    );
    assert_eq!(state, BatchState::Issuing);
    let out = store.await.unwrap().unwrap();
    assert!(out.collisions.is_empty());
    let took = started.elapsed();
    assert!(
        took > stall,
        "the chunk took {took:?}: too fast to show anything (no yielding?)"
    );
    // The batch still takes codes, at the ledger time that has passed.
    let later = Timestamp(T0.0 + i64::try_from(took.as_millis()).unwrap());
    let out = ledger
        .store_codes(&c, &b, &chunk(10), later)
        .await
        .expect("the batch stayed alive while its chunk was stored");
    assert!(out.collisions.is_empty());
    let done = ledger
        .finish_batch(&c.spec.id, &b.id, true, later)
        .await
        .unwrap();
    assert_eq!(done.issued, 20_010);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    fg.await.unwrap();
}

/// Issuance usually runs in another giftxd than the exchanges (the ops
/// deployment): its bulk stores must see the other process's foreground
/// work through Redis, and stop yielding once that work stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_in_one_process_yields_to_foreground_work_in_another() {
    let fx = setup().await;
    let issuer = RedisLedger::connect_with(&fx.server.url(), config(), RedisOptions::default())
        .await
        .unwrap();
    let c = fx.campaign("shared-fg").await;
    let p = fx.issue(&c, "b", 1).await;
    // Quiet: nothing to yield to.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!issuer.issuance_yields().await, "nothing ran for a second");
    // The exchange process verifies codes: the issuer sees it.
    let (code, key) = (fx.code_ref(&p[0]), fx.new_code(&p[0]).login_key);
    let mut seen = false;
    for _ in 0..100 {
        fx.ledger.verify(code, key, T0).await.unwrap();
        if issuer.issuance_yields().await {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the issuer never saw the other process's verifies");
    // Once the exchange process is quiet, the issuer runs at full speed again.
    let mut lapsed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !issuer.issuance_yields().await {
            lapsed = true;
            break;
        }
    }
    assert!(
        lapsed,
        "the issuer kept yielding after the verifies stopped"
    );
}
