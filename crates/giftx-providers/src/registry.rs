//! Building adapters from configuration.
//!
//! Each `[providers.<id>]` table names its `kind` and that kind's settings;
//! unknown kinds and unknown settings are refused with the offending name:
//!
//! ```toml
//! [providers.amazon-sim]
//! kind = "simulated"
//! deliverable = "gift_code"
//! store_deliverable = false
//! latency_ms = 150
//!
//! [providers.select]
//! kind = "select"
//! campaign = "demo-select"
//!
//! [providers.book-card]
//! kind = "shipment"
//!
//! [providers.kids-fund]
//! kind = "donation"
//!
//! [providers.edy-stock]
//! kind = "stock"
//! deliverable = "gift_id"
//! ```

use std::sync::Arc;

use giftx_core::model::{CampaignId, ProviderId};
use giftx_provider::ProviderAdapter;
use serde::Deserialize;

use crate::Host;
use crate::donation::{DonationConfig, DonationProvider};
use crate::select::{SelectConfig, SelectProvider};
use crate::shipment::{ShipmentConfig, ShipmentProvider};
use crate::simulated::{SimulatedConfig, SimulatedProvider};
use crate::stock::{StockConfig, StockProvider};

/// One `[providers.<id>]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// The gift-code API simulator ([`crate::simulated`]).
    Simulated(SimulatedConfig),
    /// A donation register ([`crate::donation`]).
    Donation(DonationConfig),
    /// Shipping orders ([`crate::shipment`]).
    Shipment(ShipmentConfig),
    /// Select gift: codes of another campaign ([`crate::select`]).
    Select(SelectConfig),
    /// Pre-purchased codes ([`crate::stock`]).
    Stock(StockConfig),
}

impl ProviderConfig {
    /// The `kind` as written in configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Simulated(_) => "simulated",
            ProviderConfig::Donation(_) => "donation",
            ProviderConfig::Shipment(_) => "shipment",
            ProviderConfig::Select(_) => "select",
            ProviderConfig::Stock(_) => "stock",
        }
    }
}

/// Why a provider could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range or malformed.
    #[error("providers.{provider}.{field}: {reason}")]
    InvalidSetting {
        /// The provider id.
        provider: String,
        /// The setting.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The kind needs something the host did not provide.
    #[error(
        "providers.{provider}: kind \"{kind}\" needs a {service}, which this host does not provide"
    )]
    MissingHostService {
        /// The provider id.
        provider: String,
        /// The provider's kind.
        kind: &'static str,
        /// What is missing.
        service: &'static str,
    },
}

/// Builds provider `id` from its configuration. Simulated providers'
/// control handles are registered in `host.simulators` under `id`.
///
/// # Errors
/// [`BuildError`] naming the provider and the setting at fault.
pub fn build(
    id: &ProviderId,
    config: &ProviderConfig,
    host: &Host,
) -> Result<Arc<dyn ProviderAdapter>, BuildError> {
    let invalid = |(field, reason): (&str, String)| BuildError::InvalidSetting {
        provider: id.to_string(),
        field: field.to_owned(),
        reason,
    };
    Ok(match config {
        ProviderConfig::Simulated(c) => {
            c.validate().map_err(invalid)?;
            let p = SimulatedProvider::new(id.clone(), c.clone(), host.store.clone());
            host.simulators.insert(id.clone(), p.control());
            Arc::new(p)
        }
        ProviderConfig::Donation(c) => {
            c.validate().map_err(invalid)?;
            Arc::new(DonationProvider::new(
                id.clone(),
                c.clone(),
                host.store.clone(),
                host.clock.clone(),
            ))
        }
        ProviderConfig::Shipment(c) => {
            c.validate().map_err(invalid)?;
            Arc::new(ShipmentProvider::new(
                id.clone(),
                c.clone(),
                host.store.clone(),
                host.clock.clone(),
            ))
        }
        ProviderConfig::Select(c) => {
            let campaign = CampaignId::parse("campaign", &c.campaign)
                .map_err(|v| invalid(("campaign", v.description)))?;
            let issuer = host
                .select
                .clone()
                .ok_or_else(|| BuildError::MissingHostService {
                    provider: id.to_string(),
                    kind: config.kind(),
                    service: "select issuer",
                })?;
            Arc::new(SelectProvider::new(
                id.clone(),
                campaign,
                c.redeem_url.clone(),
                host.secret.clone(),
                issuer,
            ))
        }
        ProviderConfig::Stock(c) => Arc::new(StockProvider::new(
            id.clone(),
            c.clone(),
            host.store.clone(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use giftx_core::{Code, LoginKey, Series, Timestamp};
    use giftx_provider::{Fulfilment, ProviderError};

    use super::*;
    use crate::CodeKind;
    use crate::select::{SelectIssuer, SelectTarget};
    use crate::simulated::FaultMode;
    use crate::testing::{jpy, request};

    #[derive(Deserialize)]
    struct File {
        providers: BTreeMap<String, ProviderConfig>,
    }

    fn parse(s: &str) -> Result<BTreeMap<String, ProviderConfig>, String> {
        toml::from_str::<File>(s)
            .map(|f| f.providers)
            .map_err(|e| e.to_string())
    }

    fn pid(s: &str) -> ProviderId {
        ProviderId::parse("id", s).unwrap()
    }

    struct Issuer;

    #[async_trait]
    impl SelectIssuer for Issuer {
        async fn target(&self, _: &CampaignId) -> Result<SelectTarget, ProviderError> {
            Ok(SelectTarget {
                series: Series::from_index(1).unwrap(),
                face_value: jpy(500),
                expire_time: Timestamp(0),
            })
        }
        async fn store_code(
            &self,
            _: &CampaignId,
            _: &Code,
            _: &LoginKey,
        ) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn has_code(
            &self,
            _: &CampaignId,
            _: &Code,
            _: &LoginKey,
        ) -> Result<bool, ProviderError> {
            Ok(true)
        }
    }

    const DEMO: &str = r#"
        [providers.amazon-sim]
        kind = "simulated"
        deliverable = "gift_code"
        store_deliverable = false
        latency_ms = 1
        fault = "reject_all"

        [providers.edy-sim]
        kind = "simulated"
        deliverable = "gift_id"

        [providers.select]
        kind = "select"
        campaign = "demo-select"

        [providers.book-card]
        kind = "shipment"
        reference_prefix = "BOOK"

        [providers.kids-fund]
        kind = "donation"

        [providers.edy-stock]
        kind = "stock"
        deliverable = "gift_id"
    "#;

    #[tokio::test]
    async fn the_demo_configuration_builds_every_kind() {
        let configs = parse(DEMO).unwrap();
        assert_eq!(configs.len(), 6);
        let host = Host::in_memory().unwrap().with_select(Arc::new(Issuer));
        let mut built = BTreeMap::new();
        for (id, c) in &configs {
            built.insert(id.clone(), build(&pid(id), c, &host).unwrap());
        }
        assert!(!built["amazon-sim"].capabilities().store_deliverable);
        assert_eq!(
            built["book-card"].capabilities().fulfilment,
            Fulfilment::Deferred
        );
        assert_eq!(
            configs["edy-stock"],
            ProviderConfig::Stock(crate::stock::StockConfig {
                deliverable: CodeKind::GiftId,
                redeem_url: String::new(),
            })
        );
        // Simulators are reachable through the host, with their configured
        // fault mode.
        assert_eq!(
            host.simulators.ids(),
            vec![pid("amazon-sim"), pid("edy-sim")]
        );
        let ctl = host.simulators.get("amazon-sim").unwrap();
        assert_eq!(ctl.fault(), FaultMode::RejectAll);
        assert_eq!(
            built["amazon-sim"]
                .issue(&request("k", "amazon"))
                .await
                .unwrap_err()
                .class(),
            "rejected"
        );
        ctl.set_fault(FaultMode::None);
        built["amazon-sim"]
            .issue(&request("k", "amazon"))
            .await
            .unwrap();
        assert_eq!(ctl.issued_count(), 1);
        let d = built["book-card"]
            .issue(&request("k", "book"))
            .await
            .unwrap();
        assert!(d.reference.starts_with("BOOK-"));
        assert!(built["select"].issue(&request("k", "select")).await.is_ok());
    }

    #[test]
    fn unknown_kinds_and_settings_are_refused_by_name() {
        let e = parse("[providers.x]\nkind = \"carrier-pigeon\"\n").unwrap_err();
        assert!(e.contains("carrier-pigeon"), "{e}");
        let e = parse("[providers.x]\nkind = \"donation\"\nfund_name = \"kids\"\n").unwrap_err();
        assert!(e.contains("fund_name"), "{e}");
        let e = parse("[providers.x]\nkind = \"simulated\"\nfault = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("sometimes"), "{e}");
        let e = parse("[providers.x]\nkind = \"select\"\n").unwrap_err();
        assert!(e.contains("campaign"), "{e}");
        let e = parse("[providers.x]\ndeliverable = \"gift_id\"\n").unwrap_err();
        assert!(e.contains("kind"), "{e}");
    }

    #[test]
    fn invalid_settings_and_missing_host_services_name_the_provider() {
        let host = Host::in_memory().unwrap();
        let configs = parse(
            r#"
            [providers.flaky]
            kind = "simulated"
            failure_rate = 1.5

            [providers.sel]
            kind = "select"
            campaign = "Demo Select"

            [providers.sel2]
            kind = "select"
            campaign = "demo-select"

            [providers.fund]
            kind = "donation"
            reference_prefix = "don"
            "#,
        )
        .unwrap();
        let err = |id: &str| build(&pid(id), &configs[id], &host).err().unwrap();
        assert!(matches!(
            err("flaky"),
            BuildError::InvalidSetting { ref provider, ref field, .. } if provider == "flaky" && field == "failure_rate"
        ));
        assert_eq!(
            err("flaky").to_string(),
            "providers.flaky.failure_rate: must be between 0 and 1, got 1.5"
        );
        assert!(
            matches!(err("sel"), BuildError::InvalidSetting { ref field, .. } if field == "campaign")
        );
        assert_eq!(
            err("sel2"),
            BuildError::MissingHostService {
                provider: "sel2".into(),
                kind: "select",
                service: "select issuer"
            }
        );
        assert!(
            matches!(err("fund"), BuildError::InvalidSetting { ref field, .. } if field == "reference_prefix")
        );
    }
}
