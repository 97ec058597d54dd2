//! Holders' preferences (data deletion, stop mail) for the campaign owner:
//! the ledger's listing as `HolderPreference`s, each naming the batch and
//! serial of the letter the code was printed on.

use std::collections::HashMap;

use giftx_core::model::CampaignId;
use giftx_ledger::ExchangeRecord;
use giftx_proto::v1 as pb;

use crate::convert::{batch_name, exchange_name, timestamp_to_proto};
use crate::state::AppState;
use crate::status::ApiError;

/// One page of the campaign's exchanges given with a preference (per code
/// its latest such exchange; see `Ledger::list_preferences`), from the
/// ledger cursor `cursor`; with the ledger cursor of the next page (the
/// caller wraps it in a page token). A page may hold fewer than `limit`
/// items and still have a next one.
///
/// A code whose batch the ledger cannot name (a batch begun before the
/// ledger indexed batches by ordinal) is listed with an empty `batch`.
///
/// # Errors
/// NOT_FOUND for an unknown campaign; UNAVAILABLE when the ledger is.
pub async fn list(
    state: &AppState,
    campaign: &CampaignId,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<pb::HolderPreference>, Option<String>), ApiError> {
    let page = state
        .ledger
        .list_preferences(campaign, cursor, limit)
        .await?;
    let mut batches: HashMap<u32, String> = HashMap::new();
    let mut out = Vec::with_capacity(page.items.len());
    for x in &page.items {
        let batch = match batches.get(&x.batch_ordinal) {
            Some(name) => name.clone(),
            None => {
                let name = batch_of(state, campaign, x).await?;
                batches.insert(x.batch_ordinal, name.clone());
                name
            }
        };
        out.push(pb::HolderPreference {
            exchange: exchange_name(&x.id),
            batch,
            serial: i64::from(x.serial),
            delete_personal_data: x.preferences.delete_personal_data,
            stop_mail: x.preferences.stop_mail,
            create_time: Some(timestamp_to_proto(x.create_time)),
        });
    }
    Ok((out, page.next))
}

/// The resource name of the batch `x`'s code was issued in; empty (and
/// logged) when the ledger does not know it.
async fn batch_of(
    state: &AppState,
    campaign: &CampaignId,
    x: &ExchangeRecord,
) -> Result<String, ApiError> {
    match state
        .ledger
        .batch_by_ordinal(campaign, x.batch_ordinal)
        .await?
    {
        Some(b) => Ok(batch_name(&b.campaign, &b.id)),
        None => {
            tracing::warn!(
                campaign = %campaign,
                ordinal = x.batch_ordinal,
                exchange = %x.id.0,
                "no batch with this ordinal; listing the preference without a batch"
            );
            Ok(String::new())
        }
    }
}
