//! The access store (API keys, rate limits, end-user failures, audit) on
//! both implementations: the embedded one and Redis behave alike.

use std::sync::Arc;
use std::time::Duration;

use giftx_core::Timestamp;
use giftx_core::model::TenantId;
use giftx_ledger::access::{
    AccessStore, ApiKeyRecord, AuditRecord, MemoryAccessStore, Rate, Role, Take,
};
use giftx_ledger::redis::access::script_catalog;
use giftx_ledger::{LedgerConfig, RedisLedger};
use giftx_testkit::RedisServer;

fn key(id: &str, at: i64) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        tenant: TenantId::parse("t", "acme").unwrap(),
        role: Role::Portal,
        digest: "ab".repeat(32),
        create_time: Timestamp(at),
        expire_time: None,
        revoke_time: None,
        description: String::new(),
        hmac_key: "k1".into(),
    }
}

fn event(at: i64, method: &str) -> AuditRecord {
    AuditRecord {
        time: Timestamp(at),
        principal: "apiKeys/x".into(),
        tenant: "acme".into(),
        role: Some(Role::Operator),
        method: method.into(),
        resource: String::new(),
        outcome: "OK".into(),
        trace_id: String::new(),
    }
}

async fn exercise(s: Arc<dyn AccessStore>) {
    // Keys: stored, listed newest first in pages, revoked once.
    for (i, id) in ["k1", "k2", "k3"].iter().enumerate() {
        s.put_key(&key(id, 1000 + i as i64)).await.unwrap();
    }
    assert!(s.put_key(&key("k1", 5)).await.is_err(), "ids are unique");
    let p1 = s.list_keys(None, 2).await.unwrap();
    let ids: Vec<_> = p1.items.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["k3", "k2"]);
    let p2 = s.list_keys(p1.next.as_deref(), 2).await.unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.items[0].id, "k1");
    assert!(p2.next.is_none());
    let r = s.revoke_key("k2", Timestamp(7)).await.unwrap().unwrap();
    assert_eq!(r.revoke_time, Some(Timestamp(7)));
    let again = s.revoke_key("k2", Timestamp(9)).await.unwrap().unwrap();
    assert_eq!(
        again.revoke_time,
        Some(Timestamp(7)),
        "first revocation kept"
    );
    assert!(s.revoke_key("nope", Timestamp(9)).await.unwrap().is_none());
    assert_eq!(s.get_key("k2").await.unwrap().unwrap(), again);

    // Rate: 10/s, burst 4. Four at once, then none; a lease of 3 is all
    // or nothing; 100 ms later one more.
    let rate = Rate {
        per_second: 10.0,
        burst: 4,
    };
    let t0 = 1_000_000_000;
    assert_eq!(s.take("b", rate, 3, t0).await.unwrap(), Take::Allowed);
    assert!(matches!(
        s.take("b", rate, 3, t0).await.unwrap(),
        Take::Refused(_)
    ));
    assert_eq!(s.take("b", rate, 1, t0).await.unwrap(), Take::Allowed);
    match s.take("b", rate, 1, t0).await.unwrap() {
        Take::Refused(w) => assert_eq!(w, Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.take("b", rate, 1, t0 + 100_000).await.unwrap(),
        Take::Allowed
    );
    assert_eq!(s.take("other", rate, 1, t0).await.unwrap(), Take::Allowed);

    // End-user failures count within a window.
    assert_eq!(s.failures("u").await.unwrap(), 0);
    for n in 1..=3 {
        assert_eq!(
            s.add_failure("u", Duration::from_millis(300))
                .await
                .unwrap(),
            n
        );
    }
    assert_eq!(s.failures("u").await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.failures("u").await.unwrap(), 0, "the window ended");

    // Audit: appended in order, listed after a cursor and since a time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    s.append_audit(&[event(now, "/a"), event(now, "/b")], Timestamp(0))
        .await
        .unwrap();
    s.append_audit(&[event(now + 1, "/c")], Timestamp(0))
        .await
        .unwrap();
    let all = s.list_audit(None, Timestamp(0), 10).await.unwrap();
    let methods: Vec<_> = all.iter().map(|(_, e)| e.method.as_str()).collect();
    assert_eq!(methods, ["/a", "/b", "/c"]);
    let after = s
        .list_audit(Some(&all[0].0), Timestamp(0), 10)
        .await
        .unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].1.method, "/b");
    let late = s
        .list_audit(None, Timestamp(now + 60_000), 10)
        .await
        .unwrap();
    assert!(late.is_empty());

    // HMAC key fingerprints: recorded on first sight, differences named.
    let pair = |id: &str, fp: &str| (id.to_owned(), fp.to_owned());
    let none: Vec<String> = Vec::new();
    assert_eq!(
        s.check_hmac_keys(&[pair("default", "aa")]).await.unwrap(),
        none
    );
    assert_eq!(
        s.check_hmac_keys(&[pair("k2", "bb"), pair("default", "aa")])
            .await
            .unwrap(),
        none
    );
    assert_eq!(
        s.check_hmac_keys(&[pair("k2", "cc"), pair("default", "aa"), pair("k3", "dd")])
            .await
            .unwrap(),
        ["k2"]
    );
    assert_eq!(s.check_hmac_keys(&[pair("k3", "dd")]).await.unwrap(), none);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_keys_limits_failures_and_audit() {
    exercise(Arc::new(MemoryAccessStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_keeps_keys_limits_failures_and_audit() {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let ledger = RedisLedger::connect(&server.url(), LedgerConfig::default())
        .await
        .unwrap();
    exercise(Arc::new(ledger.access_store())).await;
}

#[test]
fn every_access_script_header_matches_its_file_name_and_its_wrapper() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/access");
    let catalog = script_catalog();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut names: Vec<String> = catalog.iter().map(|c| c.0.to_owned()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "every file is a loaded script, and only those"
    );
    for (file, wrapper_keys, source) in catalog {
        let from_name: usize = file
            .trim_end_matches(".lua")
            .rsplit_once('-')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let header: Vec<&str> = source.lines().take_while(|l| l.starts_with("--")).collect();
        assert!(header[0].starts_with(&format!("-- {}: ", file.split('-').next().unwrap())));
        let keys: Vec<usize> = header
            .iter()
            .filter_map(|l| l.strip_prefix("-- KEYS[")?.split(']').next()?.parse().ok())
            .collect();
        assert_eq!(keys, (1..=from_name).collect::<Vec<_>>(), "{file}: KEYS");
        for l in header.iter().filter(|l| l.starts_with("-- KEYS[")) {
            let k = l.split_once("] ").unwrap().1;
            assert!(
                k.starts_with('{') && k.split_whitespace().next().unwrap().contains('}'),
                "{file}: key not hash-tagged: {l}"
            );
        }
        assert_eq!(wrapper_keys, from_name, "{file}: wrapper key count");
        assert!(header.iter().any(|l| l.starts_with("-- Returns")), "{file}");
        let first_code = source.lines().find(|l| !l.starts_with("--")).unwrap();
        assert_eq!(first_code, "local rcall = redis.call", "{file}");
        assert!(!source.contains("'TIME'"), "{file}: no TIME");
    }
}
