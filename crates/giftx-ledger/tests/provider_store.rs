//! The Redis provider store against a private redis-server: the same
//! behaviour as `MemoryProviderStore` (one generic suite run against both),
//! then races, duplicate imports, key hygiene, a Redis crash and the
//! scripts' headers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use giftx_core::Digest;
use giftx_core::model::ProviderId;
use giftx_ledger::redis::RedisOptions;
use giftx_ledger::redis::provider_store::{MAX_LIST_PAGE, script_catalog};
use giftx_ledger::{LedgerConfig, RedisLedger, RedisProviderStore};
use giftx_provider::{
    Entries, MemoryProviderStore, ProviderStore, SealedStore, Sealer, StockAdded, StockItem,
    StockStatus, StoreError, Stored,
};
use giftx_testkit::RedisServer;

fn ns(s: &str) -> ProviderId {
    ProviderId::parse("ns", s).unwrap()
}

fn item(n: u8) -> StockItem {
    StockItem {
        digest: Digest([n; 32]),
        item: format!("item-{n}").into_bytes(),
    }
}

fn numbered(n: u32) -> StockItem {
    let mut d = [0u8; 32];
    d[..4].copy_from_slice(&n.to_be_bytes());
    StockItem {
        digest: Digest(d),
        item: format!("code-{n}").into_bytes(),
    }
}

struct Fx {
    server: RedisServer,
    store: RedisProviderStore,
}

async fn setup() -> Fx {
    let server = RedisServer::start();
    let options = RedisOptions {
        timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    let ledger = RedisLedger::connect_with(&server.url(), LedgerConfig::default(), options)
        .await
        .unwrap();
    let store = ledger.provider_store();
    Fx { server, store }
}

// ---------------------------------------------------------------------------
// The contract, once, for every implementation.
// ---------------------------------------------------------------------------

async fn put_if_absent_keeps_the_first_value_and_namespaces_are_separate(s: &dyn ProviderStore) {
    let a = s.put_if_absent(&ns("a"), "k", b"one").await.unwrap();
    assert_eq!(
        a,
        Stored {
            value: b"one".to_vec(),
            created: true
        }
    );
    let again = s.put_if_absent(&ns("a"), "k", b"two").await.unwrap();
    assert_eq!(
        again,
        Stored {
            value: b"one".to_vec(),
            created: false
        }
    );
    assert_eq!(s.get(&ns("b"), "k").await.unwrap(), None);
    assert!(
        s.put_if_absent(&ns("b"), "k", b"three")
            .await
            .unwrap()
            .created
    );
    assert_eq!(s.get(&ns("a"), "k").await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(s.get(&ns("b"), "k").await.unwrap(), Some(b"three".to_vec()));
}

async fn update_changes_existing_keys_only(s: &dyn ProviderStore) {
    assert!(!s.update(&ns("a"), "k", b"x").await.unwrap());
    assert_eq!(s.get(&ns("a"), "k").await.unwrap(), None);
    assert_eq!(s.list(&ns("a"), "", None, 10).await.unwrap().items, []);
    s.put_if_absent(&ns("a"), "k", b"one").await.unwrap();
    assert!(s.update(&ns("a"), "k", b"two").await.unwrap());
    assert_eq!(s.get(&ns("a"), "k").await.unwrap(), Some(b"two".to_vec()));
    assert!(!s.update(&ns("b"), "k", b"x").await.unwrap());
}

async fn list_pages_through_one_prefix_in_key_order(s: &dyn ProviderStore) {
    for k in ["order/3", "order/1", "other/1", "order/2", "o"] {
        s.put_if_absent(&ns("a"), k, k.as_bytes()).await.unwrap();
    }
    let p1 = s.list(&ns("a"), "order/", None, 2).await.unwrap();
    let keys: Vec<_> = p1.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["order/1", "order/2"]);
    assert_eq!(p1.next.as_deref(), Some("order/2"));
    let p2 = s
        .list(&ns("a"), "order/", p1.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(p2.items, vec![("order/3".to_owned(), b"order/3".to_vec())]);
    assert_eq!(p2.next, None);
    assert_eq!(
        s.list(&ns("b"), "", None, 10).await.unwrap(),
        Entries::default()
    );
    // Everything, in byte order; `after` before the prefix starts at it,
    // `after` past the prefix gives nothing.
    let all = s.list(&ns("a"), "", None, 10).await.unwrap();
    let keys: Vec<_> = all.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["o", "order/1", "order/2", "order/3", "other/1"]);
    assert_eq!(all.next, None);
    let from = s.list(&ns("a"), "order/", Some("a"), 10).await.unwrap();
    assert_eq!(from.items.len(), 3);
    assert_eq!(
        s.list(&ns("a"), "order/", Some("p"), 10).await.unwrap(),
        Entries::default()
    );
    // An exact fit has no next page; limit 0 gives an empty last page.
    let fit = s.list(&ns("a"), "order/", None, 3).await.unwrap();
    assert_eq!((fit.items.len(), fit.next), (3, None));
    assert_eq!(
        s.list(&ns("a"), "order/", None, 0).await.unwrap(),
        Entries::default()
    );
}

async fn keys_and_values_are_binary_safe(s: &dyn ProviderStore) {
    let a = ns("bin");
    let weird: &[u8] = &[0, 255, b'\r', b'\n', 0, b'{', b'}', 128];
    // Keys that look like ZRANGEBYLEX syntax, unicode, the empty key.
    for k in ["+", "-", "[x", "(x", "é/ü", "", "a\u{0}b"] {
        assert!(
            s.put_if_absent(&a, k, weird).await.unwrap().created,
            "{k:?}"
        );
        assert_eq!(s.get(&a, k).await.unwrap().as_deref(), Some(weird));
    }
    assert!(s.put_if_absent(&a, "empty", b"").await.unwrap().created);
    assert_eq!(s.get(&a, "empty").await.unwrap(), Some(Vec::new()));
    assert_eq!(
        s.put_if_absent(&a, "empty", b"x").await.unwrap(),
        Stored {
            value: Vec::new(),
            created: false
        }
    );
    let all = s.list(&a, "", None, 100).await.unwrap();
    let keys: Vec<_> = all.items.iter().map(|(k, _)| k.as_str()).collect();
    let mut want = vec!["", "(x", "+", "-", "[x", "a\u{0}b", "empty", "é/ü"];
    want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(keys, want);
    assert_eq!(s.list(&a, "(", None, 10).await.unwrap().items.len(), 1);
    assert_eq!(s.list(&a, "a\u{0}", None, 10).await.unwrap().items.len(), 1);
    let stock = StockItem {
        digest: Digest([0; 32]),
        item: weird.to_vec(),
    };
    s.stock_add(&a, &[stock]).await.unwrap();
    assert_eq!(s.stock_take(&a, "").await.unwrap().as_deref(), Some(weird));
    assert_eq!(s.stock_get(&a, "").await.unwrap().as_deref(), Some(weird));
}

async fn stock_dedupes_by_digest_and_binds_one_item_per_key_forever(s: &dyn ProviderStore) {
    let added = s
        .stock_add(&ns("a"), &[item(1), item(2), item(1)])
        .await
        .unwrap();
    assert_eq!(
        added,
        StockAdded {
            added: 2,
            duplicates: 1
        }
    );
    let first = s.stock_take(&ns("a"), "k1").await.unwrap().unwrap();
    assert_eq!(first, b"item-1", "stock is handed out in import order");
    assert_eq!(s.stock_take(&ns("a"), "k1").await.unwrap().unwrap(), first);
    assert_eq!(
        s.stock_get(&ns("a"), "k1").await.unwrap(),
        Some(first.clone())
    );
    let second = s.stock_take(&ns("a"), "k2").await.unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(s.stock_take(&ns("a"), "k3").await.unwrap(), None);
    assert_eq!(s.stock_get(&ns("a"), "k3").await.unwrap(), None);
    // Handed-out items stay known: re-importing them is a duplicate.
    let again = s.stock_add(&ns("a"), &[item(1), item(3)]).await.unwrap();
    assert_eq!(
        again,
        StockAdded {
            added: 1,
            duplicates: 1
        }
    );
    assert_eq!(
        s.stock_status(&ns("a")).await.unwrap(),
        StockStatus {
            available: 1,
            handed_out: 2
        }
    );
    // k3 found nothing before; now it gets the new item, and keeps it.
    assert_eq!(
        s.stock_take(&ns("a"), "k3").await.unwrap(),
        Some(b"item-3".to_vec())
    );
    assert_eq!(
        s.stock_status(&ns("b")).await.unwrap(),
        StockStatus::default()
    );
    assert_eq!(s.stock_get(&ns("b"), "k1").await.unwrap(), None);
    assert_eq!(s.stock_take(&ns("b"), "k1").await.unwrap(), None);
    assert_eq!(
        s.stock_add(&ns("a"), &[]).await.unwrap(),
        StockAdded::default()
    );
}

/// Toy sealer (as in giftx-provider's tests): reverses the bytes and
/// appends the context. Never use outside tests.
struct Reverse;

impl Sealer for Reverse {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut v: Vec<u8> = plaintext.iter().rev().copied().collect();
        v.extend(context);
        v.extend((context.len() as u64).to_be_bytes());
        Ok(v)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let bad = || StoreError::Internal("does not authenticate".into());
        let n = sealed
            .len()
            .checked_sub(8 + context.len())
            .ok_or_else(bad)?;
        if &sealed[n..n + context.len()] != context {
            return Err(bad());
        }
        Ok(sealed[..n].iter().rev().copied().collect())
    }
}

async fn sealed_store_hands_plaintext_to_adapters_and_ciphertext_to_the_backend(
    backend: Arc<dyn ProviderStore>,
) {
    let s = SealedStore::new(backend.clone(), Arc::new(Reverse));
    let a = ns("sealed");
    assert_eq!(
        s.put_if_absent(&a, "k", b"secret").await.unwrap().value,
        b"secret"
    );
    assert_eq!(
        s.put_if_absent(&a, "k", b"other").await.unwrap().value,
        b"secret"
    );
    let raw = backend.get(&a, "k").await.unwrap().unwrap();
    assert!(!raw.windows(6).any(|w| w == b"secret"));
    assert!(s.update(&a, "k", b"changed").await.unwrap());
    assert_eq!(
        s.list(&a, "", None, 5).await.unwrap().items[0].1,
        b"changed"
    );
    s.stock_add(&a, &[item(7)]).await.unwrap();
    assert_eq!(
        s.stock_take(&a, "x").await.unwrap(),
        Some(b"item-7".to_vec())
    );
    let raw = backend.stock_get(&a, "x").await.unwrap().unwrap();
    assert!(!raw.windows(6).any(|w| w == b"item-7"));
    backend.put_if_absent(&a, "moved", &raw).await.unwrap();
    assert!(matches!(
        s.get(&a, "moved").await,
        Err(StoreError::Internal(_))
    ));
}

/// Runs the whole contract suite, each case on a fresh store from `make`.
macro_rules! conformance {
    ($make:expr) => {{
        put_if_absent_keeps_the_first_value_and_namespaces_are_separate(&*$make).await;
        update_changes_existing_keys_only(&*$make).await;
        list_pages_through_one_prefix_in_key_order(&*$make).await;
        keys_and_values_are_binary_safe(&*$make).await;
        stock_dedupes_by_digest_and_binds_one_item_per_key_forever(&*$make).await;
        sealed_store_hands_plaintext_to_adapters_and_ciphertext_to_the_backend($make).await;
    }};
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    let make = || Arc::new(MemoryProviderStore::new()) as Arc<dyn ProviderStore>;
    conformance!(make());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_meets_the_contract() {
    let fx = setup().await;
    let make = || {
        fx.server.flushall();
        Arc::new(fx.store.clone()) as Arc<dyn ProviderStore>
    };
    conformance!(make());
}

// ---------------------------------------------------------------------------
// Redis only.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_racing_takes_with_distinct_keys_hand_out_each_item_once() {
    let fx = setup().await;
    let a = ns("race");
    let items: Vec<_> = (0..50).map(numbered).collect();
    assert_eq!(fx.store.stock_add(&a, &items).await.unwrap().added, 50);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = fx.store.clone();
            let a = a.clone();
            tokio::spawn(async move { s.stock_take(&a, &format!("key-{i}")).await })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap().unwrap());
    }
    let taken: Vec<Vec<u8>> = got.iter().flatten().cloned().collect();
    assert_eq!(taken.len(), 50);
    let distinct: HashSet<&Vec<u8>> = taken.iter().collect();
    assert_eq!(distinct.len(), 50, "an item was handed out twice");
    let all: HashSet<Vec<u8>> = items.into_iter().map(|i| i.item).collect();
    assert!(taken.iter().all(|t| all.contains(t)));
    assert_eq!(
        fx.store.stock_status(&a).await.unwrap(),
        StockStatus {
            available: 0,
            handed_out: 50
        }
    );
    // Every key keeps what it got, including "nothing yet".
    for (i, g) in got.iter().enumerate() {
        let key = format!("key-{i}");
        assert_eq!(&fx.store.stock_get(&a, &key).await.unwrap(), g);
        assert_eq!(&fx.store.stock_take(&a, &key).await.unwrap(), g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_racing_takes_with_one_key_all_get_the_same_item() {
    let fx = setup().await;
    let a = ns("race");
    let items: Vec<_> = (0..50).map(numbered).collect();
    fx.store.stock_add(&a, &items).await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = fx.store.clone();
            let a = a.clone();
            tokio::spawn(async move { s.stock_take(&a, "one-key").await })
        })
        .collect();
    let mut got = HashSet::new();
    for t in tasks {
        got.insert(t.await.unwrap().unwrap().unwrap());
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        fx.store.stock_status(&a).await.unwrap(),
        StockStatus {
            available: 49,
            handed_out: 1
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_puts_with_one_key_create_once_and_all_see_one_value() {
    let fx = setup().await;
    let a = ns("race");
    let tasks: Vec<_> = (0..100u8)
        .map(|i| {
            let s = fx.store.clone();
            let a = a.clone();
            tokio::spawn(async move { s.put_if_absent(&a, "issue/1", &[i]).await })
        })
        .collect();
    let mut created = 0;
    let mut values = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        created += usize::from(r.created);
        values.insert(r.value);
    }
    assert_eq!(created, 1);
    assert_eq!(values.len(), 1);
    let stored = fx.store.get(&a, "issue/1").await.unwrap().unwrap();
    assert!(values.contains(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_imports_detect_every_duplicate_and_repeat_safely() {
    let fx = setup().await;
    let a = ns("import");
    let file: Vec<_> = (0..2500).map(numbered).collect();
    let mut total = StockAdded::default();
    for chunk in file.chunks(1000) {
        let r = fx.store.stock_add(&a, chunk).await.unwrap();
        total.added += r.added;
        total.duplicates += r.duplicates;
    }
    assert_eq!(
        total,
        StockAdded {
            added: 2500,
            duplicates: 0
        }
    );
    // A repeated chunk (the caller retried after a timeout) adds nothing.
    assert_eq!(
        fx.store.stock_add(&a, &file[1000..2000]).await.unwrap(),
        StockAdded {
            added: 0,
            duplicates: 1000
        }
    );
    // An overlapping file: old items skipped, new ones added, and an item
    // twice in one chunk counted once.
    let mut next: Vec<_> = (2400..2600).map(numbered).collect();
    next.push(numbered(2599));
    assert_eq!(
        fx.store.stock_add(&a, &next).await.unwrap(),
        StockAdded {
            added: 100,
            duplicates: 101
        }
    );
    // Same digest, other bytes: still a duplicate (digests alone decide).
    let mut forged = numbered(7);
    forged.item = b"something else".to_vec();
    assert_eq!(
        fx.store.stock_add(&a, &[forged]).await.unwrap().duplicates,
        1
    );
    // Handed out, then re-imported: a duplicate, forever.
    let first = fx.store.stock_take(&a, "k").await.unwrap().unwrap();
    assert_eq!(first, b"code-0");
    assert_eq!(
        fx.store.stock_add(&a, &file[..1]).await.unwrap(),
        StockAdded {
            added: 0,
            duplicates: 1
        }
    );
    assert_eq!(
        fx.store.stock_status(&a).await.unwrap(),
        StockStatus {
            available: 2599,
            handed_out: 1
        }
    );
    // The same digests in another namespace are new there.
    assert_eq!(
        fx.store
            .stock_add(&ns("other"), &file[..10])
            .await
            .unwrap()
            .added,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_capped_and_page_through_everything() {
    let fx = setup().await;
    let a = ns("many");
    let n = MAX_LIST_PAGE + 5;
    for i in 0..n {
        fx.store
            .put_if_absent(&a, &format!("k/{i:05}"), b"v")
            .await
            .unwrap();
    }
    fx.store.put_if_absent(&a, "z", b"v").await.unwrap();
    let p1 = fx.store.list(&a, "k/", None, usize::MAX).await.unwrap();
    assert_eq!(p1.items.len(), MAX_LIST_PAGE);
    assert_eq!(p1.next.as_deref(), Some("k/00999"));
    let p2 = fx
        .store
        .list(&a, "k/", p1.next.as_deref(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 5);
    assert_eq!(p2.next, None);
    assert_eq!(p2.items[4].0, format!("k/{:05}", n - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_hash_tagged_by_namespace_and_holds_no_plaintext() {
    let fx = setup().await;
    let s = Arc::new(fx.store.clone()) as Arc<dyn ProviderStore>;
    let sealed = SealedStore::new(s.clone(), Arc::new(Reverse));
    for p in ["shop", "donate-2"] {
        let a = ns(p);
        sealed
            .put_if_absent(&a, "order/1", b"plain-order")
            .await
            .unwrap();
        sealed.stock_add(&a, &[item(1), item(2)]).await.unwrap();
        sealed.stock_take(&a, "order/1").await.unwrap();
    }
    let mut conn = fx.server.connection();
    let mut cursor = 0u64;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(100)
            .query(&mut conn)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut names: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    names.sort();
    let mut want = Vec::new();
    for p in ["donate-2", "shop"] {
        for suffix in ["a", "d", "k", "q", "v"] {
            want.push(format!("{{p:{p}}}:{suffix}"));
        }
    }
    assert_eq!(names, want, "exactly the documented keys, each hash-tagged");
    let mut dump = Vec::new();
    for k in &keys {
        let d: Vec<u8> = redis::cmd("DUMP").arg(k).query(&mut conn).unwrap();
        dump.extend(d);
    }
    for plain in [&b"plain-order"[..], b"item-1", b"item-2"] {
        assert!(
            !dump.windows(plain.len()).any(|w| w == plain),
            "plaintext {:?} reached Redis",
            String::from_utf8_lossy(plain)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigkill_and_calls_fail_fast_while_down() {
    let mut fx = setup().await;
    let a = ns("durable");
    fx.store.put_if_absent(&a, "k", b"v1").await.unwrap();
    fx.store.update(&a, "k", b"v2").await.unwrap();
    let items: Vec<_> = (0..10).map(numbered).collect();
    fx.store.stock_add(&a, &items).await.unwrap();
    let taken = fx.store.stock_take(&a, "t").await.unwrap().unwrap();

    fx.server.kill();
    let started = Instant::now();
    let err = fx.store.stock_take(&a, "t2").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = fx.store.get(&a, "k").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    fx.server.restart();
    // The same store works again; the server's script cache is gone.
    let mut got = None;
    for _ in 0..50 {
        match fx.store.get(&a, "k").await {
            Ok(v) => {
                got = v;
                break;
            }
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(got, Some(b"v2".to_vec()));
    assert_eq!(
        fx.store.list(&a, "", None, 10).await.unwrap().items,
        vec![("k".to_owned(), b"v2".to_vec())]
    );
    assert_eq!(fx.store.stock_take(&a, "t").await.unwrap(), Some(taken));
    assert_eq!(
        fx.store.stock_status(&a).await.unwrap(),
        StockStatus {
            available: 9,
            handed_out: 1
        }
    );
    assert_eq!(
        fx.store.stock_add(&a, &items).await.unwrap(),
        StockAdded {
            added: 0,
            duplicates: 10
        }
    );
}

#[test]
fn every_script_header_matches_its_file_name_and_its_wrapper() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/provider_store");
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
        assert!(file.starts_with("store_"), "{file}");
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
        assert_eq!(
            keys,
            (1..=from_name).collect::<Vec<_>>(),
            "{file}: KEYS in header"
        );
        for l in header.iter().filter(|l| l.starts_with("-- KEYS[")) {
            assert!(l.contains("{p:<id>}:"), "{file}: key not hash-tagged: {l}");
        }
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
