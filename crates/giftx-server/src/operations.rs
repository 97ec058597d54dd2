//! `giftx.v1.OperationsService`: operator tasks around providers: stock
//! imports and status, shipping orders for the mailing vendor, and (later)
//! holders' preferences.
//!
//! Served whenever the issuance service is (both are operator-internal),
//! so it has no [`ServiceKind`](crate::ServiceKind) of its own: a
//! deployment that exposes issuance exposes this, and one that hides it
//! hides both.
//!
//! Stock and shipments work on the providers' sealed store through
//! [`StockInventory`] and [`ShipmentOrders`], the same code the adapters
//! use; no adapter instance is needed. ListPreferences answers
//! UNIMPLEMENTED until the ledger can list a campaign's exchanges with
//! their preferences.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt as _;
use giftx_core::model::{CampaignId, ProviderId};
use giftx_core::{DomainError, FieldViolation};
use giftx_ledger::ExchangeId;
use giftx_proto::v1 as pb;
use giftx_proto::v1::operations_service_server::{OperationsService, OperationsServiceServer};
use giftx_provider::ProviderError;
use giftx_providers::ProviderConfig;
use giftx_providers::shipment::{MarkShipped, OrderState, ShipmentOrder, ShipmentOrders};
use giftx_providers::stock::{ImportItem, StockEntry, StockInventory};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::auth::{self, Principal};
use crate::convert::{self, timestamp_from_proto, timestamp_to_proto};
use crate::state::AppState;
use crate::status::{ApiError, ERROR_DOMAIN};

/// The service's full gRPC name (health and reflection list it).
pub const SERVICE_NAME: &str = "giftx.v1.OperationsService";
/// Most items in one ImportStock message.
pub const MAX_IMPORT_ITEMS: usize = 10_000;
/// Longest stock item code or PIN, in characters.
pub const MAX_STOCK_FIELD: usize = 200;
/// Default ListShipments page size.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Largest ListShipments page size (larger requests are coerced).
pub const MAX_PAGE_SIZE: usize = 5_000;
/// Most references in one MarkShipped call.
pub const MAX_MARK_REFERENCES: usize = 10_000;
/// Longest order reference or tracking number, in characters.
pub const MAX_REFERENCE: usize = 200;
/// With a state filter, at most this many pages of orders are read to
/// fill one response (the rest follows through the page token).
const MAX_FILTER_SCANS: usize = 8;
/// Orders marked concurrently by one MarkShipped call.
const MARK_CONCURRENCY: usize = 16;

/// Largest ImportStock message accepted: 10,000 items of 200-character
/// codes and PINs in any script, with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 20 << 20;

/// The service ready to mount: [`OperationsApi`] taking messages up to
/// [`MAX_MESSAGE_BYTES`].
pub fn server(state: Arc<AppState>) -> OperationsServiceServer<OperationsApi> {
    OperationsServiceServer::new(OperationsApi::new(state))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// What an operations handler fails with: any [`ApiError`], or what the
/// shared error type has no variant for.
#[derive(Debug)]
enum OpsError {
    Api(ApiError),
    /// NOT_FOUND: no provider with this id is configured.
    ProviderNotFound(String),
    /// The request stream failed (too large a message, a broken call).
    Stream(Status),
}

impl From<ApiError> for OpsError {
    fn from(e: ApiError) -> Self {
        OpsError::Api(e)
    }
}

impl From<FieldViolation> for OpsError {
    fn from(v: FieldViolation) -> Self {
        OpsError::Api(v.into())
    }
}

impl From<Vec<FieldViolation>> for OpsError {
    fn from(v: Vec<FieldViolation>) -> Self {
        OpsError::Api(v.into())
    }
}

/// A store failure: the store did not answer, or answered garbage. Never
/// the caller's fault, and a retry is safe (imports and marks are
/// idempotent).
fn store_error(e: ProviderError) -> OpsError {
    match e {
        ProviderError::Unknown { reason } if reason.contains("store internal error") => {
            OpsError::Api(ApiError::internal(format!("provider store: {reason}")))
        }
        other => OpsError::Api(ApiError::Domain(DomainError::Unavailable(format!(
            "provider store: {other}"
        )))),
    }
}

/// The two provider kinds this service works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stock,
    Shipment,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Shipment => "shipment",
        }
    }

    fn matches(self, c: &ProviderConfig) -> bool {
        matches!(
            (self, c),
            (Kind::Stock, ProviderConfig::Stock(_)) | (Kind::Shipment, ProviderConfig::Shipment(_))
        )
    }
}

/// The OperationsService implementation.
#[derive(Debug, Clone)]
pub struct OperationsApi {
    state: Arc<AppState>,
}

impl OperationsApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        OperationsApi { state }
    }

    fn status(&self, e: OpsError) -> Status {
        match e {
            OpsError::Api(e) => self.state.status(e),
            OpsError::ProviderNotFound(id) => {
                let mut d = ErrorDetails::new();
                d.set_error_info(
                    "PROVIDER_NOT_FOUND",
                    ERROR_DOMAIN,
                    HashMap::from([("provider".to_owned(), id.clone())]),
                );
                d.set_resource_info(
                    "giftx.dev/Provider",
                    id.clone(),
                    "",
                    format!("provider: {id} is not configured on this server"),
                );
                Status::with_error_details(
                    Code::NotFound,
                    format!("provider {id} is not configured (add [providers.{id}])"),
                    d,
                )
            }
            OpsError::Stream(status) => status,
        }
    }

    fn reply<T>(&self, r: Result<T, OpsError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|e| self.status(e))
    }

    /// Checks that `provider` names a configured provider of `kind` that
    /// `p` may work on: stock of its tenant's providers only (shared
    /// stock is an admin's), orders of any provider its campaigns may
    /// use (filtered by campaign). Any other reads as not configured.
    fn provider(&self, p: &Principal, provider: &str, kind: Kind) -> Result<ProviderId, OpsError> {
        if provider.is_empty() {
            return Err(FieldViolation::new("provider", "must not be empty").into());
        }
        let id = ProviderId::parse("provider", provider)?;
        if !self.state.provider_for(p, id.as_str(), kind == Kind::Stock) {
            return Err(OpsError::ProviderNotFound(id.to_string()));
        }
        match self.state.provider_set.configs.get(&id) {
            None => Err(OpsError::ProviderNotFound(id.to_string())),
            Some(c) if !kind.matches(c) => Err(FieldViolation::new(
                "provider",
                format!(
                    "{id} is a {} provider, not a {} provider",
                    c.kind(),
                    kind.name()
                ),
            )
            .into()),
            Some(_) => Ok(id),
        }
    }

    fn inventory(&self, id: ProviderId) -> StockInventory {
        StockInventory::new(id, self.state.provider_set.store.clone())
    }

    fn orders(&self, id: ProviderId) -> ShipmentOrders {
        let orders = ShipmentOrders::new(
            id.clone(),
            self.state.provider_set.store.clone(),
            self.state.clock.clone(),
        );
        match self.state.provider_set.configs.get(&id) {
            Some(ProviderConfig::Shipment(c)) => {
                orders.with_address_retention(c.address_retention())
            }
            _ => orders,
        }
    }

    /// An order as protobuf, with the batch and serial of its exchange's
    /// code from the ledger (`batches` caches batch names by campaign and
    /// ordinal across a page).
    async fn shipment(
        &self,
        o: &ShipmentOrder,
        batches: &mut HashMap<(String, u32), String>,
    ) -> Result<pb::Shipment, ApiError> {
        let mut s = shipment_to_proto(o);
        let Ok(campaign) = CampaignId::parse("campaign", &o.campaign) else {
            return Ok(s);
        };
        s.campaign = convert::campaign_name(&campaign);
        let Some(id) = o.idempotency_key.strip_prefix("giftx-") else {
            return Ok(s);
        };
        let Some(rec) = self
            .state
            .ledger
            .get_exchange(&ExchangeId(id.to_owned()))
            .await?
        else {
            return Ok(s);
        };
        let k = (o.campaign.clone(), rec.batch_ordinal);
        let batch = match batches.get(&k) {
            Some(b) => b.clone(),
            None => {
                let b = self
                    .state
                    .ledger
                    .batch_by_ordinal(&campaign, rec.batch_ordinal)
                    .await?
                    .map(|b| convert::batch_name(&b.campaign, &b.id))
                    .unwrap_or_default();
                batches.insert(k, b.clone());
                b
            }
        };
        if !batch.is_empty() {
            s.batch = batch;
            s.serial = i64::from(rec.serial);
        }
        Ok(s)
    }

    /// Does the order belong to a campaign `p` reaches? (`seen` caches the
    /// answer per campaign across a page.)
    async fn reaches_order(
        &self,
        p: &Principal,
        o: &ShipmentOrder,
        seen: &mut HashMap<String, bool>,
    ) -> Result<bool, ApiError> {
        if p.scope().is_none() {
            return Ok(true);
        }
        if let Some(r) = seen.get(&o.campaign) {
            return Ok(*r);
        }
        let r = match CampaignId::parse("campaign", &o.campaign) {
            Ok(id) => match self.state.campaign_for(p, &id).await {
                Ok(_) => true,
                Err(ApiError::Domain(DomainError::CampaignNotFound)) => false,
                Err(e) => return Err(e),
            },
            Err(_) => false,
        };
        seen.insert(o.campaign.clone(), r);
        Ok(r)
    }

    /// Validates one ImportStock message's items into import items.
    fn import_items(
        &self,
        provider: &ProviderId,
        items: Vec<pb::StockItem>,
    ) -> Result<Vec<ImportItem>, Vec<FieldViolation>> {
        let mut v = Vec::new();
        if items.len() > MAX_IMPORT_ITEMS {
            v.push(FieldViolation::new(
                "items",
                format!(
                    "holds {} items; send at most {MAX_IMPORT_ITEMS} per message",
                    items.len()
                ),
            ));
            return Err(v);
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.into_iter().enumerate() {
            // Report a handful of bad items, not ten thousand.
            if v.len() >= 20 {
                break;
            }
            let f = |name: &str| format!("items[{i}].{name}");
            let code = it.code.trim();
            if code.is_empty() {
                v.push(FieldViolation::new(f("code"), "must not be empty"));
            } else if let Err(e) = convert::check_text(&f("code"), code, MAX_STOCK_FIELD) {
                v.push(e);
            }
            let pin = it.pin.trim();
            if let Err(e) = convert::check_text(&f("pin"), pin, MAX_STOCK_FIELD) {
                v.push(e);
            }
            let expire = match &it.expire_time {
                None => None,
                Some(t) => match timestamp_from_proto(&f("expire_time"), t) {
                    Ok(t) => Some(t.millis()),
                    Err(e) => {
                        v.push(e);
                        None
                    }
                },
            };
            if v.is_empty() {
                let entry = StockEntry {
                    code: code.to_owned(),
                    pin: pin.to_owned(),
                    expire_time_ms: expire,
                };
                out.push(ImportItem::new(self.state.keys.anchor(), provider, entry));
            }
        }
        if v.is_empty() { Ok(out) } else { Err(v) }
    }

    async fn import_stock_impl(
        &self,
        p: &Principal,
        mut stream: Streaming<pb::ImportStockRequest>,
    ) -> Result<pb::ImportStockResponse, OpsError> {
        let mut provider: Option<(String, ProviderId)> = None;
        let (mut added, mut duplicates, mut messages) = (0u64, 0u64, 0u64);
        // Errors after the first chunk say what is already in, so the
        // operator knows a re-run counts it as duplicates.
        let so_far = |added: u64, duplicates: u64| {
            format!(
                " ({added} items added and {duplicates} duplicates from earlier messages are \
                 imported; importing them again counts them as duplicates)"
            )
        };
        // A broken or oversized stream answers with tonic's own status.
        while let Some(msg) = stream.message().await.map_err(OpsError::Stream)? {
            let id = match &provider {
                None => {
                    let id = self.provider(p, &msg.provider, Kind::Stock)?;
                    provider = Some((msg.provider.clone(), id.clone()));
                    id
                }
                Some((first, id)) => {
                    if &msg.provider != first {
                        return Err(FieldViolation::new(
                            "provider",
                            format!(
                                "message {} names provider {:?}, but the stream began with {first:?}; \
                                 use one provider per ImportStock call{}",
                                messages + 1,
                                convert_short(&msg.provider),
                                so_far(added, duplicates)
                            ),
                        )
                        .into());
                    }
                    id.clone()
                }
            };
            messages += 1;
            let items = self.import_items(&id, msg.items).map_err(|mut v| {
                if messages > 1 {
                    for x in &mut v {
                        x.description.push_str(&so_far(added, duplicates));
                    }
                }
                OpsError::from(v)
            })?;
            if items.is_empty() {
                continue;
            }
            let r = self
                .inventory(id.clone())
                .import(&items)
                .await
                .map_err(store_error)?;
            added += r.added;
            duplicates += r.duplicates;
        }
        let Some((name, id)) = provider else {
            return Err(FieldViolation::new(
                "provider",
                "must not be empty (the stream held no message)",
            )
            .into());
        };
        let status = self.inventory(id).status().await.map_err(store_error)?;
        tracing::info!(provider = %name, added, duplicates, available = status.available, "stock imported");
        Ok(pb::ImportStockResponse {
            provider: name,
            added: to_i64(added),
            duplicates: to_i64(duplicates),
            available: to_i64(status.available),
        })
    }

    async fn get_stock_status_impl(
        &self,
        p: &Principal,
        req: pb::GetStockStatusRequest,
    ) -> Result<pb::StockStatus, OpsError> {
        let id = self.provider(p, &req.provider, Kind::Stock)?;
        let s = self.inventory(id).status().await.map_err(store_error)?;
        Ok(pb::StockStatus {
            provider: req.provider,
            available: to_i64(s.available),
            handed_out: to_i64(s.handed_out),
        })
    }

    async fn list_shipments_impl(
        &self,
        p: &Principal,
        req: pb::ListShipmentsRequest,
    ) -> Result<pb::ListShipmentsResponse, OpsError> {
        let mut v = Vec::new();
        let id = match self.provider(p, &req.provider, Kind::Shipment) {
            Ok(id) => Some(id),
            Err(OpsError::Api(ApiError::Domain(DomainError::InvalidArgument(e)))) => {
                v.extend(e);
                None
            }
            Err(e) => return Err(e),
        };
        let state = convert::enum_from_proto::<pb::ShipmentState>("state", req.state, true)
            .map_err(|e| v.push(e))
            .ok();
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let cursor = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let (Some(id), Some(state), Some(size), Some(mut cursor)) = (id, state, size, cursor)
        else {
            return Err(v.into());
        };
        let state = state.and_then(|s| match s {
            pb::ShipmentState::Ordered => Some(OrderState::Ordered),
            pb::ShipmentState::Shipped => Some(OrderState::Shipped),
            pb::ShipmentState::Unspecified => None,
        });
        let orders = self.orders(id);
        let mut shipments = Vec::new();
        let mut batches = HashMap::new();
        let mut reach = HashMap::new();
        // With a filter a page of orders may hold few matches: read on
        // (boundedly) so callers rarely see short pages.
        for _ in 0..MAX_FILTER_SCANS {
            let want = size - shipments.len();
            let page = orders
                .list(state, cursor.as_deref(), want)
                .await
                .map_err(store_error)?;
            for o in &page.orders {
                if self.reaches_order(p, o, &mut reach).await? {
                    shipments.push(self.shipment(o, &mut batches).await?);
                }
            }
            cursor = page.next;
            if cursor.is_none() || shipments.len() >= size {
                break;
            }
        }
        Ok(pb::ListShipmentsResponse {
            shipments,
            next_page_token: cursor
                .as_deref()
                .map(|c| convert::encode_page_token(&self.state.keys, c))
                .unwrap_or_default(),
        })
    }

    async fn mark_shipped_impl(
        &self,
        p: &Principal,
        req: pb::MarkShippedRequest,
    ) -> Result<pb::MarkShippedResponse, OpsError> {
        let mut v = Vec::new();
        let id = match self.provider(p, &req.provider, Kind::Shipment) {
            Ok(id) => Some(id),
            Err(OpsError::Api(ApiError::Domain(DomainError::InvalidArgument(e)))) => {
                v.extend(e);
                None
            }
            Err(e) => return Err(e),
        };
        if req.references.is_empty() {
            v.push(FieldViolation::new(
                "references",
                "must name at least one order",
            ));
        } else if req.references.len() > MAX_MARK_REFERENCES {
            v.push(FieldViolation::new(
                "references",
                format!(
                    "holds {} references; send at most {MAX_MARK_REFERENCES} per call",
                    req.references.len()
                ),
            ));
        } else {
            for (i, r) in req.references.iter().enumerate() {
                if v.len() >= 20 {
                    break;
                }
                let f = format!("references[{i}]");
                if r.trim().is_empty() {
                    v.push(FieldViolation::new(f, "must not be empty"));
                } else if let Err(e) = convert::check_text(&f, r.trim(), MAX_REFERENCE) {
                    v.push(e);
                }
            }
        }
        if let Err(e) = convert::check_text("tracking", req.tracking.trim(), MAX_REFERENCE) {
            v.push(e);
        }
        let Some(id) = id.filter(|_| v.is_empty()) else {
            return Err(v.into());
        };
        let tracking: Option<Arc<str>> = Some(req.tracking.trim())
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        // The same reference twice counts once.
        let mut seen = HashSet::new();
        let refs: Vec<String> = req
            .references
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| seen.insert(r.clone()))
            .collect();
        let orders = self.orders(id);
        // Orders of another tenant's campaigns read as unknown references.
        let mut refs_reached = Vec::with_capacity(refs.len());
        let mut foreign = Vec::new();
        if p.scope().is_some() {
            let mut reach = HashMap::new();
            for r in refs {
                match orders.get(&r).await.map_err(store_error)? {
                    Some(o) if !self.reaches_order(p, &o, &mut reach).await? => foreign.push(r),
                    _ => refs_reached.push(r),
                }
            }
        } else {
            refs_reached = refs;
        }
        let results: Vec<(String, Result<MarkShipped, ProviderError>)> =
            futures::stream::iter(refs_reached)
                .map(move |r| {
                    let orders = orders.clone();
                    let tracking = tracking.clone();
                    async move {
                        let res = orders.mark_shipped(&r, tracking.as_deref()).await;
                        (r, res)
                    }
                })
                .buffered(MARK_CONCURRENCY)
                .collect()
                .await;
        let mut out = pb::MarkShippedResponse {
            unknown_references: foreign,
            ..pb::MarkShippedResponse::default()
        };
        let mut failed: Option<ProviderError> = None;
        for (r, res) in results {
            match res {
                Ok(MarkShipped::Shipped(_)) => out.updated += 1,
                Ok(MarkShipped::AlreadyShipped(_)) => out.already_shipped += 1,
                Ok(MarkShipped::NotFound) => out.unknown_references.push(r),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            // Marks that went through stay; repeating the call is safe.
            tracing::warn!(updated = out.updated, error = %e, "MarkShipped partly failed");
            return Err(store_error(e));
        }
        tracing::info!(
            updated = out.updated,
            already_shipped = out.already_shipped,
            unknown = out.unknown_references.len(),
            "orders marked shipped"
        );
        Ok(out)
    }

    async fn list_preferences_impl(
        &self,
        p: &Principal,
        req: pb::ListPreferencesRequest,
    ) -> Result<pb::ListPreferencesResponse, OpsError> {
        let mut v = Vec::new();
        let campaign = convert::parse_campaign_name("campaign", &req.campaign)
            .map_err(|e| v.push(e))
            .ok();
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let cursor = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let (Some(campaign), Some(size), Some(cursor)) = (campaign, size, cursor) else {
            return Err(v.into());
        };
        // NOT_FOUND for an unknown campaign, before any listing.
        self.state.campaign_for(p, &campaign).await?;
        let (preferences, next) =
            crate::preferences::list(&self.state, &campaign, cursor.as_deref(), size).await?;
        Ok(pb::ListPreferencesResponse {
            preferences,
            next_page_token: next
                .as_deref()
                .map(|c| convert::encode_page_token(&self.state.keys, c))
                .unwrap_or_default(),
        })
    }
}

/// At most a few dozen characters of caller input, for messages.
fn convert_short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A shipping order as protobuf.
pub fn shipment_to_proto(o: &ShipmentOrder) -> pb::Shipment {
    pb::Shipment {
        reference: o.reference.clone(),
        state: match o.state {
            OrderState::Ordered => pb::ShipmentState::Ordered,
            OrderState::Shipped => pb::ShipmentState::Shipped,
        } as i32,
        create_time: Some(timestamp_to_proto(o.create_time())),
        ship_time: o.ship_time().map(timestamp_to_proto),
        tracking: o.tracking.clone().unwrap_or_default(),
        campaign: String::new(),
        batch: String::new(),
        serial: 0,
        option_id: o.option.clone(),
        shipping_address: o
            .address
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl OperationsService for OperationsApi {
    async fn import_stock(
        &self,
        request: Request<Streaming<pb::ImportStockRequest>>,
    ) -> Result<Response<pb::ImportStockResponse>, Status> {
        let p = auth::principal(&request)?;
        self.reply(self.import_stock_impl(&p, request.into_inner()).await)
    }

    async fn get_stock_status(
        &self,
        request: Request<pb::GetStockStatusRequest>,
    ) -> Result<Response<pb::StockStatus>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(
            &request,
            format!("providers/{}", request.get_ref().provider),
        );
        self.reply(self.get_stock_status_impl(&p, request.into_inner()).await)
    }

    async fn list_shipments(
        &self,
        request: Request<pb::ListShipmentsRequest>,
    ) -> Result<Response<pb::ListShipmentsResponse>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(
            &request,
            format!("providers/{}", request.get_ref().provider),
        );
        self.reply(self.list_shipments_impl(&p, request.into_inner()).await)
    }

    async fn mark_shipped(
        &self,
        request: Request<pb::MarkShippedRequest>,
    ) -> Result<Response<pb::MarkShippedResponse>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(
            &request,
            format!("providers/{}", request.get_ref().provider),
        );
        self.reply(self.mark_shipped_impl(&p, request.into_inner()).await)
    }

    async fn list_preferences(
        &self,
        request: Request<pb::ListPreferencesRequest>,
    ) -> Result<Response<pb::ListPreferencesResponse>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().campaign.clone());
        self.reply(self.list_preferences_impl(&p, request.into_inner()).await)
    }
}
