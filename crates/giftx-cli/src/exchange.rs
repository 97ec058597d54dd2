//! `giftctl verify|exchange|show-exchange`: thin wrappers over
//! ExchangeService for operators and support staff.

use giftx_core::{Code, LoginKey};
use giftx_proto::v1::{ExchangeRequest, GetExchangeRequest, VerifyCodeRequest};

use crate::cli::{CredentialArgs, ExchangeArgs};
use crate::error::{Error, Result};
use crate::render::{self, Output};
use crate::rpc::{Clients, is_retryable};

/// A code and login key, checked locally (a typo is caught by the check
/// character before giftxd counts it as a wrong login key) and in printed
/// form.
///
/// # Errors
/// [`Error::Invalid`] naming the field and what is wrong.
pub fn credential(args: &CredentialArgs) -> Result<(String, String)> {
    let code = Code::parse(&args.code)
        .map_err(|e| Error::Invalid(format!("code '{}': {e}", args.code)))?;
    let key =
        LoginKey::parse(&args.login_key).map_err(|e| Error::Invalid(format!("login key: {e}")))?;
    Ok((code.printed(), key.printed()))
}

/// A random idempotency key shaped like a UUID v4.
///
/// # Errors
/// [`Error::Failed`] when the operating system's random source fails.
pub fn random_request_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Failed(format!("no randomness for a request id: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Runs `giftctl verify`.
///
/// # Errors
/// What the arguments or the RPC fail with.
pub async fn verify(clients: &mut Clients, out: Output, args: CredentialArgs) -> Result<()> {
    let (code, login_key) = credential(&args)?;
    let s = clients
        .exchange
        .verify_code(VerifyCodeRequest { code, login_key })
        .await
        .map_err(Error::rpc("VerifyCode"))?
        .into_inner();
    out.emit(
        || render::code_status_json(&s),
        |w| render::code_status_text(w, &s, ""),
    )
}

/// Runs `giftctl exchange`. A generated request id is printed first (on
/// stderr), so that it is known even if giftctl dies during the call; when
/// the call fails with an unknown outcome or a transient error, giftctl
/// says to retry with `--request-id`, and after an answer that retrying
/// cannot change (INVALID_ARGUMENT, FAILED_PRECONDITION…) it does not.
///
/// # Errors
/// What the arguments or the RPC fail with.
pub async fn exchange(clients: &mut Clients, out: Output, args: ExchangeArgs) -> Result<()> {
    let (code, login_key) = credential(&args.credential)?;
    let request_id = match args.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id {id}");
            id
        }
    };
    let retry_id = request_id.clone();
    let e = clients
        .exchange
        .exchange(ExchangeRequest {
            code,
            login_key,
            option_id: args.option_id,
            request_id,
            contact_email: args.email.unwrap_or_default(),
            delete_personal_data: args.delete_personal_data,
            stop_mail: args.stop_mail,
            shipping_address: args
                .address
                .map(|a| a.replace("\\n", "\n"))
                .unwrap_or_default(),
        })
        .await
        .map_err(|status| {
            if is_retryable(&status) {
                eprintln!(
                    "the exchange may or may not have happened: retry it with --request-id \
                     {retry_id} (the same request id never exchanges twice)"
                );
            }
            Error::rpc("Exchange")(status)
        })?
        .into_inner();
    out.emit(
        || render::exchange_json(&e),
        |w| render::exchange_text(w, &e, ""),
    )
}

/// Runs `giftctl show-exchange`.
///
/// # Errors
/// What the arguments or the RPC fail with.
pub async fn show(clients: &mut Clients, out: Output, args: CredentialArgs) -> Result<()> {
    let (code, login_key) = credential(&args)?;
    let e = clients
        .exchange
        .get_exchange(GetExchangeRequest { code, login_key })
        .await
        .map_err(Error::rpc("GetExchange"))?
        .into_inner();
    out.emit(
        || render::exchange_json(&e),
        |w| render::exchange_text(w, &e, ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids_and_differ() {
        let a = random_request_id().unwrap();
        let b = random_request_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn typos_are_caught_before_calling_giftxd() {
        let err = credential(&CredentialArgs {
            code: "not a code!".into(),
            login_key: "x".into(),
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.starts_with("code")),
            "{err}"
        );
    }
}
