//! Host-side storage for adapters that must remember things.
//!
//! Some adapters have no remote API to keep their state (a donation
//! register, a shipping-order book, a stock of pre-purchased codes). They
//! get an `Arc<dyn` [`ProviderStore`]`>` from the host: a small key-value
//! and stock store, namespaced per provider id, whose every method is one
//! atomic, idempotent step.
//!
//! # Contract for implementations
//!
//! - Every method touches the keys of **one namespace only** (one provider
//!   id) and is **one atomic step**: it happens entirely or not at all, and
//!   concurrent calls behave as if run one after another. A Redis
//!   implementation keeps all keys of a namespace under one hash tag (e.g.
//!   `giftx:p:{<provider id>}:…`) and runs each method as one Lua script,
//!   so it works on Redis Cluster unchanged.
//! - Values are opaque bytes. The host seals them (AEAD) before they reach
//!   the backing store, typically by wrapping it in a [`SealedStore`]: the
//!   backend then only ever sees ciphertext, and adapters only plaintext.
//! - Stock items arrive with a **keyed dedupe digest** computed by the
//!   caller (an HMAC of the item's identity, e.g. its claim code, under a
//!   key that never reaches the store): the store detects duplicates by
//!   digest alone and never needs the plaintext. Digests are remembered
//!   forever, so re-importing an item already handed out is a duplicate
//!   too.
//! - An error means the store could not answer (unreachable, timed out):
//!   the step may or may not have happened. Because every step is
//!   idempotent, repeating it with the same arguments is always safe.
//!
//! [`MemoryProviderStore`] is the in-process implementation (embedded
//! giftxd, tests).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use giftx_core::Digest;
use giftx_core::model::ProviderId;

use crate::ProviderError;

/// Why a store call did not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Unreachable or timed out; the step may or may not have happened.
    #[error("provider store unavailable: {0}")]
    Unavailable(String),
    /// Corrupt or undecryptable data; a bug or a wrong key.
    #[error("provider store internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ProviderError {
    /// Either way the outcome is unknown: the exchange stays PENDING and is
    /// re-driven with the same key, which the idempotent store absorbs.
    fn from(e: StoreError) -> Self {
        ProviderError::unknown(e.to_string())
    }
}

/// What [`ProviderStore::put_if_absent`] left under the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The value now stored: the caller's if `created`, else the earlier one.
    pub value: Vec<u8>,
    /// True when this call stored the value.
    pub created: bool,
}

/// One page of [`ProviderStore::list`], in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// `(key, value)` pairs.
    pub items: Vec<(String, Vec<u8>)>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One item to add to a provider's stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockItem {
    /// Keyed hash of the item's identity (e.g. `Hasher::fingerprint` of
    /// the claim code), computed by the caller; equal digests are
    /// duplicates.
    pub digest: Digest,
    /// The item, opaque to the store (sealed before it reaches the
    /// backend).
    pub item: Vec<u8>,
}

/// What [`ProviderStore::stock_add`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StockAdded {
    /// Items added to the available stock.
    pub added: u64,
    /// Items skipped because their digest was seen before (in the store or
    /// earlier in the same call).
    pub duplicates: u64,
}

/// How much stock a provider has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StockStatus {
    /// Items not handed out yet.
    pub available: u64,
    /// Items bound to a key.
    pub handed_out: u64,
}

/// Storage for one host, shared by all its adapters; `ns` is the provider
/// id, and no method ever crosses namespaces. See the [module
/// docs](self) for the contract.
#[async_trait]
pub trait ProviderStore: Send + Sync + 'static {
    /// Stores `value` under `key` unless the key is taken; returns what is
    /// stored now. Makes `issue` idempotent: concurrent calls with one key
    /// all get the same value, and exactly one of them `created` it.
    ///
    /// # Errors
    /// [`StoreError`]: outcome unknown; repeat the call.
    async fn put_if_absent(
        &self,
        ns: &ProviderId,
        key: &str,
        value: &[u8],
    ) -> Result<Stored, StoreError>;

    /// The value under `key`, if any.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Replaces the value under an existing `key` (a state change such as
    /// ORDERED → SHIPPED); returns false, storing nothing, when the key is
    /// absent. Last writer wins.
    ///
    /// # Errors
    /// [`StoreError`]: outcome unknown; repeat the call.
    async fn update(&self, ns: &ProviderId, key: &str, value: &[u8]) -> Result<bool, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix` and sorts after
    /// `after` (exclusive; `None` = from the start), ascending, for
    /// exports. Keys are compared as bytes.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn list(
        &self,
        ns: &ProviderId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Entries, StoreError>;

    /// Adds items to the available stock, skipping any whose digest was
    /// ever seen. Atomic per call; callers import large files in chunks
    /// (say 1,000 items per call) and may repeat a chunk safely.
    ///
    /// # Errors
    /// [`StoreError`]: outcome unknown; repeat the call.
    async fn stock_add(
        &self,
        ns: &ProviderId,
        items: &[StockItem],
    ) -> Result<StockAdded, StoreError>;

    /// Hands out one available item bound to `key`, or returns the item
    /// already bound to `key`: the same key gets the same item forever,
    /// and no item is ever bound to two keys. `None` when `key` has no item
    /// and none is left.
    ///
    /// # Errors
    /// [`StoreError`]: outcome unknown; repeat the call with the same key.
    async fn stock_take(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The item bound to `key`, if any, without taking one.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn stock_get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Counts of available and handed-out items.
    ///
    /// # Errors
    /// [`StoreError`].
    async fn stock_status(&self, ns: &ProviderId) -> Result<StockStatus, StoreError>;
}

/// One namespace of a [`MemoryProviderStore`].
#[derive(Default)]
struct Namespace {
    kv: BTreeMap<String, Vec<u8>>,
    digests: HashSet<[u8; 32]>,
    available: VecDeque<Vec<u8>>,
    taken: HashMap<String, Vec<u8>>,
}

/// The in-process [`ProviderStore`]: one mutex, so every method is
/// trivially atomic. Its data dies with the process.
#[derive(Default)]
pub struct MemoryProviderStore {
    namespaces: Mutex<HashMap<ProviderId, Namespace>>,
}

impl MemoryProviderStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ProviderId, Namespace>> {
        // No method panics half-way through a change, so a poisoned lock
        // still guards consistent data.
        self.namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for MemoryProviderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProviderStore")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ProviderStore for MemoryProviderStore {
    async fn put_if_absent(
        &self,
        ns: &ProviderId,
        key: &str,
        value: &[u8],
    ) -> Result<Stored, StoreError> {
        let mut all = self.lock();
        let n = all.entry(ns.clone()).or_default();
        if let Some(v) = n.kv.get(key) {
            return Ok(Stored {
                value: v.clone(),
                created: false,
            });
        }
        n.kv.insert(key.to_owned(), value.to_vec());
        Ok(Stored {
            value: value.to_vec(),
            created: true,
        })
    }

    async fn get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(ns).and_then(|n| n.kv.get(key).cloned()))
    }

    async fn update(&self, ns: &ProviderId, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let mut all = self.lock();
        match all.get_mut(ns).and_then(|n| n.kv.get_mut(key)) {
            Some(v) => {
                *v = value.to_vec();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn list(
        &self,
        ns: &ProviderId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let all = self.lock();
        let Some(n) = all.get(ns) else {
            return Ok(Entries::default());
        };
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (k, v) in n.kv.range((start, std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((k.clone(), v.clone()));
        }
        let next = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(Entries { items, next })
    }

    async fn stock_add(
        &self,
        ns: &ProviderId,
        items: &[StockItem],
    ) -> Result<StockAdded, StoreError> {
        let mut all = self.lock();
        let n = all.entry(ns.clone()).or_default();
        let mut out = StockAdded::default();
        for it in items {
            if n.digests.insert(it.digest.0) {
                n.available.push_back(it.item.clone());
                out.added += 1;
            } else {
                out.duplicates += 1;
            }
        }
        Ok(out)
    }

    async fn stock_take(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut all = self.lock();
        let n = all.entry(ns.clone()).or_default();
        if let Some(v) = n.taken.get(key) {
            return Ok(Some(v.clone()));
        }
        let Some(item) = n.available.pop_front() else {
            return Ok(None);
        };
        n.taken.insert(key.to_owned(), item.clone());
        Ok(Some(item))
    }

    async fn stock_get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(ns).and_then(|n| n.taken.get(key).cloned()))
    }

    async fn stock_status(&self, ns: &ProviderId) -> Result<StockStatus, StoreError> {
        Ok(self
            .lock()
            .get(ns)
            .map(|n| StockStatus {
                available: n.available.len() as u64,
                handed_out: n.taken.len() as u64,
            })
            .unwrap_or_default())
    }
}

/// Encrypts values at rest: the host implements it with an AEAD and its
/// (rotatable) key. `context` is authenticated but not encrypted; it binds
/// a ciphertext to where it is stored, so one cannot be moved to another
/// key or namespace.
pub trait Sealer: Send + Sync + 'static {
    /// Encrypts `plaintext`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when encryption fails.
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Decrypts what [`seal`](Sealer::seal) produced with the same
    /// `context`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the ciphertext or context does not
    /// authenticate (tampering, wrong key).
    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// A [`ProviderStore`] that seals every value and stock item before it
/// reaches `inner` and opens it on the way back: adapters see plaintext,
/// the backend only ciphertext. Keys and dedupe digests pass unchanged
/// (keys are idempotency keys and references, never secrets).
pub struct SealedStore {
    inner: Arc<dyn ProviderStore>,
    sealer: Arc<dyn Sealer>,
}

impl SealedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ProviderStore>, sealer: Arc<dyn Sealer>) -> Self {
        SealedStore { inner, sealer }
    }

    fn kv_context(ns: &ProviderId, key: &str) -> Vec<u8> {
        context(b"giftx/provider-store/kv/v1", ns, key)
    }

    fn stock_context(ns: &ProviderId) -> Vec<u8> {
        // Stock items are sealed before they are bound to a key, so they
        // are bound to their namespace only.
        context(b"giftx/provider-store/stock/v1", ns, "")
    }

    fn open_opt(&self, ctx: &[u8], v: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, StoreError> {
        v.map(|v| self.sealer.open(ctx, &v)).transpose()
    }
}

fn context(label: &[u8], ns: &ProviderId, key: &str) -> Vec<u8> {
    let mut c = label.to_vec();
    for part in [ns.as_str().as_bytes(), key.as_bytes()] {
        c.extend((part.len() as u64).to_be_bytes());
        c.extend(part);
    }
    c
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore").finish_non_exhaustive()
    }
}

#[async_trait]
impl ProviderStore for SealedStore {
    async fn put_if_absent(
        &self,
        ns: &ProviderId,
        key: &str,
        value: &[u8],
    ) -> Result<Stored, StoreError> {
        let ctx = Self::kv_context(ns, key);
        let sealed = self.sealer.seal(&ctx, value)?;
        let stored = self.inner.put_if_absent(ns, key, &sealed).await?;
        let value = if stored.created {
            value.to_vec()
        } else {
            self.sealer.open(&ctx, &stored.value)?
        };
        Ok(Stored {
            value,
            created: stored.created,
        })
    }

    async fn get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self.inner.get(ns, key).await?;
        self.open_opt(&Self::kv_context(ns, key), v)
    }

    async fn update(&self, ns: &ProviderId, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let sealed = self.sealer.seal(&Self::kv_context(ns, key), value)?;
        self.inner.update(ns, key, &sealed).await
    }

    async fn list(
        &self,
        ns: &ProviderId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let page = self.inner.list(ns, prefix, after, limit).await?;
        let items = page
            .items
            .into_iter()
            .map(|(k, v)| {
                let v = self.sealer.open(&Self::kv_context(ns, &k), &v)?;
                Ok((k, v))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Entries {
            items,
            next: page.next,
        })
    }

    async fn stock_add(
        &self,
        ns: &ProviderId,
        items: &[StockItem],
    ) -> Result<StockAdded, StoreError> {
        let ctx = Self::stock_context(ns);
        let sealed = items
            .iter()
            .map(|it| {
                Ok(StockItem {
                    digest: it.digest,
                    item: self.sealer.seal(&ctx, &it.item)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.inner.stock_add(ns, &sealed).await
    }

    async fn stock_take(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self.inner.stock_take(ns, key).await?;
        self.open_opt(&Self::stock_context(ns), v)
    }

    async fn stock_get(&self, ns: &ProviderId, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self.inner.stock_get(ns, key).await?;
        self.open_opt(&Self::stock_context(ns), v)
    }

    async fn stock_status(&self, ns: &ProviderId) -> Result<StockStatus, StoreError> {
        self.inner.stock_status(ns).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> ProviderId {
        ProviderId::parse("ns", s).unwrap()
    }

    fn item(n: u8) -> StockItem {
        StockItem {
            digest: Digest([n; 32]),
            item: format!("item-{n}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn put_if_absent_keeps_the_first_value_and_namespaces_are_separate() {
        let s = MemoryProviderStore::new();
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
    }

    #[tokio::test]
    async fn update_changes_existing_keys_only() {
        let s = MemoryProviderStore::new();
        assert!(!s.update(&ns("a"), "k", b"x").await.unwrap());
        assert_eq!(s.get(&ns("a"), "k").await.unwrap(), None);
        s.put_if_absent(&ns("a"), "k", b"one").await.unwrap();
        assert!(s.update(&ns("a"), "k", b"two").await.unwrap());
        assert_eq!(s.get(&ns("a"), "k").await.unwrap(), Some(b"two".to_vec()));
    }

    #[tokio::test]
    async fn list_pages_through_one_prefix_in_key_order() {
        let s = MemoryProviderStore::new();
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
    }

    #[tokio::test]
    async fn stock_dedupes_by_digest_and_binds_one_item_per_key_forever() {
        let s = MemoryProviderStore::new();
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
        assert_eq!(
            s.stock_status(&ns("b")).await.unwrap(),
            StockStatus::default()
        );
    }

    /// Toy sealer: reverses the bytes and appends the context, so tests can
    /// see what the backend holds. Never use outside tests.
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

    #[tokio::test]
    async fn sealed_store_hands_plaintext_to_adapters_and_ciphertext_to_the_backend() {
        let backend = Arc::new(MemoryProviderStore::new());
        let s = SealedStore::new(backend.clone(), Arc::new(Reverse));
        let a = ns("a");
        assert_eq!(
            s.put_if_absent(&a, "k", b"secret").await.unwrap().value,
            b"secret"
        );
        assert_eq!(
            s.put_if_absent(&a, "k", b"other").await.unwrap().value,
            b"secret"
        );
        assert_eq!(s.get(&a, "k").await.unwrap(), Some(b"secret".to_vec()));
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
        // A ciphertext moved to another key does not open.
        backend.put_if_absent(&a, "moved", &raw).await.unwrap();
        assert!(matches!(
            s.get(&a, "moved").await,
            Err(StoreError::Internal(_))
        ));
    }
}
