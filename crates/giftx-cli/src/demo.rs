//! `giftctl demo`: the apology story of docs/design.md, step by step,
//! against giftxd's embedded demo campaign.
//!
//! An apology letter's code (campaign `demo-2014`) is verified and
//! exchanged for a select gift; the select gift is itself a code (gift ID +
//! management number) of campaign `demo-select`, which is verified and
//! exchanged for e-money; the result is then shown again.

use std::io::{self, Write};
use std::time::Duration;

use giftx_proto::v1::{
    CodeState, CodeStatus, Exchange, ExchangeRequest, ExchangeState, GetCampaignRequest,
    GetExchangeRequest, IssueCodesRequest, IssuedCode, VerifyCodeRequest,
};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::exchange::random_request_id;
use crate::render::{self, Output};
use crate::rpc::Clients;

/// The embedded demo campaign the story starts from.
pub const DEMO_CAMPAIGN: &str = "demo-2014";
/// Its option that yields a select gift.
pub const SELECT_OPTION: &str = "select-gift";
/// The campaign of select gifts.
pub const SELECT_CAMPAIGN: &str = "demo-select";
/// The select gift's option the demo chooses.
pub const EMONEY_OPTION: &str = "emoney-a";

/// How long a PENDING exchange is waited for before the demo gives up.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Prints steps as they happen (text) or gathers them into one document
/// (JSON).
struct Story {
    out: Output,
    steps: Vec<Value>,
    n: usize,
}

impl Story {
    fn step(
        &mut self,
        title: &str,
        json: impl FnOnce() -> Value,
        text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        self.n += 1;
        if self.out.json {
            self.steps
                .push(json!({"step": self.n, "title": title, "result": json()}));
            return Ok(());
        }
        let stdout = io::stdout();
        let mut w = stdout.lock();
        writeln!(w, "\n{}. {title}", self.n)
            .and_then(|()| text(&mut w))
            .and_then(|()| w.flush())
            .map_err(Error::io("cannot write to stdout"))
    }

    /// The failure of the step being run (`self.n + 1`).
    fn fail(&self, what: impl std::fmt::Display) -> Error {
        Error::Failed(format!("demo step {} failed: {what}", self.n + 1))
    }

    fn rpc(&self, rpc: &'static str) -> impl FnOnce(tonic::Status) -> Error + '_ {
        move |status| self.fail(Error::rpc(rpc)(status))
    }
}

/// Runs `giftctl demo`.
///
/// # Errors
/// [`Error::Failed`] naming the first step that did not go as the story
/// says.
pub async fn run(clients: &mut Clients, out: Output) -> Result<()> {
    let mut story = Story {
        out,
        steps: Vec::new(),
        n: 0,
    };

    // 1. The campaign of the apology letters.
    let campaign = clients
        .issuance
        .get_campaign(GetCampaignRequest {
            name: format!("campaigns/{DEMO_CAMPAIGN}"),
        })
        .await
        .map_err(|status| {
            let hint = if status.code() == tonic::Code::NotFound {
                " (giftxd seeds it only when run with its embedded default configuration)"
            } else {
                ""
            };
            story.fail(format!("{}{hint}", Error::rpc("GetCampaign")(status)))
        })?
        .into_inner();
    story.step(
        &format!("The apology campaign {DEMO_CAMPAIGN}"),
        || render::campaign_json(&campaign),
        |w| {
            writeln!(
                w,
                "   {} — {} per household, until {}",
                campaign.display_name,
                render::money(campaign.face_value.as_ref()),
                render::time(campaign.expire_time.as_ref())
            )?;
            for o in &campaign.options {
                writeln!(w, "   option {:<16} {}", o.option_id, o.display_name)?;
            }
            Ok(())
        },
    )?;

    // 2. One letter's code and login key.
    let batch_id = demo_batch_id()?;
    let letter = issue_one(clients, &batch_id)
        .await
        .map_err(|e| story.fail(e))?;
    story.step(
        &format!("Issue one letter's code (IssueCodes, batch {batch_id})"),
        || json!({"batch": format!("campaigns/{DEMO_CAMPAIGN}/batches/{batch_id}"), "code": letter.code, "login_key": letter.login_key}),
        |w| {
            writeln!(w, "   code       {}", letter.code)?;
            writeln!(w, "   login key  {}", letter.login_key)
        },
    )?;

    // 3. The holder enters both on the apology portal.
    let status = verify(clients, &letter.code, &letter.login_key)
        .await
        .map_err(story.rpc("VerifyCode"))?;
    expect_active(&status, DEMO_CAMPAIGN, SELECT_OPTION).map_err(|m| story.fail(m))?;
    story.step(
        "Verify the code (VerifyCode)",
        || render::code_status_json(&status),
        |w| render::code_status_text(w, &status, "   "),
    )?;

    // 4. …and chooses the select gift.
    let first = exchange(clients, &letter.code, &letter.login_key, SELECT_OPTION)
        .await
        .map_err(|e| story.fail(e))?;
    let (gift_id, management_number) = deliverable_pair(&first).map_err(|m| story.fail(m))?;
    story.step(
        &format!("Exchange it for '{SELECT_OPTION}' (Exchange)"),
        || render::exchange_json(&first),
        |w| render::exchange_text(w, &first, "   "),
    )?;

    // 5. The select gift is a code of its own.
    let gift = verify(clients, &gift_id, &management_number)
        .await
        .map_err(story.rpc("VerifyCode"))?;
    expect_active(&gift, SELECT_CAMPAIGN, EMONEY_OPTION).map_err(|m| story.fail(m))?;
    story.step(
        "Verify the select gift: gift ID + management number (VerifyCode)",
        || render::code_status_json(&gift),
        |w| render::code_status_text(w, &gift, "   "),
    )?;

    // 6. Exchanged, on the broker's page, for e-money.
    let second = exchange(clients, &gift_id, &management_number, EMONEY_OPTION)
        .await
        .map_err(|e| story.fail(e))?;
    deliverable_pair(&second).map_err(|m| story.fail(m))?;
    story.step(
        &format!("Exchange the select gift for '{EMONEY_OPTION}' (Exchange)"),
        || render::exchange_json(&second),
        |w| render::exchange_text(w, &second, "   "),
    )?;

    // 7. Shown again later.
    let again = clients
        .exchange
        .get_exchange(GetExchangeRequest {
            code: gift_id.clone(),
            login_key: management_number.clone(),
        })
        .await
        .map_err(story.rpc("GetExchange"))?
        .into_inner();
    if again.name != second.name || again.deliverable != second.deliverable {
        return Err(story.fail(format!(
            "GetExchange returned {} with another deliverable than Exchange's {}",
            again.name, second.name
        )));
    }
    story.step(
        "Show the e-money exchange again (GetExchange)",
        || render::exchange_json(&again),
        |w| render::exchange_text(w, &again, "   "),
    )?;

    if out.json {
        return out.emit(|| json!({"demo": "ok", "steps": story.steps}), |_| Ok(()));
    }
    out.emit(Value::default, |w| {
        writeln!(w, "\ndemo complete: every step succeeded")
    })
}

fn demo_batch_id() -> Result<String> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Failed(format!("no randomness for a batch id: {e}")))?;
    Ok(format!(
        "demo-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

async fn issue_one(clients: &mut Clients, batch_id: &str) -> Result<IssuedCode> {
    let mut stream = clients
        .issuance
        .issue_codes(IssueCodesRequest {
            campaign: format!("campaigns/{DEMO_CAMPAIGN}"),
            batch_id: batch_id.to_owned(),
            count: 1,
        })
        .await
        .map_err(Error::rpc("IssueCodes"))?
        .into_inner();
    let first = stream.message().await.map_err(Error::rpc("IssueCodes"))?;
    let rest = stream.message().await.map_err(Error::rpc("IssueCodes"))?;
    match (first, rest) {
        (Some(code), None) => Ok(code),
        (None, _) => Err(Error::Failed("IssueCodes sent no code".to_owned())),
        (Some(_), Some(_)) => Err(Error::Failed(
            "IssueCodes sent more than the one code asked for".to_owned(),
        )),
    }
}

async fn verify(
    clients: &mut Clients,
    code: &str,
    login_key: &str,
) -> Result<CodeStatus, tonic::Status> {
    Ok(clients
        .exchange
        .verify_code(VerifyCodeRequest {
            code: code.to_owned(),
            login_key: login_key.to_owned(),
        })
        .await?
        .into_inner())
}

fn expect_active(status: &CodeStatus, campaign: &str, option: &str) -> Result<(), String> {
    if status.state != CodeState::Active as i32 {
        return Err(format!(
            "the code is {}, not ACTIVE",
            render::code_state(status.state)
        ));
    }
    if render::last_segment(&status.campaign) != campaign {
        return Err(format!(
            "the code belongs to {}, not campaigns/{campaign}",
            status.campaign
        ));
    }
    if !status.options.iter().any(|o| o.option_id == option) {
        return Err(format!("campaigns/{campaign} has no option '{option}'"));
    }
    Ok(())
}

/// Exchanges with a fresh request id; a PENDING answer is followed with
/// GetExchange for a few seconds.
async fn exchange(
    clients: &mut Clients,
    code: &str,
    login_key: &str,
    option: &str,
) -> Result<Exchange> {
    let mut e = clients
        .exchange
        .exchange(ExchangeRequest {
            code: code.to_owned(),
            login_key: login_key.to_owned(),
            option_id: option.to_owned(),
            request_id: random_request_id()?,
            ..Default::default()
        })
        .await
        .map_err(Error::rpc("Exchange"))?
        .into_inner();
    let deadline = tokio::time::Instant::now() + PENDING_WAIT;
    while e.state == ExchangeState::Pending as i32 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        e = clients
            .exchange
            .get_exchange(GetExchangeRequest {
                code: code.to_owned(),
                login_key: login_key.to_owned(),
            })
            .await
            .map_err(Error::rpc("GetExchange"))?
            .into_inner();
    }
    if e.state != ExchangeState::Succeeded as i32 {
        let why = if e.failure_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.failure_reason)
        };
        return Err(Error::Failed(format!(
            "exchange {} for '{option}' ended {}{why}, not SUCCEEDED",
            e.name,
            render::exchange_state(e.state)
        )));
    }
    Ok(e)
}

/// The deliverable's code and pin (gift ID and management number for a
/// select gift).
fn deliverable_pair(e: &Exchange) -> Result<(String, String), String> {
    match &e.deliverable {
        Some(d) if !d.code.is_empty() => Ok((d.code.clone(), d.pin.clone())),
        _ => Err(format!(
            "exchange {} succeeded without a deliverable code",
            e.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use giftx_proto::v1::{Deliverable, RedemptionOption};

    #[test]
    fn demo_batch_ids_are_valid_batch_ids() {
        let id = demo_batch_id().unwrap();
        assert!(
            giftx_core::model::BatchId::parse("batch_id", &id).is_ok(),
            "{id}"
        );
    }

    #[test]
    fn a_code_must_be_active_in_the_right_campaign_with_the_option() {
        let mut s = CodeStatus {
            campaign: "campaigns/demo-select".into(),
            state: CodeState::Active as i32,
            options: vec![RedemptionOption {
                option_id: "emoney-a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(expect_active(&s, SELECT_CAMPAIGN, EMONEY_OPTION).is_ok());
        assert!(
            expect_active(&s, DEMO_CAMPAIGN, EMONEY_OPTION)
                .unwrap_err()
                .contains("belongs to")
        );
        assert!(
            expect_active(&s, SELECT_CAMPAIGN, "emoney-z")
                .unwrap_err()
                .contains("no option")
        );
        s.state = CodeState::Redeemed as i32;
        assert!(
            expect_active(&s, SELECT_CAMPAIGN, EMONEY_OPTION)
                .unwrap_err()
                .contains("REDEEMED")
        );
    }

    #[test]
    fn a_select_gift_deliverable_yields_gift_id_and_management_number() {
        let e = Exchange {
            deliverable: Some(Deliverable {
                code: "GIFT".into(),
                pin: "PIN".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            deliverable_pair(&e).unwrap(),
            ("GIFT".to_owned(), "PIN".to_owned())
        );
        assert!(deliverable_pair(&Exchange::default()).is_err());
    }
}
