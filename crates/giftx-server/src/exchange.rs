//! `giftx.v1.ExchangeService`: verify, exchange, re-display. The logic is
//! the engine's ([`crate::exchanger`]); this is the protobuf edge.

use std::sync::Arc;

use giftx_core::model::{DeliverableKind, ExchangeState, PostalAddress};
use giftx_core::{DomainError, FieldViolation};
use giftx_ledger::Preferences;
use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_server::ExchangeService;
use giftx_providers::ProviderConfig;
use giftx_providers::shipment::ShipmentOrders;
use tonic::{Request, Response, Status};

use crate::auth::{self, Principal};
use crate::convert::{
    self, campaign_name, code_state_to_proto, deliverable_kind_to_proto, exchange_name,
    exchange_state_to_proto, money_to_proto, timestamp_to_proto,
};
use crate::exchanger::{ExchangeInput, ExchangeView};
use crate::state::AppState;
use crate::status::ApiError;

/// The `ErrorInfo` reason of an Exchange refused because the code's
/// earlier exchange is parked for an operator.
pub const EXCHANGE_PARKED: &str = "EXCHANGE_PARKED";

/// The ExchangeService implementation.
#[derive(Debug, Clone)]
pub struct ExchangeApi {
    state: Arc<AppState>,
}

impl ExchangeApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        ExchangeApi { state }
    }

    fn reply<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|e| self.state.status(e))
    }
}

/// Who an exchange is shown to, which decides whether the deliverable's
/// secret parts (`code`, `pin`, `redeem_url`) are in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The holder, who proved it with the code and login key: Exchange and
    /// GetExchange only. The whole deliverable.
    Holder,
    /// Everyone else (operator views such as ReconcileExchange and
    /// ListPendingExchanges, and VerifyCode's summary): the deliverable's
    /// kind, value, expiry and provider reference, never its secret parts.
    Summary,
}

/// An exchange as protobuf, for `audience`.
pub fn exchange_to_proto(v: &ExchangeView, audience: Audience) -> pb::Exchange {
    let r = &v.record;
    pb::Exchange {
        name: exchange_name(&r.id),
        state: exchange_state_to_proto(r.state) as i32,
        option_id: r.option.to_string(),
        deliverable: v.deliverable.as_ref().map(|d| {
            let summary = pb::Deliverable {
                kind: deliverable_kind_to_proto(d.kind) as i32,
                value: d.value.map(money_to_proto),
                expire_time: d.expire_time.map(timestamp_to_proto),
                reference: d.reference.clone(),
                // Built field by field from an empty message: a secret
                // field added later stays out of summaries by default.
                ..pb::Deliverable::default()
            };
            match audience {
                Audience::Summary => summary,
                Audience::Holder => pb::Deliverable {
                    code: d.code.clone(),
                    pin: d.pin.clone(),
                    redeem_url: d.redeem_url.clone(),
                    ..summary
                },
            }
        }),
        create_time: Some(timestamp_to_proto(r.create_time)),
        update_time: Some(timestamp_to_proto(r.update_time)),
        campaign: campaign_name(&v.campaign),
        failure_reason: r.failure_reason.clone(),
        attempts: i32::try_from(r.attempts).unwrap_or(i32::MAX),
        parked: r.parked,
    }
}

/// Parses the code and login key of a request, reporting both fields.
fn credentials(
    code: &str,
    login_key: &str,
) -> Result<(giftx_core::Code, giftx_core::LoginKey), Vec<FieldViolation>> {
    let c = convert::parse_code("code", code);
    let k = convert::parse_login_key("login_key", login_key);
    match (c, k) {
        (Ok(c), Ok(k)) => Ok((c, k)),
        (c, k) => Err(c.err().into_iter().chain(k.err()).collect()),
    }
}

impl ExchangeApi {
    /// The exchange as protobuf; a SHIPMENT deliverable also says whether
    /// (and when) it was mailed, read from the shipping order. When the
    /// order cannot be read now, those fields stay unset (logged).
    async fn with_shipping(&self, view: &ExchangeView, audience: Audience) -> pb::Exchange {
        let mut x = exchange_to_proto(view, audience);
        let Some(d) = view
            .deliverable
            .as_ref()
            .filter(|d| d.kind == DeliverableKind::Shipment)
        else {
            return x;
        };
        let Some(provider) = self
            .state
            .campaign(&view.campaign)
            .await
            .ok()
            .and_then(|c| {
                c.option(view.record.option.as_str())
                    .map(|o| o.provider.clone())
            })
        else {
            return x;
        };
        let Some(ProviderConfig::Shipment(config)) = self.state.provider_set.configs.get(&provider)
        else {
            return x;
        };
        let orders = ShipmentOrders::new(
            provider.clone(),
            self.state.provider_set.store.clone(),
            self.state.clock.clone(),
        )
        .with_address_retention(config.address_retention());
        match orders.get(&d.reference).await {
            Ok(Some(o)) => {
                if let Some(pd) = x.deliverable.as_mut() {
                    pd.ship_time = o.ship_time().map(timestamp_to_proto);
                    pd.tracking = o.tracking.unwrap_or_default();
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(reference = %d.reference, error = %e, "shipping order unreadable");
            }
        }
        x
    }

    async fn verify_impl(
        &self,
        p: &Principal,
        req: pb::VerifyCodeRequest,
    ) -> Result<pb::CodeStatus, ApiError> {
        let (code, key) = credentials(&req.code, &req.login_key)?;
        let s = self.state.exchanger.verify(&code, &key, p.scope()).await?;
        let c = &s.campaign;
        Ok(pb::CodeStatus {
            campaign: campaign_name(&c.spec.id),
            state: code_state_to_proto(s.state) as i32,
            face_value: Some(money_to_proto(c.spec.face_value)),
            expire_time: Some(timestamp_to_proto(c.spec.expire_time)),
            // Only the options (not the whole campaign as protobuf).
            options: c
                .spec
                .options
                .iter()
                .map(|o| pb::RedemptionOption {
                    option_id: o.id.to_string(),
                    display_name: o.display_name.clone(),
                    provider: o.provider.to_string(),
                    requires_shipping_address: self.state.exchanger.ships_goods(&o.provider),
                })
                .collect(),
            // A summary: the deliverable is shown again only by GetExchange.
            exchange: match &s.exchange {
                Some(x) => Some(self.with_shipping(x, Audience::Summary).await),
                None => None,
            },
        })
    }

    async fn exchange_impl(
        &self,
        p: &Principal,
        req: pb::ExchangeRequest,
    ) -> Result<pb::Exchange, ApiError> {
        let mut v = Vec::new();
        let creds = credentials(&req.code, &req.login_key)
            .map_err(|e| v.extend(e))
            .ok();
        if req.option_id.is_empty() {
            v.push(FieldViolation::new("option_id", "must not be empty"));
        } else if let Err(e) = convert::check_text("option_id", &req.option_id, 63) {
            v.push(e);
        }
        if let Err(e) = convert::check_request_id("request_id", &req.request_id, true) {
            v.push(e);
        }
        let email = convert::check_email("contact_email", &req.contact_email)
            .map_err(|e| v.push(e))
            .ok()
            .flatten();
        let address = if req.shipping_address.trim().is_empty() {
            None
        } else {
            PostalAddress::parse("shipping_address", &req.shipping_address)
                .map_err(|e| v.push(e))
                .ok()
        };
        let Some((code, login_key)) = creds.filter(|_| v.is_empty()) else {
            return Err(v.into());
        };
        let result = self
            .state
            .exchanger
            .exchange(ExchangeInput {
                code: code.clone(),
                login_key: login_key.clone(),
                option_id: req.option_id,
                request_id: req.request_id,
                contact_email: email,
                preferences: Preferences {
                    delete_personal_data: req.delete_personal_data,
                    stop_mail: req.stop_mail,
                },
                shipping_address: address,
                scope: p.scope().cloned(),
            })
            .await;
        let view = match result {
            Err(DomainError::ExchangeInFlight) => {
                return Err(self.in_flight(p, &code, &login_key).await);
            }
            r => r?,
        };
        Ok(self.with_shipping(&view, Audience::Holder).await)
    }

    /// Why another exchange of the code is in the way: a parked one waits
    /// for an operator, so "retry in a second" would be a lie
    /// (FAILED_PRECONDITION, `EXCHANGE_PARKED`, no RetryInfo); anything
    /// else is in flight and ends soon (ABORTED, `EXCHANGE_IN_FLIGHT`).
    async fn in_flight(
        &self,
        p: &Principal,
        code: &giftx_core::Code,
        key: &giftx_core::LoginKey,
    ) -> ApiError {
        match self.state.exchanger.latest(code, key, p.scope()).await {
            Ok(v) if v.record.state == ExchangeState::Pending && v.record.parked => {
                ApiError::Precondition {
                    reason: EXCHANGE_PARKED,
                    message: "the code's earlier exchange is parked: its provider outcome is \
                              unknown and an operator must resolve it (ReconcileExchange); \
                              retrying will not help until then"
                        .into(),
                }
            }
            _ => DomainError::ExchangeInFlight.into(),
        }
    }

    /// Counts a failed verification against the end user: a wrong login
    /// key or an unknown code (LOGIN_KEY_MISMATCH), or a locked code.
    async fn counted<T>(&self, who: Option<&str>, r: &Result<T, ApiError>) {
        if matches!(
            r,
            Err(ApiError::Domain(
                DomainError::LoginKeyMismatch | DomainError::CodeLocked { .. }
            ))
        ) {
            self.state.auth.end_user_failed(who).await;
        }
    }

    async fn get_exchange_impl(
        &self,
        p: &Principal,
        req: pb::GetExchangeRequest,
    ) -> Result<pb::Exchange, ApiError> {
        let (code, key) = credentials(&req.code, &req.login_key)?;
        let view = self.state.exchanger.latest(&code, &key, p.scope()).await?;
        Ok(self.with_shipping(&view, Audience::Holder).await)
    }
}

#[tonic::async_trait]
impl ExchangeService for ExchangeApi {
    async fn verify_code(
        &self,
        request: Request<pb::VerifyCodeRequest>,
    ) -> Result<Response<pb::CodeStatus>, Status> {
        let p = auth::principal(&request)?;
        let who = self.state.auth.end_user(&p, &request);
        self.state.auth.check_end_user(who.as_deref()).await?;
        let r = self.verify_impl(&p, request.into_inner()).await;
        self.counted(who.as_deref(), &r).await;
        self.reply(r)
    }

    async fn exchange(
        &self,
        request: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        let p = auth::principal(&request)?;
        let who = self.state.auth.end_user(&p, &request);
        self.state.auth.check_end_user(who.as_deref()).await?;
        let r = self.exchange_impl(&p, request.into_inner()).await;
        self.counted(who.as_deref(), &r).await;
        self.reply(r)
    }

    async fn get_exchange(
        &self,
        request: Request<pb::GetExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        let p = auth::principal(&request)?;
        let who = self.state.auth.end_user(&p, &request);
        self.state.auth.check_end_user(who.as_deref()).await?;
        let r = self.get_exchange_impl(&p, request.into_inner()).await;
        self.counted(who.as_deref(), &r).await;
        self.reply(r)
    }
}
