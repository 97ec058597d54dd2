//! `giftctl campaign create|list|show|stats` and `giftctl batch show|void`
//! (IssuanceService).

use giftx_proto::v1::{
    Batch, BatchState, Campaign, CreateCampaignRequest, GetBatchRequest, GetCampaignRequest,
    GetCampaignStatsRequest, ListCampaignsRequest, Money, RedemptionOption, VoidBatchRequest,
};
use serde_json::json;

use crate::cli::{
    BatchCommand, BatchRef, BatchVoidArgs, CampaignCommand, CreateCampaignArgs, parse_face_value,
};
use crate::confirm::confirm;
use crate::error::{Error, Result};
use crate::render::{self, Output};
use crate::rpc::Clients;

/// `campaigns/{id}`; a full name is taken as it is.
pub fn campaign_name(id: &str) -> String {
    if id.starts_with("campaigns/") {
        id.to_owned()
    } else {
        format!("campaigns/{id}")
    }
}

/// `campaigns/{c}/batches/{b}`.
pub fn batch_name(campaign: &str, batch: &str) -> String {
    format!("{}/batches/{batch}", campaign_name(campaign))
}

/// Runs a `campaign` subcommand (`extend` is ExpiryService's: see
/// [`crate::expiry`]).
///
/// # Errors
/// What the RPC or the arguments fail with.
pub async fn campaign(clients: &mut Clients, out: Output, cmd: CampaignCommand) -> Result<()> {
    match cmd {
        CampaignCommand::Create(args) => create(clients, out, args).await,
        CampaignCommand::List => list(clients, out).await,
        CampaignCommand::Show { id } => {
            let c = clients
                .issuance
                .get_campaign(GetCampaignRequest {
                    name: campaign_name(&id),
                })
                .await
                .map_err(Error::rpc("GetCampaign"))?
                .into_inner();
            out.emit(
                || render::campaign_json(&c),
                |w| render::campaign_text(w, &c),
            )
        }
        CampaignCommand::Stats { id } => {
            let s = clients
                .issuance
                .get_campaign_stats(GetCampaignStatsRequest {
                    campaign: campaign_name(&id),
                })
                .await
                .map_err(Error::rpc("GetCampaignStats"))?
                .into_inner();
            out.emit(|| render::stats_json(&s), |w| render::stats_text(w, &s))
        }
        CampaignCommand::Extend {
            id,
            deadline,
            force,
            yes,
        } => crate::expiry::extend(clients, out, &id, deadline.timestamp, force, yes).await,
    }
}

async fn create(clients: &mut Clients, out: Output, args: CreateCampaignArgs) -> Result<()> {
    let (currency, minor_units) =
        parse_face_value(&args.face_value, &args.currency).map_err(Error::Invalid)?;
    let campaign = Campaign {
        display_name: args.display_name,
        owner: args.owner.unwrap_or_default(),
        face_value: Some(Money {
            currency_code: currency.code().to_owned(),
            minor_units,
        }),
        expire_time: Some(args.deadline.timestamp),
        options: args
            .options
            .into_iter()
            .map(|o| RedemptionOption {
                option_id: o.option_id,
                display_name: o.display_name,
                provider: o.provider,
                requires_shipping_address: false,
            })
            .collect(),
        ..Default::default()
    };
    let c = clients
        .issuance
        .create_campaign(CreateCampaignRequest {
            campaign_id: args.id,
            campaign: Some(campaign),
            request_id: args.request_id.unwrap_or_default(),
        })
        .await
        .map_err(Error::rpc("CreateCampaign"))?
        .into_inner();
    out.emit(
        || render::campaign_json(&c),
        |w| render::campaign_text(w, &c),
    )
}

async fn list(clients: &mut Clients, out: Output) -> Result<()> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .issuance
            .list_campaigns(ListCampaignsRequest {
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(Error::rpc("ListCampaigns"))?
            .into_inner();
        all.extend(page.campaigns);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    out.emit(
        || json!({"campaigns": all.iter().map(render::campaign_json).collect::<Vec<_>>()}),
        |w| render::campaigns_text(w, &all),
    )
}

/// Runs a `batch` subcommand.
///
/// # Errors
/// What the RPC fails with.
pub async fn batch(clients: &mut Clients, out: Output, cmd: BatchCommand) -> Result<()> {
    let b = match cmd {
        BatchCommand::Show(BatchRef { campaign, batch }) => clients
            .issuance
            .get_batch(GetBatchRequest {
                name: batch_name(&campaign, &batch),
            })
            .await
            .map_err(Error::rpc("GetBatch"))?,
        BatchCommand::Void(args) => void(clients, args).await?,
    }
    .into_inner();
    out.emit(|| render::batch_json(&b), |w| render::batch_text(w, &b))
}

/// `batch void`: says what the batch holds, asks, then voids.
async fn void(clients: &mut Clients, args: BatchVoidArgs) -> Result<tonic::Response<Batch>> {
    let BatchVoidArgs {
        batch: BatchRef { campaign, batch },
        yes,
    } = args;
    let name = batch_name(&campaign, &batch);
    let current = clients
        .issuance
        .get_batch(GetBatchRequest { name: name.clone() })
        .await
        .map_err(Error::rpc("GetBatch"))?
        .into_inner();
    // Voiding a void batch changes nothing: no question.
    if current.state != BatchState::Void as i32 {
        confirm(&void_plan(&current), yes)?;
    }
    clients
        .issuance
        .void_batch(VoidBatchRequest { name })
        .await
        .map_err(Error::rpc("VoidBatch"))
}

/// What `batch void` will change, for the operator to confirm.
fn void_plan(b: &Batch) -> Vec<String> {
    let state = BatchState::try_from(b.state).map_or_else(
        |_| b.state.to_string(),
        |s| {
            let n = s.as_str_name();
            n.strip_prefix("BATCH_STATE_").unwrap_or(n).to_owned()
        },
    );
    vec![
        format!(
            "batch void {}: {} code(s) issued (of {} requested), state {state}",
            b.name, b.issued_count, b.requested_count
        ),
        format!(
            "every one of the {} code(s) not yet redeemed becomes VOID for good; codes \
             already redeemed keep their exchange",
            b.issued_count
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_built_from_ids_or_taken_whole() {
        assert_eq!(campaign_name("demo-2014"), "campaigns/demo-2014");
        assert_eq!(campaign_name("campaigns/demo-2014"), "campaigns/demo-2014");
        assert_eq!(batch_name("c", "b1"), "campaigns/c/batches/b1");
    }
}
