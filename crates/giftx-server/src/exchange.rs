//! `giftx.v1.ExchangeService`: verify, exchange, re-display.
//!
//! Placeholder: the RPCs answer UNIMPLEMENTED until the exchange issue
//! lands; the constructor is the contract the server wiring relies on.

use std::sync::Arc;

use giftx_proto::v1 as pb;
use giftx_proto::v1::exchange_service_server::ExchangeService;
use tonic::{Request, Response, Status};

use crate::state::AppState;

/// The ExchangeService implementation.
#[derive(Debug, Clone)]
pub struct ExchangeApi {
    #[allow(dead_code)] // used once the RPCs are implemented
    state: Arc<AppState>,
}

impl ExchangeApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        ExchangeApi { state }
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "giftx.v1.ExchangeService/{rpc} is not implemented yet in this giftxd build"
    ))
}

#[tonic::async_trait]
impl ExchangeService for ExchangeApi {
    async fn verify_code(
        &self,
        _request: Request<pb::VerifyCodeRequest>,
    ) -> Result<Response<pb::CodeStatus>, Status> {
        Err(unimplemented("VerifyCode"))
    }

    async fn exchange(
        &self,
        _request: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        Err(unimplemented("Exchange"))
    }

    async fn get_exchange(
        &self,
        _request: Request<pb::GetExchangeRequest>,
    ) -> Result<Response<pb::Exchange>, Status> {
        Err(unimplemented("GetExchange"))
    }
}
