//! End-to-end tests: `tests/<area>.rs`, each against giftxd spawned
//! in-process by `giftx_testkit::TestApp`, and these shared helpers.

use std::time::Duration;

use giftx_core::Timestamp;
use giftx_proto::v1 as pb;
use tonic::Status;
use tonic_types::StatusExt as _;

/// A valid CreateCampaign request for `id`: 500 JPY, deadline 30 days
/// after `now`, options on the default providers.
pub fn campaign_request(id: &str, now: Timestamp) -> pb::CreateCampaignRequest {
    let deadline = now.plus(Duration::from_secs(30 * 24 * 3600));
    let (seconds, nanos) = deadline.to_seconds_nanos();
    pb::CreateCampaignRequest {
        campaign_id: id.to_owned(),
        request_id: String::new(),
        campaign: Some(pb::Campaign {
            display_name: format!("Campaign {id}"),
            owner: "tests".to_owned(),
            face_value: Some(pb::Money {
                currency_code: "JPY".to_owned(),
                minor_units: 500,
            }),
            expire_time: Some(prost_types::Timestamp { seconds, nanos }),
            options: vec![
                pb::RedemptionOption {
                    option_id: "book-card".to_owned(),
                    display_name: "Book card".to_owned(),
                    provider: "book-card".to_owned(),
                },
                pb::RedemptionOption {
                    option_id: "donation".to_owned(),
                    display_name: "Donation".to_owned(),
                    provider: "donation".to_owned(),
                },
            ],
            ..Default::default()
        }),
    }
}

/// The fields a status's `BadRequest` names.
pub fn bad_request_fields(s: &Status) -> Vec<String> {
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo` reason of a status ("" when none).
pub fn reason(s: &Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Panics unless `s` is INVALID_ARGUMENT with a `BadRequest` naming
/// `field`.
pub fn assert_invalid_field(s: &Status, field: &str) {
    assert_eq!(
        s.code(),
        tonic::Code::InvalidArgument,
        "expected INVALID_ARGUMENT for {field}, got {s:?}"
    );
    let fields = bad_request_fields(s);
    assert!(
        fields.iter().any(|f| f == field),
        "expected BadRequest naming {field}, got {fields:?} ({s:?})"
    );
}
