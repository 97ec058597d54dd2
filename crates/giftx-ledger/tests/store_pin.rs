//! `store_codes` on Redis past the pin: once a bucket holds 64 codes of a
//! campaign its codes hash is kept a real hash table (a pin field whose
//! value is longer than `hash-max-listpack-value`), and insert-if-absent,
//! collision reports, counts, reads and claims work the same on both sides
//! of that line.

use giftx_core::model::{
    BatchId, BatchState, CampaignId, CampaignSpec, CodeState, OptionId, ProviderId,
    RedemptionOption,
};
use giftx_core::{Currency, Digest, Money, Timestamp};
use giftx_ledger::{
    ClaimOutcome, ClaimRequest, CodeRef, Lease, Ledger, LedgerConfig, NewCode, Preferences,
    RedisLedger,
};
use giftx_testkit::RedisServer;

const T0: Timestamp = Timestamp(1_400_000_000_000);
const DEADLINE: Timestamp = Timestamp(1_418_601_600_000);

fn spec(id: &str) -> CampaignSpec {
    CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("id", id).unwrap(),
        display_name: "Apology".into(),
        owner: "owner".into(),
        face_value: Money::new(Currency::from_code("JPY").unwrap(), 500),
        expire_time: DEADLINE,
        options: vec![RedemptionOption {
            id: OptionId::parse("o", "amazon").unwrap(),
            display_name: "Amazon".into(),
            provider: ProviderId::parse("p", "fake").unwrap(),
        }],
    }
}

/// A code digest in bucket `bucket` (digest bytes 0..2, see `keys.rs`),
/// distinct per `i`.
fn digest(bucket: u16, i: u32, salt: u8) -> Digest {
    let mut d = [salt; 32];
    d[..2].copy_from_slice(&bucket.to_be_bytes());
    d[2..6].copy_from_slice(&i.to_be_bytes());
    Digest(d)
}

fn code(bucket: u16, i: u32, serial: u32) -> NewCode {
    NewCode {
        code: digest(bucket, i, 1),
        login_key: digest(bucket, i, 2),
        serial,
    }
}

fn encoding(server: &RedisServer, key: &str) -> String {
    let mut c = server.connection();
    redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query(&mut c)
        .unwrap()
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    let mut c = server.connection();
    redis::cmd("PTTL").arg(key).query(&mut c).unwrap()
}

/// The TTL `store_codes` gives a codes hash at `T0`: deadline + retention.
fn want_ttl(deadline: Timestamp) -> i64 {
    let retention = i64::try_from(LedgerConfig::default().retention.as_millis()).unwrap();
    deadline.0 + retention - T0.0
}

fn hlen(server: &RedisServer, key: &str) -> i64 {
    let mut c = server.connection();
    redis::cmd("HLEN").arg(key).query(&mut c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_past_64_codes_is_pinned_a_hash_table_and_stores_the_same() {
    let mut server = RedisServer::start();
    let ledger = RedisLedger::connect(&server.url(), LedgerConfig::default())
        .await
        .unwrap();
    let c = ledger
        .create_campaign(&spec("pin"), None, T0)
        .await
        .unwrap();
    let s = c.series.index();
    let batch = ledger
        .begin_batch(&c.spec.id, &BatchId::parse("b", "b1").unwrap(), 200, T0)
        .await
        .unwrap();
    let key = format!("{{b7}}:c:{s}");

    // 40 codes in bucket 7: a listpack, no pin.
    let first: Vec<NewCode> = (0..40).map(|i| code(7, i, i + 1)).collect();
    let out = ledger.store_codes(&c, &batch, &first, T0).await.unwrap();
    assert_eq!((out.issued, out.collisions.len()), (40, 0));
    assert_eq!(encoding(&server, &key), "listpack");
    assert_eq!(hlen(&server, &key), 40);
    assert!((pttl(&server, &key) - want_ttl(DEADLINE)).abs() < 60_000);

    // 40 more, 3 of them taken already (and one repeated within the
    // chunk): the bucket passes 64 codes and is pinned.
    let mut second: Vec<NewCode> = (40..80).map(|i| code(7, i, i + 1)).collect();
    second[5] = code(7, 3, 46);
    second[17] = code(7, 11, 58);
    second[30] = code(7, 39, 71);
    second[31] = second[32];
    let out = ledger.store_codes(&c, &batch, &second, T0).await.unwrap();
    assert_eq!(out.collisions, vec![5, 17, 30, 32]);
    assert_eq!(out.issued, 76);
    assert_eq!(encoding(&server, &key), "hashtable");
    // 76 codes and the pin.
    assert_eq!(hlen(&server, &key), 77);

    // In the hash table: every code stored once, taken ones refused.
    let third: Vec<NewCode> = (0..100).map(|i| code(7, i, 100 + i)).collect();
    let out = ledger.store_codes(&c, &batch, &third, T0).await.unwrap();
    assert_eq!(out.collisions.len(), 76);
    assert_eq!(out.issued, 100);
    assert_eq!(hlen(&server, &key), 101);
    assert_eq!(encoding(&server, &key), "hashtable");

    // The TTL follows a moved deadline, and a store after the move keeps
    // it.
    let later = Timestamp(DEADLINE.0 + 86_400_000);
    ledger
        .extend_campaign(&c.spec.id, later, false, T0)
        .await
        .unwrap();
    assert!((pttl(&server, &key) - want_ttl(later)).abs() < 60_000);
    let c = ledger.get_campaign(&c.spec.id).await.unwrap().unwrap();
    let more: Vec<NewCode> = (200..210).map(|i| code(7, i, i)).collect();
    let out = ledger.store_codes(&c, &batch, &more, T0).await.unwrap();
    assert_eq!((out.issued, out.collisions.len()), (110, 0));
    assert!((pttl(&server, &key) - want_ttl(later)).abs() < 60_000);

    // Reads and claims see codes stored before and after the pin; the
    // batch and campaign counts are exact.
    let b = ledger
        .finish_batch(&c.spec.id, &batch.id, true, T0)
        .await
        .unwrap();
    assert_eq!((b.state, b.issued), (BatchState::Complete, 110));
    let n = ledger.counts(&c.spec.id, T0).await.unwrap();
    assert_eq!((n.issued, n.active), (110, 110));
    for i in [0u32, 39, 63, 79, 99] {
        let x = code(7, i, 0);
        let r = CodeRef {
            series: c.series,
            digest: x.code,
        };
        let v = ledger.verify(r, x.login_key, T0).await.unwrap();
        assert_eq!(v.state, CodeState::Active, "code {i}");
    }
    let x = code(7, 90, 0);
    let claim = ClaimRequest {
        code: CodeRef {
            series: c.series,
            digest: x.code,
        },
        login_key: x.login_key,
        option: OptionId::parse("o", "amazon").unwrap(),
        request: digest(7, 90, 3),
        fingerprint: digest(7, 90, 4),
        contact: None,
        preferences: Preferences::default(),
        lease: Lease {
            holder: "t".into(),
            until: Timestamp(T0.0 + 30_000),
        },
    };
    let ClaimOutcome::Claimed(e) = ledger.claim(&claim, T0).await.unwrap() else {
        panic!("not claimed");
    };
    ledger.complete(&e.id, None, T0).await.unwrap();
    let v = ledger.verify(claim.code, x.login_key, T0).await.unwrap();
    assert_eq!(v.state, CodeState::Redeemed);

    // The pin survives a Redis crash and AOF reload (also after a rewrite:
    // its value is too long for a listpack), so does every code.
    let mut conn = server.connection();
    redis::cmd("BGREWRITEAOF")
        .query::<String>(&mut conn)
        .unwrap();
    for _ in 0..200 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut conn)
            .unwrap();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill();
    server.restart();
    assert_eq!(encoding(&server, &key), "hashtable");
    assert_eq!(hlen(&server, &key), 111);
}
