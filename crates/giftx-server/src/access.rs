//! `giftx.v1.AccessService`: API keys (create, list, revoke) and the audit
//! trail. Who may call what is [`crate::auth`]'s business: key management
//! needs an admin, ListAuditEvents an operator (its tenant's events) or an
//! admin.

use std::sync::Arc;

use giftx_core::model::TenantId;
use giftx_core::{DomainError, FieldViolation};
use giftx_ledger::access::{ApiKeyRecord, AuditRecord, Role};
use giftx_proto::v1 as pb;
use giftx_proto::v1::access_service_server::{AccessService, AccessServiceServer};
use tonic::{Request, Response, Status};

use crate::auth::{self, Principal};
use crate::convert::{self, timestamp_from_proto, timestamp_to_proto};
use crate::state::AppState;
use crate::status::ApiError;

/// The service's full gRPC name.
pub const SERVICE_NAME: &str = "giftx.v1.AccessService";
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// Longest key description, in characters.
const MAX_DESCRIPTION: usize = 200;
/// Audit events read at most to fill one filtered page.
const MAX_AUDIT_SCAN: usize = 10_000;

/// The service, ready to mount.
pub fn server(state: Arc<AppState>) -> AccessServiceServer<AccessApi> {
    AccessServiceServer::new(AccessApi { state })
}

/// See the module docs.
#[derive(Debug)]
pub struct AccessApi {
    state: Arc<AppState>,
}

fn role_to_proto(r: Role) -> pb::Role {
    match r {
        Role::Portal => pb::Role::Portal,
        Role::Operator => pb::Role::Operator,
        Role::Admin => pb::Role::Admin,
    }
}

fn key_to_proto(k: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        name: format!("apiKeys/{}", k.id),
        tenant: k.tenant.to_string(),
        role: role_to_proto(k.role) as i32,
        create_time: Some(timestamp_to_proto(k.create_time)),
        expire_time: k.expire_time.map(timestamp_to_proto),
        revoke_time: k.revoke_time.map(timestamp_to_proto),
        description: k.description.clone(),
    }
}

fn audit_to_proto(id: String, e: AuditRecord) -> pb::AuditEvent {
    pb::AuditEvent {
        id,
        time: Some(timestamp_to_proto(e.time)),
        principal: e.principal,
        tenant: e.tenant,
        role: e.role.map_or(pb::Role::Unspecified, role_to_proto) as i32,
        method: e.method,
        resource: e.resource,
        outcome: e.outcome,
        trace_id: e.trace_id,
    }
}

impl AccessApi {
    fn reply<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|e| self.state.status(e))
    }

    async fn create(
        &self,
        req: pb::CreateApiKeyRequest,
    ) -> Result<pb::CreateApiKeyResponse, ApiError> {
        let k = req.api_key.unwrap_or_default();
        let mut v = Vec::new();
        let tenant = TenantId::parse("api_key.tenant", &k.tenant)
            .map_err(|e| v.push(e))
            .ok();
        let role = match pb::Role::try_from(k.role) {
            Ok(pb::Role::Portal) => Some(Role::Portal),
            Ok(pb::Role::Operator) => Some(Role::Operator),
            Ok(pb::Role::Admin) => Some(Role::Admin),
            _ => {
                v.push(FieldViolation::new(
                    "api_key.role",
                    "must be ROLE_PORTAL, ROLE_OPERATOR or ROLE_ADMIN",
                ));
                None
            }
        };
        let now = self.state.now();
        let expire = match &k.expire_time {
            Some(t) => match timestamp_from_proto("api_key.expire_time", t) {
                Ok(t) if t > now => Some(t),
                Ok(_) => {
                    v.push(FieldViolation::new(
                        "api_key.expire_time",
                        "must be in the future",
                    ));
                    None
                }
                Err(e) => {
                    v.push(e);
                    None
                }
            },
            None => None,
        };
        if let Err(e) = convert::check_text("api_key.description", &k.description, MAX_DESCRIPTION)
        {
            v.push(e);
        }
        let (Some(tenant), Some(role), true) = (tenant, role, v.is_empty()) else {
            return Err(v.into());
        };
        let new = self
            .state
            .auth
            .new_key(tenant, role, expire, k.description.trim().to_owned())
            .map_err(DomainError::Unavailable)?;
        self.state.auth.store().put_key(&new.record).await?;
        tracing::info!(key = %new.record.id, tenant = %new.record.tenant, role = role.as_str(), "API key created");
        Ok(pb::CreateApiKeyResponse {
            api_key: Some(key_to_proto(&new.record)),
            token: new.token,
        })
    }

    async fn list(&self, req: pb::ListApiKeysRequest) -> Result<pb::ListApiKeysResponse, ApiError> {
        let mut v = Vec::new();
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let cursor = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let tenant = (!req.tenant.is_empty())
            .then(|| {
                TenantId::parse("tenant", &req.tenant)
                    .map_err(|e| v.push(e))
                    .ok()
            })
            .flatten();
        let (Some(size), Some(mut cursor)) = (size, cursor) else {
            return Err(v.into());
        };
        if !v.is_empty() {
            return Err(v.into());
        }
        let mut keys = Vec::new();
        // A tenant filter may need several pages of all keys.
        for _ in 0..16 {
            let page = self
                .state
                .auth
                .store()
                .list_keys(cursor.as_deref(), size)
                .await?;
            keys.extend(
                page.items
                    .iter()
                    .filter(|k| tenant.as_ref().is_none_or(|t| &k.tenant == t))
                    .map(key_to_proto),
            );
            cursor = page.next;
            if cursor.is_none() || keys.len() >= size {
                break;
            }
        }
        Ok(pb::ListApiKeysResponse {
            api_keys: keys,
            next_page_token: cursor
                .map(|c| convert::encode_page_token(&self.state.keys, &c))
                .unwrap_or_default(),
        })
    }

    async fn revoke(&self, req: pb::RevokeApiKeyRequest) -> Result<pb::ApiKey, ApiError> {
        let id = req
            .name
            .strip_prefix("apiKeys/")
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                FieldViolation::new("name", "must be apiKeys/{key_id} (16 hex digits)")
            })?;
        let now = self.state.now();
        let rec = self.state.auth.store().revoke_key(id, now).await?;
        self.state.auth.forget(id);
        match rec {
            Some(k) => {
                tracing::info!(key = %k.id, "API key revoked");
                Ok(key_to_proto(&k))
            }
            None => Err(ApiError::NotFound {
                reason: "API_KEY_NOT_FOUND",
                message: format!("no API key {}", req.name),
            }),
        }
    }

    async fn audit(
        &self,
        p: &Principal,
        req: pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse, ApiError> {
        let mut v = Vec::new();
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let after = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let since = match &req.since {
            Some(t) => timestamp_from_proto("since", t).map_err(|e| v.push(e)).ok(),
            None => Some(giftx_core::Timestamp(0)),
        };
        let (Some(size), Some(mut after), Some(since)) = (size, after, since) else {
            return Err(v.into());
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        loop {
            let page = self
                .state
                .auth
                .store()
                .list_audit(after.as_deref(), since, size)
                .await?;
            let n = page.len();
            scanned += n;
            for (id, e) in page {
                after = Some(id.clone());
                if p.scope().is_none_or(|t| t.as_str() == e.tenant) {
                    events.push(audit_to_proto(id, e));
                }
            }
            if n < size || events.len() >= size || scanned >= MAX_AUDIT_SCAN {
                break;
            }
        }
        Ok(pb::ListAuditEventsResponse {
            events,
            next_page_token: after
                .map(|c| convert::encode_page_token(&self.state.keys, &c))
                .unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        if let Some(k) = &request.get_ref().api_key {
            auth::note_resource(&request, format!("tenants/{}", k.tenant));
        }
        let r = self.create(request.into_inner()).await;
        self.reply(r)
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let r = self.list(request.into_inner()).await;
        self.reply(r)
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        auth::note_resource(&request, request.get_ref().name.clone());
        let r = self.revoke(request.into_inner()).await;
        self.reply(r)
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let p = auth::principal(&request)?;
        let r = self.audit(&p, request.into_inner()).await;
        self.reply(r)
    }
}
