//! The demo campaigns seeded on the embedded default, so giftxd can be
//! tried with no configuration: `demo-2014` (the 2014 apology gift) and
//! `demo-select`, the campaign of its select gift's own codes.

use std::time::Duration;

use giftx_core::model::{CampaignId, CampaignSpec, OptionId, ProviderId, RedemptionOption};
use giftx_core::{Currency, Money};

use crate::state::AppState;
use crate::status::ApiError;

/// Id of the main demo campaign.
pub const DEMO_CAMPAIGN: &str = "demo-2014";
/// Id of the select gift's campaign.
pub const DEMO_SELECT_CAMPAIGN: &str = "demo-select";

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn option(id: &str, display_name: &str, provider: &str) -> Result<RedemptionOption, ApiError> {
    Ok(RedemptionOption {
        id: OptionId::parse("option_id", id)?,
        display_name: display_name.to_owned(),
        provider: ProviderId::parse("provider", provider)?,
    })
}

/// The two demo campaign specs, with deadlines a year after `now`.
///
/// # Errors
/// Only if the built-in ids were malformed (a bug).
pub fn demo_specs(state: &AppState) -> Result<[CampaignSpec; 2], ApiError> {
    let jpy = Currency::from_code("JPY").ok_or_else(|| ApiError::internal("JPY unknown"))?;
    let expire_time = state.now().plus(YEAR);
    let select = CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("campaign_id", DEMO_SELECT_CAMPAIGN)?,
        display_name: "Select gift (500 JPY e-money)".to_owned(),
        owner: "demo".to_owned(),
        face_value: Money::new(jpy, 500),
        expire_time,
        options: vec![
            option("emoney-a", "E-money A gift code", "emoney-a")?,
            option("emoney-b", "E-money B value", "emoney-b")?,
            option("giftcode-c", "Gift code C", "giftcode-c")?,
        ],
    };
    let apology = CampaignSpec {
        tenant: giftx_core::model::TenantId::default_tenant(),
        hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
        id: CampaignId::parse("campaign_id", DEMO_CAMPAIGN)?,
        display_name: "Apology gift 2014".to_owned(),
        owner: "demo".to_owned(),
        face_value: Money::new(jpy, 500),
        expire_time,
        options: vec![
            option("select-gift", "E-money select gift", "select-gift")?,
            option("book-card", "Book card (mailed)", "book-card")?,
            option("donation", "Donation to the children's fund", "donation")?,
        ],
    };
    Ok([select, apology])
}

/// Creates the demo campaigns unless they exist. Options whose provider is
/// not configured are left out; a campaign left with none is skipped.
///
/// # Errors
/// The ledger's error.
pub async fn seed(state: &AppState) -> Result<Vec<String>, ApiError> {
    let mut seeded = Vec::new();
    for mut spec in demo_specs(state)? {
        spec.options
            .retain(|o| state.provider_configured(o.provider.as_str()));
        if spec.options.is_empty() {
            tracing::warn!(campaign = %spec.id, "demo campaign skipped: none of its providers is configured");
            continue;
        }
        if state.ledger.get_campaign(&spec.id).await?.is_none() {
            let c = state
                .ledger
                .create_campaign(&spec, None, state.now())
                .await?;
            state.remember_campaign(c);
        }
        seeded.push(spec.id.to_string());
    }
    Ok(seeded)
}
