//! `giftx.v1.ExpiryService`: deadlines, sweeps and in-flight exchanges.
//!
//! Placeholder: the RPCs answer UNIMPLEMENTED until the expiry issue
//! lands; the constructor is the contract the server wiring relies on.

use std::sync::Arc;

use giftx_proto::v1 as pb;
use giftx_proto::v1::expiry_service_server::ExpiryService;
use tonic::{Request, Response, Status};

use crate::state::AppState;

/// The ExpiryService implementation.
#[derive(Debug, Clone)]
pub struct ExpiryApi {
    #[allow(dead_code)] // used once the RPCs are implemented
    state: Arc<AppState>,
}

impl ExpiryApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        ExpiryApi { state }
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "giftx.v1.ExpiryService/{rpc} is not implemented yet in this giftxd build"
    ))
}

#[tonic::async_trait]
impl ExpiryService for ExpiryApi {
    async fn extend_campaign(
        &self,
        _request: Request<pb::ExtendCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        Err(unimplemented("ExtendCampaign"))
    }

    async fn sweep_expired(
        &self,
        _request: Request<pb::SweepExpiredRequest>,
    ) -> Result<Response<pb::SweepReport>, Status> {
        Err(unimplemented("SweepExpired"))
    }

    async fn list_pending_exchanges(
        &self,
        _request: Request<pb::ListPendingExchangesRequest>,
    ) -> Result<Response<pb::ListPendingExchangesResponse>, Status> {
        Err(unimplemented("ListPendingExchanges"))
    }

    async fn reconcile_exchange(
        &self,
        _request: Request<pb::ReconcileExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        Err(unimplemented("ReconcileExchange"))
    }
}
