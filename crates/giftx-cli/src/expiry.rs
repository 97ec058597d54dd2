//! `giftctl campaign extend`, `expiry sweep`, `pending list|reconcile`
//! (ExpiryService).

use giftx_proto::v1::{
    CodeState, ExtendCampaignRequest, GetCampaignRequest, GetCampaignStatsRequest,
    ListPendingExchangesRequest, ReconcileExchangeRequest, SweepExpiredRequest,
};
use serde_json::json;

use crate::cli::{ExpiryCommand, PendingCommand};
use crate::confirm::confirm;
use crate::error::{Error, Result};
use crate::issuance::campaign_name;
use crate::render::{self, Output};
use crate::rpc::{Clients, describe_status};
use crate::time::{format_display, to_proto_duration};

/// Runs `giftctl campaign extend`. With `--force` a deadline earlier than
/// the current one is confirmed first (see [`crate::confirm`]), after
/// showing how many codes it concerns.
///
/// # Errors
/// What the RPC fails with; [`Error::Invalid`]/[`Error::Failed`] when an
/// earlier deadline is not confirmed.
pub async fn extend(
    clients: &mut Clients,
    out: Output,
    id: &str,
    deadline: prost_types::Timestamp,
    force: bool,
    yes: bool,
) -> Result<()> {
    if force {
        let plan = earlier_deadline_plan(clients, id, &deadline).await;
        if let Some(plan) = plan {
            confirm(&plan, yes)?;
        }
    }
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

/// What moving `id`'s deadline to `deadline` changes, when it moves it
/// earlier (None when it does not). When the campaign cannot be read (a
/// giftxd serving expiry only), the plan says so and still asks.
async fn earlier_deadline_plan(
    clients: &mut Clients,
    id: &str,
    deadline: &prost_types::Timestamp,
) -> Option<Vec<String>> {
    let name = campaign_name(id);
    let new = format_display(deadline);
    let campaign = clients
        .issuance
        .get_campaign(GetCampaignRequest { name: name.clone() })
        .await;
    let campaign = match campaign {
        Ok(c) => c.into_inner(),
        Err(status) => {
            return Some(vec![
                format!(
                    "campaign extend --force {name}: the deadline may move earlier, to {new} \
                     (the current deadline could not be read: {})",
                    describe_status(&status)
                ),
                "codes not redeemed by then expire; expired codes cannot be exchanged".to_owned(),
            ]);
        }
    };
    let current = campaign.expire_time.unwrap_or_default();
    if (deadline.seconds, deadline.nanos) >= (current.seconds, current.nanos) {
        return None;
    }
    let active = clients
        .issuance
        .get_campaign_stats(GetCampaignStatsRequest {
            campaign: name.clone(),
        })
        .await
        .ok()
        .and_then(|s| {
            s.into_inner()
                .by_state
                .into_iter()
                .find(|st| st.state == CodeState::Active as i32)
        });
    let codes = match active {
        Some(st) => format!(
            "{} ACTIVE code(s) worth {} will expire at the new deadline",
            st.count,
            render::money(st.value.as_ref())
        ),
        None => "every code not redeemed by then will expire at the new deadline".to_owned(),
    };
    Some(vec![
        format!(
            "campaign extend --force {name}: moves the deadline EARLIER, from {} to {new}",
            format_display(&current)
        ),
        codes,
    ])
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
