//! `giftx.v1.ExpiryService`: deadlines, sweeps and in-flight exchanges.
//! The background workers behind it are in [`crate::workers`].

use std::sync::Arc;
use std::time::Duration;

use giftx_core::{DomainError, FieldViolation};
use giftx_proto::v1 as pb;
use giftx_proto::v1::expiry_service_server::ExpiryService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::auth::{self, Principal};
use crate::convert::{self, campaign_name, campaign_to_proto, money_to_proto, timestamp_to_proto};
use crate::exchange::{Audience, exchange_to_proto};
use crate::exchanger::ExchangeView;
use crate::state::AppState;
use crate::status::ApiError;

/// Default ListPendingExchanges page size.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListPendingExchanges page size.
const MAX_PAGE_SIZE: usize = 1000;

/// The ExpiryService implementation.
#[derive(Debug, Clone)]
pub struct ExpiryApi {
    state: Arc<AppState>,
}

impl ExpiryApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        ExpiryApi { state }
    }

    fn reply<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|e| self.state.status(e))
    }

    async fn extend_impl(
        &self,
        p: &Principal,
        req: pb::ExtendCampaignRequest,
    ) -> Result<pb::Campaign, ApiError> {
        let mut v = Vec::new();
        let id = convert::parse_campaign_name("campaign", &req.campaign)
            .map_err(|e| v.push(e))
            .ok();
        let t = match &req.expire_time {
            None => {
                v.push(FieldViolation::new("expire_time", "must be set"));
                None
            }
            Some(t) => convert::timestamp_from_proto("expire_time", t)
                .map_err(|e| v.push(e))
                .ok(),
        };
        let now = self.state.now();
        // A deadline change never deletes: force may move the deadline
        // earlier, but not before now (the ledger checks it too).
        if req.force && t.is_some_and(|t| t < now) {
            v.push(FieldViolation::new(
                "expire_time",
                "must not be before now when force moves the deadline earlier",
            ));
        }
        let (Some(id), Some(t), true) = (id, t, v.is_empty()) else {
            return Err(v.into());
        };
        self.state.campaign_for(p, &id).await?;
        let bulk = crate::telemetry::bulk_span("extend_campaign");
        let c = self
            .state
            .ledger
            .extend_campaign(&id, t, req.force, now)
            .instrument(bulk)
            .await?;
        self.state.invalidate_campaign(&id);
        tracing::info!(campaign = %id, expire_time = t.millis(), force = req.force, "deadline moved");
        Ok(campaign_to_proto(&self.state.remember_campaign(c)))
    }

    async fn sweep_impl(
        &self,
        p: &Principal,
        req: pb::SweepExpiredRequest,
    ) -> Result<pb::SweepReport, ApiError> {
        let id = convert::parse_campaign_name("campaign", &req.campaign)?;
        let campaign = self.state.campaign_for(p, &id).await?;
        let now = self.state.now();
        let bulk = crate::telemetry::bulk_span("sweep");
        let out = self
            .state
            .ledger
            .sweep(&id, now)
            .instrument(bulk.clone())
            .await?;
        bulk.record("giftx.buckets", out.buckets);
        bulk.record("giftx.codes", out.expired);
        Ok(pb::SweepReport {
            campaign: campaign_name(&id),
            expired_count: out.expired,
            expired_value: Some(money_to_proto(campaign.spec.face_value.times(out.expired))),
            buckets_swept: i64::try_from(out.buckets).unwrap_or(i64::MAX),
            sweep_time: Some(timestamp_to_proto(self.state.now())),
        })
    }

    async fn list_pending_impl(
        &self,
        p: &Principal,
        req: pb::ListPendingExchangesRequest,
    ) -> Result<pb::ListPendingExchangesResponse, ApiError> {
        let mut v = Vec::new();
        let older_than = match &req.older_than {
            None => Some(Duration::ZERO),
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                v.push(FieldViolation::new("older_than", "must not be negative"));
                None
            }
            Some(d) => Some(
                Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                    + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)),
            ),
        };
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let cursor = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let (Some(older_than), Some(size), Some(cursor)) = (older_than, size, cursor) else {
            return Err(v.into());
        };
        let before = self.state.now().minus(older_than);
        let page = self
            .state
            .ledger
            .list_pending(before, cursor.as_deref(), size)
            .await?;
        let mut exchanges = Vec::with_capacity(page.items.len());
        for record in page.items {
            let Some(c) = self.state.campaign_by_series(record.series).await? else {
                continue;
            };
            if !p.reaches(&c.spec.tenant) {
                continue;
            }
            exchanges.push(exchange_to_proto(
                &ExchangeView {
                    record,
                    campaign: c.spec.id.clone(),
                    deliverable: None,
                },
                Audience::Summary,
            ));
        }
        Ok(pb::ListPendingExchangesResponse {
            exchanges,
            next_page_token: page
                .next
                .as_deref()
                .map(|c| convert::encode_page_token(&self.state.keys, c))
                .unwrap_or_default(),
        })
    }

    async fn reconcile_impl(
        &self,
        p: &Principal,
        req: pb::ReconcileExchangeRequest,
    ) -> Result<pb::Exchange, ApiError> {
        let id = convert::parse_exchange_name("name", &req.name)?;
        // Another tenant's exchange reads as one that does not exist.
        let rec = self
            .state
            .ledger
            .get_exchange(&id)
            .await?
            .ok_or(DomainError::ExchangeNotFound)?;
        let campaign = self.state.campaign_by_series(rec.series).await?;
        if campaign.is_none_or(|c| !p.reaches(&c.spec.tenant)) {
            return Err(DomainError::ExchangeNotFound.into());
        }
        let (view, outcome) = self.state.exchanger.reconcile(&id).await?;
        tracing::info!(exchange = %id.0, ?outcome, "reconciled on request");
        // An operator view: whoever knows an exchange name (ListPreferences
        // and ListPendingExchanges show them) must not get the holder's
        // deliverable from it.
        Ok(exchange_to_proto(&view, Audience::Summary))
    }
}

#[tonic::async_trait]
impl ExpiryService for ExpiryApi {
    async fn extend_campaign(
        &self,
        request: Request<pb::ExtendCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().campaign.clone());
        self.reply(self.extend_impl(&p, request.into_inner()).await)
    }

    async fn sweep_expired(
        &self,
        request: Request<pb::SweepExpiredRequest>,
    ) -> Result<Response<pb::SweepReport>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().campaign.clone());
        self.reply(self.sweep_impl(&p, request.into_inner()).await)
    }

    async fn list_pending_exchanges(
        &self,
        request: Request<pb::ListPendingExchangesRequest>,
    ) -> Result<Response<pb::ListPendingExchangesResponse>, Status> {
        let p = auth::principal(&request)?;
        self.reply(self.list_pending_impl(&p, request.into_inner()).await)
    }

    async fn reconcile_exchange(
        &self,
        request: Request<pb::ReconcileExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().name.clone());
        self.reply(self.reconcile_impl(&p, request.into_inner()).await)
    }
}
