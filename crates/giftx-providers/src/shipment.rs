//! `shipment`: deferred fulfilment for mailed goods (a book card). `issue`
//! creates a shipping order, once per idempotency key, and returns a
//! [`DeliverableKind::Shipment`] whose `reference` names the order. The
//! order starts [`OrderState::Ordered`]; operators export open orders for
//! the mailing vendor and mark them [`OrderState::Shipped`] through
//! [`ShipmentOrders`] (the CLI and ops RPCs build one from the host's
//! store and the provider id; no adapter instance needed).
//!
//! Each order keeps the holder's postal address (from the
//! [`IssueRequest`]; the host's sealed store encrypts the whole record) until
//! `address_retention_days` after it was marked shipped; the first read of
//! the order after that (an export, a re-display, a mark) erases it from the
//! store. An issue without an address (a reconciler's re-drive) creates no
//! order: it finds the one the first call made, or answers `Retryable`.
//!
//! Store layout (namespace = provider id): `order/<reference>` →
//! [`ShipmentOrder`] as JSON. The reference is derived from the provider
//! id and the idempotency key (`<prefix>-` + 16 symbols), so `lookup` finds
//! the order without an index.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use giftx_core::model::{Deliverable, DeliverableKind, PostalAddress, ProviderId};
use giftx_core::{Clock, Timestamp};
use giftx_provider::{
    Capabilities, Fulfilment, IssueRequest, ProviderAdapter, ProviderError, ProviderStore,
};
use serde::{Deserialize, Serialize};

use crate::record::{self, MoneyRecord};
use crate::reference;

/// `[providers.<id>] kind = "shipment"` settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShipmentConfig {
    /// Order references start with this and a hyphen (1-8 of `A-Z0-9`).
    pub reference_prefix: String,
    /// Days an order keeps the postal address after it was marked shipped
    /// (then it is erased; default 30).
    pub address_retention_days: u64,
}

/// Default of [`ShipmentConfig::address_retention_days`].
pub const DEFAULT_ADDRESS_RETENTION_DAYS: u64 = 30;

impl Default for ShipmentConfig {
    fn default() -> Self {
        ShipmentConfig {
            reference_prefix: "SHP".to_owned(),
            address_retention_days: DEFAULT_ADDRESS_RETENTION_DAYS,
        }
    }
}

impl ShipmentConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// `(field, reason)` for a malformed prefix.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !reference::valid_prefix(&self.reference_prefix) {
            return Err(("reference_prefix", "must be 1-8 of A-Z and 0-9".to_owned()));
        }
        if self.address_retention_days > 3650 {
            return Err(("address_retention_days", "must be at most 3650".to_owned()));
        }
        Ok(())
    }

    /// How long a shipped order keeps its address.
    pub fn address_retention(&self) -> Duration {
        Duration::from_secs(self.address_retention_days.saturating_mul(86_400))
    }
}

/// Where a shipping order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    /// Created; waits for the mailing vendor.
    Ordered,
    /// Sent out.
    Shipped,
}

/// One shipping order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentOrder {
    /// The order reference (the deliverable's `reference`).
    pub reference: String,
    /// The idempotency key it was created under (names the exchange).
    pub idempotency_key: String,
    /// The exchanged code's campaign.
    pub campaign: String,
    /// The option chosen.
    pub option: String,
    /// ISO 4217 currency of the value.
    pub currency: String,
    /// The value shipped, in minor units.
    pub minor_units: i64,
    /// Where it stands.
    pub state: OrderState,
    /// When it was created (ms since the epoch).
    pub create_time_ms: i64,
    /// When it was marked shipped.
    pub ship_time_ms: Option<i64>,
    /// The vendor's tracking number, if given when marked shipped.
    pub tracking: Option<String>,
    /// Where to mail it; erased `address_retention_days` after shipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<PostalAddress>,
}

impl ShipmentOrder {
    /// When it was created.
    pub fn create_time(&self) -> Timestamp {
        Timestamp(self.create_time_ms)
    }

    /// When it was marked shipped.
    pub fn ship_time(&self) -> Option<Timestamp> {
        self.ship_time_ms.map(Timestamp)
    }
}

/// What [`ShipmentOrders::mark_shipped`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkShipped {
    /// The order is now SHIPPED.
    Shipped(ShipmentOrder),
    /// It was SHIPPED already; nothing changed (marking is idempotent).
    AlreadyShipped(ShipmentOrder),
    /// No order has this reference.
    NotFound,
}

/// One page of orders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderPage {
    /// The orders, in reference order.
    pub orders: Vec<ShipmentOrder>,
    /// Cursor for the next page; `None` on the last.
    pub next: Option<String>,
}

/// A provider's shipping orders: export and state changes for operators.
#[derive(Clone)]
pub struct ShipmentOrders {
    id: ProviderId,
    store: Arc<dyn ProviderStore>,
    clock: Arc<dyn Clock>,
    address_retention: Duration,
}

impl std::fmt::Debug for ShipmentOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipmentOrders")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const ORDER_PREFIX: &str = "order/";

impl ShipmentOrders {
    /// The orders of shipment provider `id` in `store`.
    pub fn new(id: ProviderId, store: Arc<dyn ProviderStore>, clock: Arc<dyn Clock>) -> Self {
        ShipmentOrders {
            id,
            store,
            clock,
            address_retention: Duration::from_secs(DEFAULT_ADDRESS_RETENTION_DAYS * 86_400),
        }
    }

    /// The same orders, keeping addresses `retention` after shipping.
    #[must_use]
    pub fn with_address_retention(mut self, retention: Duration) -> Self {
        self.address_retention = retention;
        self
    }

    /// The order with `reference`, if any.
    ///
    /// # Errors
    /// `Unknown` when the store does not answer or the record is corrupt.
    pub async fn get(&self, reference: &str) -> Result<Option<ShipmentOrder>, ProviderError> {
        let v = self
            .store
            .get(&self.id, &format!("{ORDER_PREFIX}{reference}"))
            .await?;
        match v {
            Some(v) => Ok(Some(self.erase_if_due(record::decode(&v)?).await?)),
            None => Ok(None),
        }
    }

    /// Erases the address of an order shipped longer ago than the
    /// retention, in the store and in the returned copy.
    async fn erase_if_due(&self, mut o: ShipmentOrder) -> Result<ShipmentOrder, ProviderError> {
        let due = o.address.is_some()
            && o.ship_time().is_some_and(|t| {
                t.plus(self.address_retention).millis() <= self.clock.now().millis()
            });
        if due {
            o.address = None;
            let key = format!("{ORDER_PREFIX}{}", o.reference);
            self.store
                .update(&self.id, &key, &record::encode(&o)?)
                .await?;
        }
        Ok(o)
    }

    /// Up to `limit` orders after cursor `after`, in reference order; with
    /// `state`, only orders in that state (a page may then hold fewer than
    /// `limit`: keep following `next` until it is `None`).
    ///
    /// # Errors
    /// As for [`get`](Self::get).
    pub async fn list(
        &self,
        state: Option<OrderState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<OrderPage, ProviderError> {
        let after = after.map(|a| format!("{ORDER_PREFIX}{a}"));
        let page = self
            .store
            .list(&self.id, ORDER_PREFIX, after.as_deref(), limit)
            .await?;
        let mut orders = Vec::with_capacity(page.items.len());
        for (_, v) in &page.items {
            let o = self.erase_if_due(record::decode(v)?).await?;
            if state.is_none_or(|s| s == o.state) {
                orders.push(o);
            }
        }
        let next = page
            .next
            .map(|k| k.strip_prefix(ORDER_PREFIX).unwrap_or(&k).to_owned());
        Ok(OrderPage { orders, next })
    }

    /// Marks order `reference` SHIPPED (with the vendor's `tracking`
    /// number, if given). Idempotent: an order already SHIPPED is left as
    /// it is.
    ///
    /// # Errors
    /// As for [`get`](Self::get); on error, repeat the call.
    pub async fn mark_shipped(
        &self,
        reference: &str,
        tracking: Option<&str>,
    ) -> Result<MarkShipped, ProviderError> {
        let Some(mut order) = self.get(reference).await? else {
            return Ok(MarkShipped::NotFound);
        };
        if order.state == OrderState::Shipped {
            return Ok(MarkShipped::AlreadyShipped(order));
        }
        order.state = OrderState::Shipped;
        order.ship_time_ms = Some(self.clock.now().millis());
        order.tracking = tracking.map(str::to_owned);
        // Records are never deleted, so the key exists; two concurrent
        // marks both write SHIPPED, the last one's time and tracking win.
        let key = format!("{ORDER_PREFIX}{reference}");
        if !self
            .store
            .update(&self.id, &key, &record::encode(&order)?)
            .await?
        {
            return Ok(MarkShipped::NotFound);
        }
        Ok(MarkShipped::Shipped(order))
    }
}

/// The shipment adapter.
#[derive(Debug)]
pub struct ShipmentProvider {
    config: ShipmentConfig,
    orders: ShipmentOrders,
}

impl ShipmentProvider {
    /// A shipment provider `id` keeping its orders in `store`.
    pub fn new(
        id: ProviderId,
        config: ShipmentConfig,
        store: Arc<dyn ProviderStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let retention = config.address_retention();
        ShipmentProvider {
            config,
            orders: ShipmentOrders::new(id, store, clock).with_address_retention(retention),
        }
    }

    /// Its orders.
    pub fn orders(&self) -> &ShipmentOrders {
        &self.orders
    }

    fn reference(&self, idempotency_key: &str) -> String {
        reference::derived(
            &self.config.reference_prefix,
            &self.orders.id,
            idempotency_key,
        )
    }
}

fn deliverable(o: &ShipmentOrder) -> Result<Deliverable, ProviderError> {
    let value = MoneyRecord {
        currency: o.currency.clone(),
        minor_units: o.minor_units,
    }
    .to_money()?;
    Ok(Deliverable {
        kind: DeliverableKind::Shipment,
        code: String::new(),
        pin: String::new(),
        value: Some(value),
        expire_time: None,
        redeem_url: String::new(),
        reference: o.reference.clone(),
    })
}

#[async_trait]
impl ProviderAdapter for ShipmentProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            store_deliverable: true,
            fulfilment: Fulfilment::Deferred,
            cancel: false,
        }
    }

    async fn issue(&self, req: &IssueRequest) -> Result<Deliverable, ProviderError> {
        let reference = self.reference(&req.idempotency_key);
        let Some(address) = req.shipping_address.clone() else {
            // A re-drive without the holder's address: only the order the
            // first call made will do; never an order nobody can mail.
            return match self.orders.get(&reference).await? {
                Some(o) => deliverable(&o),
                None => Err(ProviderError::retryable("SHIPPING_ADDRESS_MISSING")),
            };
        };
        let fresh = ShipmentOrder {
            reference: reference.clone(),
            idempotency_key: req.idempotency_key.clone(),
            campaign: req.campaign.to_string(),
            option: req.option.to_string(),
            currency: req.face_value.currency.code().to_owned(),
            minor_units: req.face_value.minor_units,
            state: OrderState::Ordered,
            create_time_ms: self.orders.clock.now().millis(),
            ship_time_ms: None,
            tracking: None,
            address: Some(address),
        };
        let key = format!("{ORDER_PREFIX}{reference}");
        let stored = self
            .orders
            .store
            .put_if_absent(&self.orders.id, &key, &record::encode(&fresh)?)
            .await?;
        deliverable(&record::decode(&stored.value)?)
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Deliverable>, ProviderError> {
        match self.orders.get(&self.reference(idempotency_key)).await? {
            Some(o) => Ok(Some(deliverable(&o)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Down, jpy, request};
    use giftx_core::ManualClock;
    use giftx_provider::MemoryProviderStore;

    fn shipment(store: Arc<dyn ProviderStore>, clock: &ManualClock) -> Arc<ShipmentProvider> {
        Arc::new(ShipmentProvider::new(
            ProviderId::parse("id", "book-card").unwrap(),
            ShipmentConfig::default(),
            store,
            Arc::new(clock.clone()),
        ))
    }

    #[tokio::test]
    async fn creates_one_order_per_key_and_looks_it_up() {
        let clock = ManualClock::new(Timestamp(1_000));
        let s = shipment(Arc::new(MemoryProviderStore::new()), &clock);
        assert_eq!(s.capabilities().fulfilment, Fulfilment::Deferred);
        let d = s.issue(&request("k1", "book-card")).await.unwrap();
        assert_eq!(d.kind, DeliverableKind::Shipment);
        assert!(d.reference.starts_with("SHP-"));
        assert_eq!(d.value, Some(jpy(500)));
        assert_eq!(s.issue(&request("k1", "book-card")).await.unwrap(), d);
        assert_eq!(s.lookup("k1").await.unwrap(), Some(d.clone()));
        assert_eq!(s.lookup("k2").await.unwrap(), None);
        let o = s.orders().get(&d.reference).await.unwrap().unwrap();
        assert_eq!(o.state, OrderState::Ordered);
        assert_eq!(o.idempotency_key, "k1");
        assert_eq!(o.create_time(), Timestamp(1_000));
    }

    #[tokio::test]
    async fn orders_are_exported_and_marked_shipped_idempotently() {
        let clock = ManualClock::new(Timestamp(1_000));
        let store: Arc<dyn ProviderStore> = Arc::new(MemoryProviderStore::new());
        let s = shipment(store.clone(), &clock);
        let mut refs = Vec::new();
        for i in 0..5 {
            refs.push(
                s.issue(&request(&format!("k{i}"), "book"))
                    .await
                    .unwrap()
                    .reference,
            );
        }
        refs.sort();
        // The ops side needs only the store and the provider id.
        let ops = ShipmentOrders::new(
            ProviderId::parse("id", "book-card").unwrap(),
            store,
            Arc::new(clock.clone()),
        );
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = ops.list(None, after.as_deref(), 2).await.unwrap();
            seen.extend(page.orders.into_iter().map(|o| o.reference));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, refs);

        clock.advance(std::time::Duration::from_secs(60));
        let MarkShipped::Shipped(o) = ops.mark_shipped(&refs[1], Some("JP123")).await.unwrap()
        else {
            panic!("expected Shipped");
        };
        assert_eq!(o.state, OrderState::Shipped);
        assert_eq!(o.ship_time(), Some(Timestamp(61_000)));
        assert_eq!(o.tracking.as_deref(), Some("JP123"));
        assert!(matches!(
            ops.mark_shipped(&refs[1], None).await.unwrap(),
            MarkShipped::AlreadyShipped(ref again) if again == &o
        ));
        assert_eq!(
            ops.mark_shipped("SHP-NOPE", None).await.unwrap(),
            MarkShipped::NotFound
        );

        let open = ops
            .list(Some(OrderState::Ordered), None, 100)
            .await
            .unwrap();
        assert_eq!(open.orders.len(), 4);
        let shipped = ops
            .list(Some(OrderState::Shipped), None, 100)
            .await
            .unwrap();
        assert_eq!(shipped.orders, vec![o.clone()]);
        // The exchange's deliverable is unchanged by the state change.
        let d = s.lookup(&o.idempotency_key).await.unwrap().unwrap();
        assert_eq!(d.reference, o.reference);
        assert_eq!(
            s.orders().get(&o.reference).await.unwrap().unwrap().state,
            OrderState::Shipped
        );
    }

    #[tokio::test]
    async fn orders_keep_the_address_until_the_retention_after_shipping() {
        let clock = ManualClock::new(Timestamp(0));
        let s = shipment(Arc::new(MemoryProviderStore::new()), &clock);
        let req = request("k1", "book-card");
        let d = s.issue(&req).await.unwrap();
        let o = s.orders().get(&d.reference).await.unwrap().unwrap();
        assert_eq!(o.address, req.shipping_address);
        // Ordered orders keep it however long they wait.
        clock.advance(std::time::Duration::from_secs(90 * 86_400));
        assert!(
            s.orders()
                .get(&d.reference)
                .await
                .unwrap()
                .unwrap()
                .address
                .is_some()
        );
        s.orders().mark_shipped(&d.reference, None).await.unwrap();
        clock.advance(std::time::Duration::from_secs(29 * 86_400));
        let listed = s.orders().list(None, None, 10).await.unwrap().orders;
        assert!(listed[0].address.is_some());
        clock.advance(std::time::Duration::from_secs(86_400));
        let listed = s.orders().list(None, None, 10).await.unwrap().orders;
        assert_eq!(listed[0].address, None);
        // Erased in the store, not only in the copy read.
        let raw = s
            .orders
            .store
            .get(&s.orders.id, &format!("order/{}", d.reference))
            .await
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("Chiyoda"));
    }

    #[tokio::test]
    async fn an_issue_without_an_address_only_finds_an_existing_order() {
        let clock = ManualClock::new(Timestamp(0));
        let s = shipment(Arc::new(MemoryProviderStore::new()), &clock);
        let mut bare = request("k1", "book-card");
        bare.shipping_address = None;
        let e = s.issue(&bare).await.unwrap_err();
        assert_eq!(e.class(), "retryable");
        assert!(
            s.orders()
                .list(None, None, 10)
                .await
                .unwrap()
                .orders
                .is_empty()
        );
        let d = s.issue(&request("k1", "book-card")).await.unwrap();
        assert_eq!(s.issue(&bare).await.unwrap(), d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_issues_with_one_key_create_one_order() {
        let clock = ManualClock::new(Timestamp(0));
        let s = shipment(Arc::new(MemoryProviderStore::new()), &clock);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let s = s.clone();
            set.spawn(async move { s.issue(&request("same", "book")).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(
            s.orders()
                .list(None, None, 1000)
                .await
                .unwrap()
                .orders
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_unknown_outcome() {
        let s = shipment(Arc::new(Down), &ManualClock::new(Timestamp(0)));
        assert_eq!(
            s.issue(&request("k", "book")).await.unwrap_err().class(),
            "unknown"
        );
        assert_eq!(s.lookup("k").await.unwrap_err().class(), "unknown");
        assert_eq!(
            s.orders()
                .mark_shipped("SHP-X", None)
                .await
                .unwrap_err()
                .class(),
            "unknown"
        );
    }
}
