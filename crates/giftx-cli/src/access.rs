//! `giftctl keys create|list|revoke` and `giftctl audit list`
//! (AccessService).

use std::io::{self, Write as _};
use std::time::Duration;

use giftx_proto::v1::{
    ApiKey, AuditEvent, CreateApiKeyRequest, ListApiKeysRequest, ListAuditEventsRequest,
    RevokeApiKeyRequest, Role,
};
use serde_json::{Value, json};
use tonic_types::StatusExt as _;

use crate::cli::{AuditCommand, AuditListArgs, KeysCommand, KeysCreateArgs, RoleArg};
use crate::error::{Error, Result};
use crate::render::{self, Output};
use crate::rpc::Clients;
use crate::time;

/// Keys or events asked for per page (giftxd's maximum).
const PAGE_SIZE: u64 = 1000;

/// How often `audit list --follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The method `audit list --follow` hides (its own polls among them).
const LIST_AUDIT_EVENTS: &str = "/giftx.v1.AccessService/ListAuditEvents";

/// `apiKeys/{id}`; a full name is taken as it is.
pub fn api_key_name(id: &str) -> String {
    let id = id.trim();
    if id.starts_with("apiKeys/") {
        id.to_owned()
    } else {
        format!("apiKeys/{id}")
    }
}

fn role_to_proto(r: RoleArg) -> Role {
    match r {
        RoleArg::Portal => Role::Portal,
        RoleArg::Operator => Role::Operator,
        RoleArg::Admin => Role::Admin,
    }
}

/// Runs a `keys` subcommand.
///
/// # Errors
/// What the RPC fails with.
pub async fn keys(clients: &mut Clients, out: Output, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create(args) => create(clients, out, args).await,
        KeysCommand::List { tenant } => list(clients, out, tenant).await,
        KeysCommand::Revoke { name } => {
            let k = clients
                .access
                .revoke_api_key(RevokeApiKeyRequest {
                    name: api_key_name(&name),
                })
                .await
                .map_err(Error::rpc("RevokeApiKey"))?
                .into_inner();
            let now = time::now();
            out.emit(
                || render::api_key_json(&k, &now),
                |w| {
                    writeln!(w, "revoked {}: its token is refused from now on", k.name)?;
                    render::api_key_text(w, &k, &now)
                },
            )
        }
    }
}

async fn create(clients: &mut Clients, out: Output, args: KeysCreateArgs) -> Result<()> {
    let now = time::now();
    // A duration from now is kept to the second: `30d` reads as a date.
    let expire_time = args.expires.as_ref().map(|e| match e {
        time::TimeOrDuration::At(t) => t.timestamp,
        time::TimeOrDuration::Relative(_) => prost_types::Timestamp {
            nanos: 0,
            ..e.after(&now)
        },
    });
    let created = clients
        .access
        .create_api_key(CreateApiKeyRequest {
            api_key: Some(ApiKey {
                tenant: args.tenant,
                role: role_to_proto(args.role) as i32,
                expire_time,
                description: args.description.unwrap_or_default(),
                ..Default::default()
            }),
        })
        .await
        .map_err(Error::rpc("CreateApiKey"))?
        .into_inner();
    let key = created.api_key.unwrap_or_default();
    let token = created.token;
    out.emit(
        || {
            let mut v = render::api_key_json(&key, &now);
            v["token"] = Value::String(token.clone());
            v
        },
        |w| {
            writeln!(w, "created {}", key.name)?;
            render::api_key_text(w, &key, &now)?;
            writeln!(w)?;
            writeln!(
                w,
                "token (shown only this once: giftx keeps only a hash of it; store it now, \
                 e.g. in a secret, and pass it with --token-file or GIFTX_TOKEN):"
            )?;
            writeln!(w, "{token}")
        },
    )
}

async fn list(clients: &mut Clients, out: Output, tenant: Option<String>) -> Result<()> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .access
            .list_api_keys(ListApiKeysRequest {
                tenant: tenant.clone().unwrap_or_default(),
                page_size: PAGE_SIZE as i32,
                page_token: page_token.clone(),
            })
            .await
            .map_err(Error::rpc("ListApiKeys"))?
            .into_inner();
        all.extend(page.api_keys);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    let now = time::now();
    out.emit(
        || json!({"api_keys": all.iter().map(|k| render::api_key_json(k, &now)).collect::<Vec<_>>()}),
        |w| render::api_keys_text(w, &all, &now),
    )
}

/// Runs an `audit` subcommand.
///
/// # Errors
/// What the RPC fails with; [`Error::Io`] when stdout cannot be written.
pub async fn audit(clients: &mut Clients, out: Output, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::List(args) => audit_list(clients, out, args).await,
    }
}

/// Where `audit list` is in the trail.
struct AuditCursor {
    since: Option<prost_types::Timestamp>,
    page_token: String,
}

/// One page after the cursor (at most `want` events); the cursor moves
/// past it. Returns the events and whether the cursor moved.
async fn next_events(
    clients: &mut Clients,
    cursor: &mut AuditCursor,
    want: u64,
) -> Result<(Vec<AuditEvent>, bool)> {
    let page = clients
        .access
        .list_audit_events(ListAuditEventsRequest {
            since: cursor.since,
            page_size: want.clamp(1, PAGE_SIZE) as i32,
            page_token: cursor.page_token.clone(),
        })
        .await
        .map_err(Error::rpc("ListAuditEvents"))?
        .into_inner();
    let moved = !page.next_page_token.is_empty() && page.next_page_token != cursor.page_token;
    if moved {
        cursor.page_token = page.next_page_token;
    }
    Ok((page.events, moved))
}

/// `audit list`: every event (after `--since`) oldest first, then with
/// `--follow` new ones as they come.
///
/// Without `--follow` the listing ends at the end of the trail, or once a
/// page holds events from after the command started (every ListAuditEvents
/// call is itself audited: chasing those would never end).
async fn audit_list(clients: &mut Clients, out: Output, args: AuditListArgs) -> Result<()> {
    let started = time::now();
    let mut cursor = AuditCursor {
        since: args.since.as_ref().map(|s| s.before(&started)),
        page_token: String::new(),
    };
    let limit = args.limit.unwrap_or(u64::MAX);
    if args.follow {
        return follow(clients, out, &mut cursor, limit).await;
    }
    let mut all: Vec<AuditEvent> = Vec::new();
    loop {
        let remaining = limit - all.len() as u64;
        let (mut events, moved) = next_events(clients, &mut cursor, remaining).await?;
        let past_start = events
            .last()
            .and_then(|e| e.time.as_ref())
            .is_some_and(|t| time::is_after(t, &started));
        events.truncate(usize::try_from(remaining).unwrap_or(usize::MAX));
        all.extend(events);
        if !moved || past_start || all.len() as u64 >= limit {
            break;
        }
    }
    out.emit(
        || json!({"audit_events": all.iter().map(render::audit_event_json).collect::<Vec<_>>()}),
        |w| render::audit_events_text(w, &all),
    )
}

/// `audit list --follow`: one line per event (JSON lines under `--json`),
/// polling every second until `limit` events were shown or giftctl is
/// stopped. ListAuditEvents calls are not shown.
async fn follow(
    clients: &mut Clients,
    out: Output,
    cursor: &mut AuditCursor,
    limit: u64,
) -> Result<()> {
    let write_err = Error::io("cannot write to stdout");
    if !out.json {
        let mut w = io::stdout().lock();
        render::audit_follow_header(&mut w)
            .and_then(|()| w.flush())
            .map_err(write_err)?;
    }
    let mut shown: u64 = 0;
    loop {
        let events = match next_events(clients, cursor, PAGE_SIZE).await {
            Ok((events, _)) => events,
            // Polling for long may meet the key's rate limit: wait, go on.
            Err(Error::Rpc { status, .. }) if status.code() == tonic::Code::ResourceExhausted => {
                let wait = status
                    .get_error_details()
                    .retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(FOLLOW_EVERY);
                tokio::time::sleep(wait.max(FOLLOW_EVERY)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        {
            let mut w = io::stdout().lock();
            let mut res = Ok(());
            for e in events.iter().filter(|e| e.method != LIST_AUDIT_EVENTS) {
                if shown >= limit {
                    break;
                }
                res = if out.json {
                    serde_json::to_writer(&mut w, &render::audit_event_json(e))
                        .map_err(io::Error::from)
                        .and_then(|()| writeln!(w))
                } else {
                    render::audit_follow_line(&mut w, e)
                };
                if res.is_err() {
                    break;
                }
                shown += 1;
            }
            res.and_then(|()| w.flush())
                .map_err(Error::io("cannot write to stdout"))?;
        }
        if shown >= limit {
            return Ok(());
        }
        // A full page: more are waiting. Otherwise this was the end of the
        // trail (every poll adds its own event, so the cursor always
        // moves): wait before asking again.
        if (events.len() as u64) < PAGE_SIZE {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_built_from_ids_or_taken_whole() {
        assert_eq!(api_key_name("0123456789abcdef"), "apiKeys/0123456789abcdef");
        assert_eq!(
            api_key_name("apiKeys/0123456789abcdef"),
            "apiKeys/0123456789abcdef"
        );
    }

    #[test]
    fn roles_map_to_the_proto() {
        assert_eq!(role_to_proto(RoleArg::Portal), Role::Portal);
        assert_eq!(role_to_proto(RoleArg::Operator), Role::Operator);
        assert_eq!(role_to_proto(RoleArg::Admin), Role::Admin);
        assert_eq!(
            render::role(Role::Operator as i32).as_deref(),
            Some("operator")
        );
        assert_eq!(render::role(Role::Unspecified as i32), None);
    }
}
