//! OperationsService end to end: stock import and status, exchanging stock
//! until it runs out (the code is free again at once) and retrying after a
//! restock, shipping orders
//! listed and marked shipped, and the requests it refuses. Each behaviour
//! runs on the embedded ledger and on a private Redis.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use giftx_core::Clock as _;
use giftx_proto::v1 as pb;
use giftx_proto::v1::operations_service_client::OperationsServiceClient;
use giftx_server::ServiceKind;
use giftx_server::config::ProviderConfig;
use giftx_testkit::{TestApp, TestAppOptions};
use giftx_tests::{assert_invalid_field, campaign_request, issue_codes, list_services, reason};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const STOCK: &str = "edy-stock";
const SHIPMENT: &str = "book-card";
const CAMPAIGN: &str = "ops-2014";

fn options() -> TestAppOptions {
    let providers = BTreeMap::from([
        (STOCK.to_owned(), ProviderConfig::of_kind("stock")),
        (SHIPMENT.to_owned(), ProviderConfig::of_kind("shipment")),
        ("donation".to_owned(), ProviderConfig::of_kind("donation")),
    ]);
    // No background reconciler: the tests drive pending exchanges.
    TestAppOptions::new()
        .providers(providers)
        .configure(|c| c.expiry.workers = false)
}

async fn embedded() -> TestApp {
    TestApp::spawn(options()).await
}

async fn redis() -> TestApp {
    TestApp::spawn(options().redis()).await
}

fn ops(app: &TestApp) -> OperationsServiceClient<Channel> {
    OperationsServiceClient::new(app.channel.clone())
}

fn item(code: &str, pin: &str) -> pb::StockItem {
    pb::StockItem {
        code: code.to_owned(),
        pin: pin.to_owned(),
        expire_time: None,
    }
}

fn chunk(provider: &str, items: Vec<pb::StockItem>) -> pb::ImportStockRequest {
    pb::ImportStockRequest {
        provider: provider.to_owned(),
        items,
    }
}

async fn import(
    app: &TestApp,
    chunks: Vec<pb::ImportStockRequest>,
) -> Result<pb::ImportStockResponse, tonic::Status> {
    ops(app)
        .import_stock(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

async fn stock_status(app: &TestApp) -> pb::StockStatus {
    ops(app)
        .get_stock_status(pb::GetStockStatusRequest {
            provider: STOCK.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Creates the campaign (options `edy` on the stock provider and `book`
/// on the shipment provider) and issues `count` codes.
async fn campaign_with_codes(app: &TestApp, count: i64) -> Vec<pb::IssuedCode> {
    let mut req = campaign_request(CAMPAIGN, app.clock.now());
    let c = req.campaign.as_mut().unwrap();
    c.options = vec![
        pb::RedemptionOption {
            option_id: "edy".into(),
            display_name: "Edy gift ID".into(),
            provider: STOCK.into(),
            requires_shipping_address: false,
        },
        pb::RedemptionOption {
            option_id: "book".into(),
            display_name: "Book card".into(),
            provider: SHIPMENT.into(),
            requires_shipping_address: false,
        },
    ];
    app.issuance.clone().create_campaign(req).await.unwrap();
    issue_codes(app, CAMPAIGN, "b1", count).await
}

/// The postal address the tests give for code `serial` (three lines).
fn address(serial: i64) -> String {
    format!("〒100-0001\n東京都千代田区千代田1-{serial}\n山田 太郎 様")
}

async fn exchange(
    app: &TestApp,
    code: &pb::IssuedCode,
    option: &str,
) -> Result<pb::Exchange, tonic::Status> {
    app.exchange
        .clone()
        .exchange(pb::ExchangeRequest {
            code: code.code.clone(),
            login_key: code.login_key.clone(),
            option_id: option.to_owned(),
            request_id: format!("req-{}-{option}", code.serial),
            shipping_address: if option == "book" {
                address(code.serial)
            } else {
                String::new()
            },
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list_shipments(
    app: &TestApp,
    state: pb::ShipmentState,
    page_size: i32,
    page_token: &str,
) -> pb::ListShipmentsResponse {
    ops(app)
        .list_shipments(pb::ListShipmentsRequest {
            provider: SHIPMENT.into(),
            state: state as i32,
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn mark(app: &TestApp, refs: &[&str], tracking: &str) -> pb::MarkShippedResponse {
    ops(app)
        .mark_shipped(pb::MarkShippedRequest {
            provider: SHIPMENT.into(),
            references: refs.iter().map(|r| (*r).to_owned()).collect(),
            tracking: tracking.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

// ---- stock -----------------------------------------------------------------

async fn check_stock_lifecycle(app: TestApp) {
    let codes = campaign_with_codes(&app, 5).await;
    assert_eq!(
        stock_status(&app).await,
        pb::StockStatus {
            provider: STOCK.into(),
            available: 0,
            handed_out: 0,
        }
    );

    // Two chunks; duplicates within the stream, across formatting.
    let r = import(
        &app,
        vec![
            chunk(
                STOCK,
                vec![item("EDY-0001", "1111"), item("EDY-0002", "2222")],
            ),
            chunk(
                STOCK,
                vec![
                    item("EDY-0002", "2222"),
                    item("EDY-0003", "3333"),
                    item(" edy 0003 ", ""),
                ],
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        pb::ImportStockResponse {
            provider: STOCK.into(),
            added: 3,
            duplicates: 2,
            available: 3,
        }
    );
    // Importing the same again adds nothing.
    let again = import(&app, vec![chunk(STOCK, vec![item("EDY-0001", "1111")])])
        .await
        .unwrap();
    assert_eq!((again.added, again.duplicates, again.available), (0, 1, 3));

    // Three exchanges take the three items, each once.
    let mut handed = HashSet::new();
    for c in &codes[..3] {
        let x = exchange(&app, c, "edy").await.unwrap();
        assert_eq!(x.state, pb::ExchangeState::Succeeded as i32, "{x:?}");
        let d = x.deliverable.unwrap();
        assert!(d.code.starts_with("EDY-000"), "{d:?}");
        assert!(handed.insert(d.code.clone()), "{} handed out twice", d.code);
        // A retry returns the same item.
        let retry = exchange(&app, c, "edy").await.unwrap();
        assert_eq!(retry.deliverable.unwrap().code, d.code);
    }
    assert_eq!(
        (
            stock_status(&app).await.available,
            stock_status(&app).await.handed_out
        ),
        (0, 3)
    );

    // The fourth finds the stock exhausted: retryable, with RetryInfo, and
    // the code is free again at once (issue 12 item 3): ACTIVE, the
    // exchange FAILED with the reason, nothing left PENDING.
    let e = exchange(&app, &codes[3], "edy").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(reason(&e), "STOCK_EXHAUSTED");
    assert!(e.get_details_retry_info().is_some(), "{e:?}");
    let status = app
        .exchange
        .clone()
        .verify_code(giftx_tests::verify_request(&codes[3]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, pb::CodeState::Active as i32);
    let first = status.exchange.unwrap();
    assert_eq!(first.state, pb::ExchangeState::Failed as i32);
    assert_eq!(first.failure_reason, "STOCK_EXHAUSTED");
    assert!(giftx_tests::list_pending(&app).await.is_empty());

    // The fifth holder is refused too, and chooses another option at once.
    let e = exchange(&app, &codes[4], "edy").await.unwrap_err();
    assert_eq!(reason(&e), "STOCK_EXHAUSTED");
    let abandoned = giftx_tests::get_exchange(&app, &codes[4]).await;
    assert_eq!(abandoned.state, pb::ExchangeState::Failed as i32);
    let book = exchange(&app, &codes[4], "book").await.unwrap();
    assert_eq!(book.state, pb::ExchangeState::Succeeded as i32, "{book:?}");

    // A restock, and reconciling the abandoned exchange: it stays FAILED
    // and takes no item (the holder got a book card instead).
    let r = import(&app, vec![chunk(STOCK, vec![item("EDY-0004", "4444")])])
        .await
        .unwrap();
    assert_eq!((r.added, r.duplicates, r.available), (1, 0, 1));
    app.clock.advance(Duration::from_secs(60));
    let after = app
        .expiry
        .clone()
        .reconcile_exchange(pb::ReconcileExchangeRequest {
            name: abandoned.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.state, pb::ExchangeState::Failed as i32, "{after:?}");
    assert_eq!(stock_status(&app).await.available, 1);
    // Its request, retried, meets a redeemed code.
    let e = exchange(&app, &codes[4], "edy").await.unwrap_err();
    assert_eq!(reason(&e), "CODE_ALREADY_REDEEMED", "{e:?}");

    // The fourth holder retries with the same request id: a new exchange,
    // which gets the new item.
    let done = exchange(&app, &codes[3], "edy").await.unwrap();
    assert_eq!(done.state, pb::ExchangeState::Succeeded as i32, "{done:?}");
    assert_ne!(done.name, first.name);
    let d = done.deliverable.unwrap();
    assert_eq!((d.code.as_str(), d.pin.as_str()), ("EDY-0004", "4444"));
    assert!(handed.insert(d.code), "an item was handed out twice");
    assert_eq!(handed.len(), 4);
    assert_eq!(
        stock_status(&app).await,
        pb::StockStatus {
            provider: STOCK.into(),
            available: 0,
            handed_out: 4,
        }
    );
    // A retry now answers that exchange; the holder sees it too.
    let again = exchange(&app, &codes[3], "edy").await.unwrap();
    assert_eq!(again.name, done.name);
    let shown = giftx_tests::get_exchange(&app, &codes[3]).await;
    assert_eq!(shown.deliverable.unwrap().code, "EDY-0004");
}

#[tokio::test]
async fn stock_is_imported_handed_out_once_and_restocked_embedded() {
    check_stock_lifecycle(embedded().await).await;
}

#[tokio::test]
async fn stock_is_imported_handed_out_once_and_restocked_redis() {
    check_stock_lifecycle(redis().await).await;
}

// ---- shipments ---------------------------------------------------------------

async fn check_shipment_lifecycle(app: TestApp) {
    let codes = campaign_with_codes(&app, 3).await;
    let ordered_at = app.clock.now();
    let mut refs = Vec::new();
    for c in &codes {
        let x = exchange(&app, c, "book").await.unwrap();
        assert_eq!(x.state, pb::ExchangeState::Succeeded as i32, "{x:?}");
        let d = x.deliverable.unwrap();
        assert_eq!(d.kind, pb::DeliverableKind::Shipment as i32);
        assert!(!d.reference.is_empty());
        // Not mailed yet: the holder sees no ship time.
        assert_eq!((d.ship_time, d.tracking.as_str()), (None, ""));
        refs.push(d.reference);
    }
    let exchanged = refs.clone();
    refs.sort();

    // All orders, in reference order, one page at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_shipments(&app, pb::ShipmentState::Unspecified, 2, &token).await;
        assert!(page.shipments.len() <= 2);
        seen.extend(page.shipments);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen.iter().map(|s| s.reference.clone()).collect::<Vec<_>>(),
        refs
    );
    // Each row tells the mailing house whom to mail: campaign, batch and
    // serial of the letter, and the address the holder typed.
    let serial_of: BTreeMap<String, i64> = codes
        .iter()
        .zip(&exchanged)
        .map(|(c, r)| (r.clone(), c.serial))
        .collect();
    for s in &seen {
        let serial = serial_of[&s.reference];
        assert_eq!(s.campaign, format!("campaigns/{CAMPAIGN}"));
        assert_eq!(s.batch, format!("campaigns/{CAMPAIGN}/batches/b1"));
        assert_eq!(s.serial, serial);
        assert_eq!(s.option_id, "book");
        assert_eq!(s.shipping_address, address(serial));
    }
    for s in &seen {
        assert_eq!(s.state, pb::ShipmentState::Ordered as i32);
        assert_eq!(
            s.create_time.as_ref().map(|t| t.seconds),
            Some(ordered_at.millis() / 1000)
        );
        assert_eq!((s.ship_time.as_ref(), s.tracking.as_str()), (None, ""));
    }

    // Mark one shipped; unknown references are reported, not fatal.
    app.clock.advance(Duration::from_secs(3600));
    let r = mark(&app, &[&refs[1], "SHP-NOSUCHORDER", &refs[1]], "JP123").await;
    assert_eq!(
        r,
        pb::MarkShippedResponse {
            updated: 1,
            already_shipped: 0,
            unknown_references: vec!["SHP-NOSUCHORDER".into()],
        }
    );
    let shipped = list_shipments(&app, pb::ShipmentState::Shipped, 0, "").await;
    assert_eq!(shipped.shipments.len(), 1);
    let s = &shipped.shipments[0];
    assert_eq!(s.reference, refs[1]);
    assert_eq!(s.state, pb::ShipmentState::Shipped as i32);
    assert_eq!(s.tracking, "JP123");
    assert_eq!(
        s.ship_time.as_ref().map(|t| t.seconds),
        Some(app.clock.now().millis() / 1000)
    );
    let open = list_shipments(&app, pb::ShipmentState::Ordered, 0, "").await;
    assert_eq!(
        open.shipments
            .iter()
            .map(|s| s.reference.as_str())
            .collect::<Vec<_>>(),
        [refs[0].as_str(), refs[2].as_str()]
    );
    // A filtered page of one still walks every order.
    let first = list_shipments(&app, pb::ShipmentState::Ordered, 1, "").await;
    assert_eq!(first.shipments[0].reference, refs[0]);
    let second = list_shipments(&app, pb::ShipmentState::Ordered, 1, &first.next_page_token).await;
    assert_eq!(second.shipments[0].reference, refs[2]);

    // Marking again is idempotent: nothing changes.
    let again = mark(&app, &[&refs[1]], "OTHER").await;
    assert_eq!((again.updated, again.already_shipped), (0, 1));
    let after = list_shipments(&app, pb::ShipmentState::Shipped, 0, "").await;
    assert_eq!(after.shipments[0].tracking, "JP123");

    // Marking the rest closes every order.
    let rest = mark(&app, &[&refs[0], &refs[2]], "").await;
    assert_eq!((rest.updated, rest.already_shipped), (2, 0));
    let open = list_shipments(&app, pb::ShipmentState::Ordered, 0, "").await;
    assert!(open.shipments.is_empty());
    assert!(open.next_page_token.is_empty());

    // The exchange still shows its shipment reference, and now that it
    // was mailed (when, and the tracking number).
    let show = |i: usize| {
        let mut x = app.exchange.clone();
        let req = pb::GetExchangeRequest {
            code: codes[i].code.clone(),
            login_key: codes[i].login_key.clone(),
        };
        async move { x.get_exchange(req).await.unwrap().into_inner() }
    };
    let d = show(1).await.deliverable.unwrap();
    assert_eq!(d.reference, exchanged[1]);
    assert!(d.ship_time.is_some());
    let now = list_shipments(&app, pb::ShipmentState::Unspecified, 0, "").await;
    let row = now
        .shipments
        .iter()
        .find(|s| s.reference == exchanged[1])
        .unwrap();
    assert_eq!(
        (d.ship_time, d.tracking.as_str()),
        (row.ship_time, row.tracking.as_str())
    );

    // Addresses are erased 30 days (the default) after shipping.
    app.clock.advance(Duration::from_secs(29 * 86_400));
    let all = list_shipments(&app, pb::ShipmentState::Unspecified, 0, "").await;
    assert!(all.shipments.iter().all(|s| !s.shipping_address.is_empty()));
    app.clock.advance(Duration::from_secs(86_400));
    let all = list_shipments(&app, pb::ShipmentState::Unspecified, 0, "").await;
    assert_eq!(all.shipments.len(), 3);
    for s in &all.shipments {
        assert_eq!(s.shipping_address, "", "{s:?}");
        // The rest of the row stays.
        assert_eq!(s.batch, format!("campaigns/{CAMPAIGN}/batches/b1"));
    }
    assert!(show(1).await.deliverable.unwrap().ship_time.is_some());
}

#[tokio::test]
async fn shipments_are_listed_and_marked_shipped_embedded() {
    check_shipment_lifecycle(embedded().await).await;
}

#[tokio::test]
async fn shipments_are_listed_and_marked_shipped_redis() {
    check_shipment_lifecycle(redis().await).await;
}

// ---- postal addresses ----------------------------------------------------

async fn check_address_rules(app: TestApp) {
    let codes = campaign_with_codes(&app, 2).await;
    let req = |option: &str, address: &str| pb::ExchangeRequest {
        code: codes[0].code.clone(),
        login_key: codes[0].login_key.clone(),
        option_id: option.to_owned(),
        request_id: format!("addr-{option}-{}", address.len()),
        shipping_address: address.to_owned(),
        ..Default::default()
    };
    let call = |r: pb::ExchangeRequest| {
        let mut x = app.exchange.clone();
        async move { x.exchange(r).await }
    };
    // VerifyCode tells which option needs one.
    let status = app
        .exchange
        .clone()
        .verify_code(pb::VerifyCodeRequest {
            code: codes[0].code.clone(),
            login_key: codes[0].login_key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let needs: Vec<(String, bool)> = status
        .options
        .iter()
        .map(|o| (o.option_id.clone(), o.requires_shipping_address))
        .collect();
    assert_eq!(
        needs,
        [("edy".to_owned(), false), ("book".to_owned(), true)]
    );
    // Required for the mailed option; blank counts as missing.
    for blank in ["", "  \n "] {
        let e = call(req("book", blank)).await.unwrap_err();
        assert_invalid_field(&e, "shipping_address");
        assert!(e.message().contains("required"), "{e:?}");
    }
    // Bounds: 4-400 characters, 8 lines, no control characters.
    for bad in [
        "abc".to_owned(),
        "あ".repeat(401),
        "a\n".repeat(9),
        "Tokyo\u{0}1-1".to_owned(),
    ] {
        let e = call(req("book", &bad)).await.unwrap_err();
        assert_invalid_field(&e, "shipping_address");
    }
    // Not allowed for an option that mails nothing.
    let e = call(req("edy", &address(1))).await.unwrap_err();
    assert_invalid_field(&e, "shipping_address");
    assert!(e.message().contains("mails nothing"), "{e:?}");
    // A wrong login key is told as such, whatever the address.
    let mut wrong = req("book", "");
    wrong.login_key = codes[1].login_key.clone();
    let e = call(wrong).await.unwrap_err();
    assert_eq!(reason(&e), "LOGIN_KEY_MISMATCH", "{e:?}");
    // None of it touched the code: it exchanges with an address, and a
    // retry with another address is another request.
    let ok = call(req("book", &address(1))).await.unwrap().into_inner();
    assert_eq!(ok.state, pb::ExchangeState::Succeeded as i32);
    let mut other = req("book", &address(1));
    other.shipping_address = address(2);
    let e = call(other).await.unwrap_err();
    assert_eq!(reason(&e), "REQUEST_ID_REUSED", "{e:?}");
}

#[tokio::test]
async fn shipping_addresses_are_required_bounded_and_only_for_mailed_options_embedded() {
    check_address_rules(embedded().await).await;
}

#[tokio::test]
async fn shipping_addresses_are_required_bounded_and_only_for_mailed_options_redis() {
    check_address_rules(redis().await).await;
}

// ---- refusals --------------------------------------------------------------

async fn check_refusals(app: TestApp) {
    // ImportStock.
    let e = import(&app, vec![chunk("", vec![item("A", "")])])
        .await
        .unwrap_err();
    assert_invalid_field(&e, "provider");
    let e = import(&app, vec![]).await.unwrap_err();
    assert_invalid_field(&e, "provider");
    let e = import(&app, vec![chunk("no-such", vec![item("A", "")])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(reason(&e), "PROVIDER_NOT_FOUND");
    assert!(e.message().contains("no-such"), "{e:?}");
    let e = import(&app, vec![chunk(SHIPMENT, vec![item("A", "")])])
        .await
        .unwrap_err();
    assert_invalid_field(&e, "provider");
    assert!(e.message().contains("shipment"), "{e:?}");
    let e = import(
        &app,
        vec![chunk(
            STOCK,
            vec![
                item("", "1"),
                item("B", &"9".repeat(201)),
                item(&"C".repeat(201), ""),
            ],
        )],
    )
    .await
    .unwrap_err();
    assert_invalid_field(&e, "items[0].code");
    assert_invalid_field(&e, "items[1].pin");
    assert_invalid_field(&e, "items[2].code");
    let mut bad_time = item("D", "");
    bad_time.expire_time = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: -1,
    });
    let e = import(&app, vec![chunk(STOCK, vec![bad_time])])
        .await
        .unwrap_err();
    assert_invalid_field(&e, "items[0].expire_time");
    let many = (0..10_001).map(|i| item(&format!("X{i}"), "")).collect();
    let e = import(&app, vec![chunk(STOCK, many)]).await.unwrap_err();
    assert_invalid_field(&e, "items");
    // One provider per stream; the first chunk is in.
    let e = import(
        &app,
        vec![
            chunk(STOCK, vec![item("E-1", "")]),
            chunk("other", vec![item("E-2", "")]),
        ],
    )
    .await
    .unwrap_err();
    assert_invalid_field(&e, "provider");
    // Nothing but that first chunk was imported by the refused calls.
    let s = stock_status(&app).await;
    assert_eq!((s.available, s.handed_out), (1, 0));

    // GetStockStatus.
    let mut c = ops(&app);
    let e = c
        .get_stock_status(pb::GetStockStatusRequest {
            provider: SHIPMENT.into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&e, "provider");
    let e = c
        .get_stock_status(pb::GetStockStatusRequest {
            provider: "Not An Id!".into(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&e, "provider");
    let e = c
        .get_stock_status(pb::GetStockStatusRequest {
            provider: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // ListShipments: every bad field is named at once.
    let e = c
        .list_shipments(pb::ListShipmentsRequest {
            provider: STOCK.into(),
            state: 7,
            page_size: -1,
            page_token: "forged".into(),
        })
        .await
        .unwrap_err();
    for f in ["provider", "state", "page_size", "page_token"] {
        assert_invalid_field(&e, f);
    }
    let e = c
        .list_shipments(pb::ListShipmentsRequest {
            provider: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // An empty provider lists nothing, and a huge page size is coerced.
    let r = c
        .list_shipments(pb::ListShipmentsRequest {
            provider: SHIPMENT.into(),
            page_size: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.shipments.is_empty() && r.next_page_token.is_empty());

    // MarkShipped.
    let mut req = pb::MarkShippedRequest {
        provider: SHIPMENT.into(),
        references: vec![],
        tracking: String::new(),
    };
    let e = c.mark_shipped(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "references");
    req.references = vec!["SHP-1".into(), " ".into()];
    let e = c.mark_shipped(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "references[1]");
    req.references = (0..10_001).map(|i| format!("SHP-{i}")).collect();
    let e = c.mark_shipped(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "references");
    req.references = vec!["SHP-1".into()];
    req.tracking = "T".repeat(201);
    let e = c.mark_shipped(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "tracking");
    req.tracking.clear();
    req.provider = STOCK.into();
    let e = c.mark_shipped(req.clone()).await.unwrap_err();
    assert_invalid_field(&e, "provider");

    // ListPreferences: validated; an unknown campaign is NOT_FOUND.
    let e = c
        .list_preferences(pb::ListPreferencesRequest {
            campaign: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&e, "campaign");
    let e = c
        .list_preferences(pb::ListPreferencesRequest {
            campaign: "campaigns/any".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

/// Holders' preferences come back to the campaign owner as (batch, serial),
/// which the print vendor's file maps to a letter.
async fn check_preferences(app: TestApp) {
    let codes = campaign_with_codes(&app, 6).await;
    let mut wanted = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let (delete, stop) = (i % 3 == 0, i % 2 == 0);
        let x = app
            .exchange
            .clone()
            .exchange(pb::ExchangeRequest {
                code: code.code.clone(),
                login_key: code.login_key.clone(),
                option_id: "book".into(),
                request_id: format!("pref-{i}"),
                contact_email: "holder@example.com".into(),
                delete_personal_data: delete,
                stop_mail: stop,
                shipping_address: address(code.serial),
            })
            .await
            .unwrap()
            .into_inner();
        if delete || stop {
            wanted.push((x.name, code.serial, delete, stop));
        }
    }
    let mut got = Vec::new();
    let mut token = String::new();
    for _ in 0..20 {
        let page = ops(&app)
            .list_preferences(pb::ListPreferencesRequest {
                campaign: format!("campaigns/{CAMPAIGN}"),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for p in page.preferences {
            assert_eq!(p.batch, format!("campaigns/{CAMPAIGN}/batches/b1"));
            assert!(p.create_time.is_some());
            got.push((p.exchange, p.serial, p.delete_personal_data, p.stop_mail));
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(token.is_empty(), "paging must end");
    got.sort();
    wanted.sort();
    assert_eq!(got, wanted);
}

#[tokio::test]
async fn preferences_are_listed_with_batch_and_serial_embedded() {
    check_preferences(embedded().await).await;
}

#[tokio::test]
async fn preferences_are_listed_with_batch_and_serial_redis() {
    check_preferences(redis().await).await;
}

#[tokio::test]
async fn bad_requests_name_the_field_embedded() {
    check_refusals(embedded().await).await;
}

#[tokio::test]
async fn bad_requests_name_the_field_redis() {
    check_refusals(redis().await).await;
}

// ---- serving ---------------------------------------------------------------

async fn health(app: &TestApp, service: &str) -> Result<i32, tonic::Status> {
    let r = app
        .health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(r.into_inner().status)
}

#[tokio::test]
async fn operations_are_served_with_issuance_only() {
    const NAME: &str = "giftx.v1.OperationsService";
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let app = embedded().await;
    assert_eq!(health(&app, NAME).await.unwrap(), serving);
    assert!(list_services(&app).await.iter().any(|s| s == NAME));

    let app = TestApp::spawn(options().services(&[ServiceKind::Exchange])).await;
    assert_eq!(health(&app, NAME).await.unwrap_err().code(), Code::NotFound);
    assert!(!list_services(&app).await.iter().any(|s| s == NAME));
    let e = ops(&app)
        .get_stock_status(pb::GetStockStatusRequest {
            provider: STOCK.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

// ---- giftctl ---------------------------------------------------------------

async fn giftctl(app: &TestApp, args: &[&str]) -> Result<(), giftx_cli::Error> {
    use clap::Parser as _;
    let addr = format!("http://{}", app.addr);
    let argv = ["giftctl", "--addr", addr.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    giftx_cli::run(giftx_cli::Cli::try_parse_from(argv).unwrap()).await
}

#[tokio::test]
async fn giftctl_imports_stock_exports_and_marks_shipments() {
    let app = embedded().await;
    let codes = campaign_with_codes(&app, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // 11,000 rows in three chunks, 1,000 of them repeats.
    let mut csv = String::from("code,pin,expire_time\n");
    for i in 0..11_000 {
        let n = if i < 10_000 { i } else { i - 10_000 };
        csv.push_str(&format!(
            "EDY-{n:08},{:04},2027-03-31T23:59:59+09:00\n",
            n % 10_000
        ));
    }
    std::fs::write(path("stock.csv"), &csv).unwrap();
    giftctl(
        &app,
        &["stock", "import", "--provider", STOCK, &path("stock.csv")],
    )
    .await
    .unwrap();
    let s = stock_status(&app).await;
    assert_eq!((s.available, s.handed_out), (10_000, 0));
    giftctl(&app, &["--json", "stock", "status", "--provider", STOCK])
        .await
        .unwrap();
    // Again: all duplicates, nothing added.
    giftctl(
        &app,
        &["stock", "import", "--provider", STOCK, &path("stock.csv")],
    )
    .await
    .unwrap();
    assert_eq!(stock_status(&app).await.available, 10_000);

    // A malformed file is refused with its lines, before anything is sent.
    std::fs::write(path("bad.csv"), "code,pin\nNEW-1,1\n,2\nNEW-3,3,x\n").unwrap();
    let e = giftctl(
        &app,
        &["stock", "import", "--provider", STOCK, &path("bad.csv")],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 3: code is empty"), "{e}");
    assert!(e.contains("line 4: expected 2 fields"), "{e}");
    assert!(e.contains("nothing was sent"), "{e}");
    assert_eq!(stock_status(&app).await.available, 10_000);
    // The server's refusals come through as they are.
    let e = giftctl(
        &app,
        &[
            "stock",
            "import",
            "--provider",
            SHIPMENT,
            &path("stock.csv"),
        ],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("INVALID_ARGUMENT") && e.contains("provider"),
        "{e}"
    );

    // Shipments: export, refuse to overwrite, mark shipped from the export.
    let mut refs = Vec::new();
    for c in &codes {
        let x = exchange(&app, c, "book").await.unwrap();
        refs.push(x.deliverable.unwrap().reference);
    }
    refs.sort();
    let out = path("ship.csv");
    giftctl(
        &app,
        &["shipments", "export", "--provider", SHIPMENT, "--out", &out],
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "reference,state,create_time,ship_time,tracking,campaign,batch,serial,option_id,\
         shipping_address"
    );
    // Two orders of three-line addresses (quoted, so one record each).
    assert_eq!(lines.len(), 1 + 2 * 3, "{text}");
    assert_eq!(text.matches(",ORDERED,").count(), 2, "{text}");
    assert!(
        lines[1].starts_with(&format!("{},ORDERED,2014-", refs[0])),
        "{text}"
    );
    let serial = codes
        .iter()
        .find(|c| text.contains(&format!("b1,{},book,\"{}\"", c.serial, address(c.serial))))
        .map(|c| c.serial);
    assert!(serial.is_some(), "{text}");
    assert!(
        lines[1].contains(&format!(
            ",,campaigns/{CAMPAIGN},campaigns/{CAMPAIGN}/batches/b1,"
        )),
        "{text}"
    );
    let e = giftctl(
        &app,
        &["shipments", "export", "--provider", SHIPMENT, "--out", &out],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("already exists"), "{e}");
    giftctl(
        &app,
        &[
            "shipments",
            "mark-shipped",
            "--provider",
            SHIPMENT,
            "--tracking",
            "JP9",
            "--file",
            &out,
        ],
    )
    .await
    .unwrap();
    let shipped = list_shipments(&app, pb::ShipmentState::Shipped, 0, "").await;
    assert_eq!(shipped.shipments.len(), 2);
    assert!(shipped.shipments.iter().all(|s| s.tracking == "JP9"));
    // An unknown reference fails the command and is named (issue 21).
    let e = giftctl(
        &app,
        &[
            "--json",
            "shipments",
            "mark-shipped",
            "--provider",
            SHIPMENT,
            &refs[0],
            "SHP-NONE",
        ],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("SHP-NONE"), "{e}");
    assert!(!e.to_string().contains(refs[0].as_str()), "{e}");
    assert_eq!(e.to_json()["error"]["details"]["already_shipped"], 1, "{e}");
    let out2 = path("shipped.csv.gz");
    giftctl(
        &app,
        &[
            "shipments",
            "export",
            "--provider",
            SHIPMENT,
            "--out",
            &out2,
            "--state",
            "shipped",
        ],
    )
    .await
    .unwrap();
    assert!(std::fs::read(&out2).unwrap().starts_with(&[0x1f, 0x8b]));

    // Preferences: exported as CSV (no exchange here gave any).
    let prefs = path("prefs.csv");
    giftctl(
        &app,
        &[
            "preferences",
            "export",
            "--campaign",
            CAMPAIGN,
            "--out",
            &prefs,
        ],
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&prefs).unwrap();
    assert!(text.starts_with("exchange,batch,serial"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}
