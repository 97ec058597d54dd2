//! `stock`: pre-purchased provider codes (e.g. e-money gift IDs) loaded
//! into the host's store and handed out one per exchange. The store binds
//! each item to the idempotency key that took it, atomically: the same key
//! gets the same item forever, and no item is handed out twice. Running out
//! is [`ProviderError::Retryable`] with reason `STOCK_EXHAUSTED` (the code
//! goes back to its holder, who may choose another option or retry after a
//! restock), never a crash or a double hand-out.
//!
//! Import goes through [`StockInventory`] (the CLI and ops RPCs build one
//! from the host's store and the provider id): each [`StockEntry`] comes
//! with a keyed dedupe digest ([`ImportItem::new`], computed where the HMAC
//! key lives), so duplicates are found without the store ever seeing a
//! plaintext code; the host's [`SealedStore`](giftx_provider::SealedStore)
//! encrypts the entries at rest.
//!
//! A deliverable's value is the request's face value (one stock provider
//! holds one denomination). `issue` records it under `value/<key>` before
//! it takes an item, so `lookup` can show it too.

use std::sync::Arc;

use async_trait::async_trait;
use giftx_core::model::{Deliverable, ProviderId};
use giftx_core::{Digest, Hasher, Timestamp};
use giftx_provider::{
    Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError, ProviderStore,
    StockAdded, StockItem, StockStatus,
};
use serde::{Deserialize, Serialize};

use crate::CodeKind;
use crate::record::{self, MoneyRecord};
use crate::reference;

/// `[providers.<id>] kind = "stock"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StockConfig {
    /// `"gift_id"` (gift ID + management number, the default) or
    /// `"gift_code"`.
    pub deliverable: CodeKind,
    /// Redeem URL put in deliverables.
    pub redeem_url: String,
}

impl Default for StockConfig {
    fn default() -> Self {
        StockConfig {
            deliverable: CodeKind::GiftId,
            redeem_url: String::new(),
        }
    }
}

/// One pre-purchased item.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockEntry {
    /// Claim code or gift ID, as the provider prints it.
    pub code: String,
    /// PIN or management number; empty if none.
    #[serde(default)]
    pub pin: String,
    /// When the item stops being usable (ms since the epoch), if it does.
    #[serde(default)]
    pub expire_time_ms: Option<i64>,
}

impl std::fmt::Debug for StockEntry {
    // A stock entry is a bearer secret: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockEntry").finish_non_exhaustive()
    }
}

impl StockEntry {
    /// When the item stops being usable, if it does.
    pub fn expire_time(&self) -> Option<Timestamp> {
        self.expire_time_ms.map(Timestamp)
    }
}

/// An entry ready for import: the entry and its keyed dedupe digest.
#[derive(Clone, Debug)]
pub struct ImportItem {
    /// Keyed hash of the normalised code (see [`ImportItem::new`]).
    pub digest: Digest,
    /// The entry.
    pub entry: StockEntry,
}

impl ImportItem {
    /// `entry` with its dedupe digest: `hasher`'s keyed fingerprint of the
    /// provider id and the code with spaces and hyphens removed and
    /// letters upper-cased, so `abcd-efgh` and `ABCDEFGH` are duplicates.
    pub fn new(hasher: &Hasher, provider: &ProviderId, entry: StockEntry) -> Self {
        let normal: String = entry
            .code
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let digest = hasher.fingerprint(&[
            b"giftx/stock-item/v1",
            provider.as_str().as_bytes(),
            normal.as_bytes(),
        ]);
        ImportItem { digest, entry }
    }
}

/// Items per store call during an import: each call is one atomic step.
pub const IMPORT_CHUNK: usize = 1_000;

/// A provider's stock: import and status for operators.
#[derive(Clone)]
pub struct StockInventory {
    id: ProviderId,
    store: Arc<dyn ProviderStore>,
}

impl std::fmt::Debug for StockInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockInventory")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StockInventory {
    /// The stock of provider `id` in `store`.
    pub fn new(id: ProviderId, store: Arc<dyn ProviderStore>) -> Self {
        StockInventory { id, store }
    }

    /// Adds `items`, skipping duplicates (of each other, of the stock, and
    /// of items already handed out), in chunks of [`IMPORT_CHUNK`]. Safe to
    /// repeat after an error: what was added counts as duplicate the
    /// second time. For progress, call it once per chunk.
    ///
    /// # Errors
    /// `Unknown` when the store does not answer (some chunks may be in).
    pub async fn import(&self, items: &[ImportItem]) -> Result<StockAdded, ProviderError> {
        let mut total = StockAdded::default();
        for chunk in items.chunks(IMPORT_CHUNK) {
            let sealed = chunk
                .iter()
                .map(|it| {
                    Ok(StockItem {
                        digest: it.digest,
                        item: record::encode(&it.entry)?,
                    })
                })
                .collect::<Result<Vec<_>, ProviderError>>()?;
            let added = self.store.stock_add(&self.id, &sealed).await?;
            total.added += added.added;
            total.duplicates += added.duplicates;
        }
        Ok(total)
    }

    /// How many items are left and handed out.
    ///
    /// # Errors
    /// `Unknown` when the store does not answer.
    pub async fn status(&self) -> Result<StockStatus, ProviderError> {
        Ok(self.store.stock_status(&self.id).await?)
    }
}

/// The stock adapter.
#[derive(Debug)]
pub struct StockProvider {
    config: StockConfig,
    inventory: StockInventory,
}

impl StockProvider {
    /// A stock provider `id` whose items live in `store`.
    pub fn new(id: ProviderId, config: StockConfig, store: Arc<dyn ProviderStore>) -> Self {
        StockProvider {
            config,
            inventory: StockInventory::new(id, store),
        }
    }

    /// Its stock.
    pub fn inventory(&self) -> &StockInventory {
        &self.inventory
    }

    fn deliverable(
        &self,
        key: &str,
        value: &MoneyRecord,
        item: &[u8],
    ) -> Result<Deliverable, ProviderError> {
        let e: StockEntry = record::decode(item)?;
        Ok(Deliverable {
            kind: self.config.deliverable.into(),
            code: e.code,
            pin: e.pin,
            value: Some(value.to_money()?),
            expire_time: e.expire_time_ms.map(Timestamp),
            redeem_url: self.config.redeem_url.clone(),
            reference: reference::derived("STK", &self.inventory.id, key),
        })
    }
}

#[async_trait]
impl ProviderAdapter for StockProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            store_deliverable: true,
            fulfilment: Fulfilment::Immediate,
            cancel: false,
        }
    }

    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        let inv = &self.inventory;
        let key = &req.idempotency_key;
        // Before the take, so a bound item always has its value on record.
        let value = record::encode(&MoneyRecord::from(req.face_value))?;
        let value = inv
            .store
            .put_if_absent(&inv.id, &format!("value/{key}"), &value)
            .await?;
        let value: MoneyRecord = record::decode(&value.value)?;
        match inv.store.stock_take(&inv.id, key).await? {
            Some(item) => self.deliverable(key, &value, &item),
            None => Err(ProviderError::retryable("STOCK_EXHAUSTED")),
        }
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError> {
        let inv = &self.inventory;
        let Some(item) = inv.store.stock_get(&inv.id, idempotency_key).await? else {
            return Ok(None);
        };
        let value = inv
            .store
            .get(&inv.id, &format!("value/{idempotency_key}"))
            .await?
            .ok_or_else(|| ProviderError::unknown("stock item bound without its value"))?;
        let value: MoneyRecord = record::decode(&value)?;
        Ok(Some(self.deliverable(idempotency_key, &value, &item)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Down, request};
    use giftx_core::Secret;
    use giftx_core::model::DeliverableKind;
    use giftx_provider::MemoryProviderStore;

    fn id() -> ProviderId {
        ProviderId::parse("id", "edy-stock").unwrap()
    }

    fn hasher() -> Hasher {
        Hasher::new(Secret::new(vec![9; 32])).unwrap()
    }

    fn items(range: std::ops::Range<usize>) -> Vec<ImportItem> {
        range
            .map(|i| {
                let entry = StockEntry {
                    code: format!("EDY-{i:012}"),
                    pin: format!("{:08}", i * 7),
                    expire_time_ms: None,
                };
                ImportItem::new(&hasher(), &id(), entry)
            })
            .collect()
    }

    fn stock() -> Arc<StockProvider> {
        Arc::new(StockProvider::new(
            id(),
            StockConfig::default(),
            Arc::new(MemoryProviderStore::new()),
        ))
    }

    #[tokio::test]
    async fn import_detects_duplicates_by_keyed_digest() {
        let s = stock();
        let added = s.inventory().import(&items(0..2500)).await.unwrap();
        assert_eq!(
            added,
            StockAdded {
                added: 2500,
                duplicates: 0
            }
        );
        let again = s.inventory().import(&items(2000..3000)).await.unwrap();
        assert_eq!(
            again,
            StockAdded {
                added: 500,
                duplicates: 500
            }
        );
        // Formatting differences do not hide a duplicate.
        let sloppy = ImportItem::new(
            &hasher(),
            &id(),
            StockEntry {
                code: " edy 000000000001 ".into(),
                pin: String::new(),
                expire_time_ms: None,
            },
        );
        assert_eq!(s.inventory().import(&[sloppy]).await.unwrap().duplicates, 1);
        assert_eq!(
            s.inventory().status().await.unwrap(),
            StockStatus {
                available: 3000,
                handed_out: 0
            }
        );
    }

    #[tokio::test]
    async fn issue_hands_out_one_item_per_key_idempotently() {
        let s = stock();
        s.inventory().import(&items(0..2)).await.unwrap();
        let a = s.issue(&request("k1", "edy")).await.unwrap();
        assert_eq!(a.kind, DeliverableKind::GiftId);
        assert_eq!(a.code, "EDY-000000000000");
        assert_eq!(a.pin, "00000000");
        assert_eq!(s.issue(&request("k1", "edy")).await.unwrap(), a);
        assert_eq!(a.value, Some(crate::testing::jpy(500)));
        assert_eq!(s.lookup("k1").await.unwrap(), Some(a.clone()));
        assert_eq!(s.lookup("k2").await.unwrap(), None);
        let b = s.issue(&request("k2", "edy")).await.unwrap();
        assert_ne!(a.code, b.code);
        assert_eq!(
            s.issue(&request("k3", "edy")).await,
            Err(ProviderError::retryable("STOCK_EXHAUSTED"))
        );
        // Keys that already hold an item keep getting it after exhaustion.
        assert_eq!(s.issue(&request("k1", "edy")).await.unwrap(), a);
        assert_eq!(
            s.inventory().status().await.unwrap(),
            StockStatus {
                available: 0,
                handed_out: 2
            }
        );
        // A restock serves the waiting key.
        s.inventory().import(&items(10..11)).await.unwrap();
        assert_eq!(
            s.issue(&request("k3", "edy")).await.unwrap().code,
            "EDY-000000000010"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_keys_on_fifty_items_hand_out_each_item_once() {
        let s = stock();
        s.inventory().import(&items(0..50)).await.unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request(&format!("k{i}"), "edy")).await });
        }
        let mut codes = std::collections::HashSet::new();
        let mut exhausted = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(d) => assert!(codes.insert(d.code), "an item was handed out twice"),
                Err(e) => {
                    assert_eq!(e, ProviderError::retryable("STOCK_EXHAUSTED"));
                    exhausted += 1;
                }
            }
        }
        assert_eq!((codes.len(), exhausted), (50, 50));
        assert_eq!(
            s.inventory().status().await.unwrap(),
            StockStatus {
                available: 0,
                handed_out: 50
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_issues_with_one_key_take_one_item() {
        let s = stock();
        s.inventory().import(&items(0..10)).await.unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request("same", "edy")).await });
        }
        let mut codes = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            codes.insert(r.unwrap().unwrap().code);
        }
        assert_eq!(codes.len(), 1);
        assert_eq!(s.inventory().status().await.unwrap().handed_out, 1);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_unknown_outcome_and_entries_never_print() {
        let s = StockProvider::new(id(), StockConfig::default(), Arc::new(Down));
        assert_eq!(
            s.issue(&request("k", "edy")).await.unwrap_err().class(),
            "unknown"
        );
        assert_eq!(s.lookup("k").await.unwrap_err().class(), "unknown");
        assert_eq!(
            s.inventory()
                .import(&items(0..1))
                .await
                .unwrap_err()
                .class(),
            "unknown"
        );
        let e = &items(0..1)[0];
        assert!(!format!("{e:?}").contains("EDY"));
    }
}
