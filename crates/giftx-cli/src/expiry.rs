//! `giftctl campaign extend`, `expiry sweep`, `pending list|reconcile`
//! (ExpiryService).

use giftx_proto::v1::{
    ExtendCampaignRequest, ListPendingExchangesRequest, ReconcileExchangeRequest,
    SweepExpiredRequest,
};
use serde_json::json;

use crate::cli::{ExpiryCommand, PendingCommand};
use crate::error::{Error, Result};
use crate::issuance::campaign_name;
use crate::render::{self, Output};
use crate::rpc::Clients;
use crate::time::to_proto_duration;

/// Runs `giftctl campaign extend`.
///
/// # Errors
/// What the RPC fails with.
pub async fn extend(
    clients: &mut Clients,
    out: Output,
    id: &str,
    deadline: prost_types::Timestamp,
    force: bool,
) -> Result<()> {
    let c = clients
        .expiry
        .extend_campaign(ExtendCampaignRequest {
            campaign: campaign_name(id),
            expire_time: Some(deadline),
            force,
        })
        .await
        .map_err(Error::rpc("ExtendCampaign"))?
        .into_inner();
    out.emit(
        || render::campaign_json(&c),
        |w| render::campaign_text(w, &c),
    )
}

/// Runs an `expiry` subcommand.
///
/// # Errors
/// What the RPC fails with.
pub async fn expiry(clients: &mut Clients, out: Output, cmd: ExpiryCommand) -> Result<()> {
    match cmd {
        ExpiryCommand::Sweep { campaign } => {
            if !out.json {
                eprintln!("sweeping {}…", campaign_name(&campaign));
            }
            let r = clients
                .expiry
                .sweep_expired(SweepExpiredRequest {
                    campaign: campaign_name(&campaign),
                })
                .await
                .map_err(Error::rpc("SweepExpired"))?
                .into_inner();
            out.emit(|| render::sweep_json(&r), |w| render::sweep_text(w, &r))
        }
    }
}

/// `exchanges/{id}`; a full name is taken as it is.
pub fn exchange_name(name: &str) -> String {
    if name.starts_with("exchanges/") {
        name.to_owned()
    } else {
        format!("exchanges/{name}")
    }
}

/// Runs a `pending` subcommand.
///
/// # Errors
/// What the RPC fails with.
pub async fn pending(clients: &mut Clients, out: Output, cmd: PendingCommand) -> Result<()> {
    match cmd {
        PendingCommand::List {
            older_than,
            page_size,
        } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = clients
                    .expiry
                    .list_pending_exchanges(ListPendingExchangesRequest {
                        older_than: older_than.map(to_proto_duration),
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(Error::rpc("ListPendingExchanges"))?
                    .into_inner();
                all.extend(page.exchanges);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.emit(
                || json!({"exchanges": all.iter().map(render::exchange_json).collect::<Vec<_>>()}),
                |w| render::pending_text(w, &all),
            )
        }
        PendingCommand::Reconcile { name } => {
            let e = clients
                .expiry
                .reconcile_exchange(ReconcileExchangeRequest {
                    name: exchange_name(&name),
                })
                .await
                .map_err(Error::rpc("ReconcileExchange"))?
                .into_inner();
            out.emit(
                || render::exchange_json(&e),
                |w| render::exchange_text(w, &e, ""),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_names_accept_bare_ids() {
        assert_eq!(exchange_name("x1"), "exchanges/x1");
        assert_eq!(exchange_name("exchanges/x1"), "exchanges/x1");
    }
}
