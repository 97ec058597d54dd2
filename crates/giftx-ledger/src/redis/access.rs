//! [`AccessStore`] on Redis: one Lua script per change
//! (`lua/access/access_<verb>-<numkeys>.lua`), plain commands for reads,
//! over the ledger's connections.
//!
//! Layout (every script touches one hash tag, so it runs on Cluster):
//! - `{auth}:keys` HASH key id → record JSON; `{auth}:order` ZSET of key
//!   ids by creation time (ms);
//! - `{rl:<bucket>}` STRING: a rate limit's theoretical arrival time (µs),
//!   expiring when the bucket is full again;
//! - `{eu:<digest>}` STRING: an end user's failures in its window;
//! - `{audit}:s` STREAM: the audit trail, field `e` = event JSON, trimmed
//!   by age (`MINID`);
//! - `{auth}:hmac` HASH: HMAC key id → the key's fingerprint, recorded the
//!   first time a giftxd starts with that id.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use giftx_core::Timestamp;
use redis::Value;

use super::RedisLedger;
use super::codec::{bytes, int};
use super::conn::{Pool, Rerun, with_retry};
use super::scripts::{LuaScript, Rc};
use crate::access::{AccessStore, ApiKeyRecord, AuditRecord, Rate, Take, parse_audit_id};
use crate::{LedgerError, Page};

const KEYS: &str = "{auth}:keys";
const ORDER: &str = "{auth}:order";
const AUDIT: &str = "{audit}:s";
const HMAC_KEYS: &str = "{auth}:hmac";

macro_rules! access_scripts {
    ($($field:ident => $file:literal),* $(,)?) => {
        struct AccessScripts {
            $($field: LuaScript,)*
        }

        static SCRIPTS: LazyLock<AccessScripts> = LazyLock::new(|| AccessScripts {
            $($field: LuaScript::new($file, include_str!(concat!("../../lua/access/", $file))),)*
        });

        /// File name (under `lua/access/`), key count the wrapper passes,
        /// and source of every access script (for the static header test).
        #[doc(hidden)]
        pub fn script_catalog() -> Vec<(&'static str, usize, &'static str)> {
            vec![$(($file, SCRIPTS.$field.keys, SCRIPTS.$field.source),)*]
        }
    };
}

access_scripts! {
    put_key => "access_put_key-2.lua",
    replace_key => "access_replace_key-1.lua",
    take => "access_take-1.lua",
    fail => "access_fail-1.lua",
    audit => "access_audit-1.lua",
    check_keys => "access_check_keys-1.lua",
}

fn internal(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Internal(what.to_string())
}

/// [`AccessStore`] on the ledger's Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisAccessStore {
    pool: Arc<Pool>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisAccessStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccessStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// The access store on this ledger's connections.
    pub fn access_store(&self) -> RedisAccessStore {
        RedisAccessStore {
            pool: self.pool.clone(),
            timeout: self.options.timeout,
        }
    }
}

impl RedisAccessStore {
    /// Runs one script (see `provider_store`): key count checked, the
    /// timeout applied, writes re-sent only when provably unsent.
    async fn run(
        &self,
        s: &LuaScript,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<(Rc, Vec<Value>), LedgerError> {
        if keys.len() != s.keys {
            return Err(internal(format!(
                "{} takes {} keys, got {}",
                s.name,
                s.keys,
                keys.len()
            )));
        }
        let mut cmd = s.command(keys);
        for a in args {
            cmd.arg(*a);
        }
        let v = with_retry(&self.pool, 0, s.rerun(), (self.timeout, s.name), |mut c| {
            let cmd = &cmd;
            async move { s.call(cmd, &mut c).await }
        })
        .await?;
        let Value::Array(v) = v else {
            return Err(internal(format!("{} returned a non-array", s.name)));
        };
        let rc = Rc::from_int(int(v.first().ok_or_else(|| internal("empty reply"))?)?)?;
        Ok((rc, v))
    }

    /// One read command, retried once if its connection broke.
    async fn read(&self, what: &'static str, cmd: redis::Cmd) -> Result<Value, LedgerError> {
        with_retry(&self.pool, 0, Rerun::Safe, (self.timeout, what), |mut c| {
            let cmd = &cmd;
            async move { cmd.query_async::<Value>(&mut c).await }
        })
        .await
    }
}

fn text(v: &Value) -> Result<String, LedgerError> {
    String::from_utf8(bytes(v)?).map_err(internal)
}

fn record(v: &Value) -> Result<ApiKeyRecord, LedgerError> {
    serde_json::from_slice(&bytes(v)?).map_err(internal)
}

#[async_trait]
impl AccessStore for RedisAccessStore {
    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), LedgerError> {
        let json = serde_json::to_vec(key).map_err(internal)?;
        let score = key.create_time.0.to_string();
        let (rc, _) = self
            .run(
                &SCRIPTS.put_key,
                &[KEYS, ORDER],
                &[key.id.as_bytes(), &json, score.as_bytes()],
            )
            .await?;
        match rc {
            Rc::Ok => Ok(()),
            _ => Err(internal(format!("key id {} is taken", key.id))),
        }
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, LedgerError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(KEYS).arg(id);
        match self.read("access get_key", cmd).await? {
            Value::Nil => Ok(None),
            v => record(&v).map(Some),
        }
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ApiKeyRecord>, LedgerError> {
        let skip: usize =
            cursor.map_or(Ok(0), |c| c.parse().map_err(|_| internal("bad cursor")))?;
        let mut cmd = redis::cmd("ZREVRANGE");
        cmd.arg(ORDER).arg(skip).arg(skip + limit);
        let Value::Array(ids) = self.read("access list_keys", cmd).await? else {
            return Err(internal("ZREVRANGE returned a non-array"));
        };
        // One more than asked for tells whether a next page exists.
        let more = ids.len() > limit;
        let ids: Vec<String> = ids.iter().take(limit).map(text).collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(KEYS);
        for id in &ids {
            cmd.arg(id);
        }
        let Value::Array(found) = self.read("access list_keys", cmd).await? else {
            return Err(internal("HMGET returned a non-array"));
        };
        let items = found
            .iter()
            .filter(|v| !matches!(v, Value::Nil))
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next: more.then(|| (skip + ids.len()).to_string()),
        })
    }

    async fn revoke_key(
        &self,
        id: &str,
        at: Timestamp,
    ) -> Result<Option<ApiKeyRecord>, LedgerError> {
        // Read, change, write if unchanged; a concurrent change (another
        // revocation) makes us read again.
        for _ in 0..5 {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(KEYS).arg(id);
            let old = match self.read("access revoke_key", cmd).await? {
                Value::Nil => return Ok(None),
                v => bytes(&v)?,
            };
            let mut rec: ApiKeyRecord = serde_json::from_slice(&old).map_err(internal)?;
            if rec.revoke_time.is_some() {
                return Ok(Some(rec));
            }
            rec.revoke_time = Some(at);
            let new = serde_json::to_vec(&rec).map_err(internal)?;
            let (rc, _) = self
                .run(&SCRIPTS.replace_key, &[KEYS], &[id.as_bytes(), &old, &new])
                .await?;
            if rc == Rc::Ok {
                return Ok(Some(rec));
            }
        }
        Err(LedgerError::Unavailable(
            "the key kept changing while it was revoked; retry".into(),
        ))
    }

    async fn take(
        &self,
        bucket: &str,
        rate: Rate,
        n: u32,
        now_us: i64,
    ) -> Result<Take, LedgerError> {
        let (interval, tolerance) = rate.gcra();
        let key = format!("{{rl:{bucket}}}");
        let (rc, v) = self
            .run(
                &SCRIPTS.take,
                &[&key],
                &[
                    now_us.to_string().as_bytes(),
                    interval.to_string().as_bytes(),
                    tolerance.to_string().as_bytes(),
                    n.max(1).to_string().as_bytes(),
                ],
            )
            .await?;
        match rc {
            Rc::Ok => Ok(Take::Allowed),
            _ => {
                let wait = v.get(1).map(int).transpose()?.unwrap_or(0);
                Ok(Take::Refused(Duration::from_micros(
                    u64::try_from(wait).unwrap_or(0),
                )))
            }
        }
    }

    async fn failures(&self, who: &str) -> Result<u32, LedgerError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{{eu:{who}}}"));
        match self.read("access failures", cmd).await? {
            Value::Nil => Ok(0),
            v => text(&v)?.parse().map_err(internal),
        }
    }

    async fn check_hmac_keys(&self, keys: &[(String, String)]) -> Result<Vec<String>, LedgerError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() * 2);
        for (id, fp) in keys {
            args.push(id.as_bytes());
            args.push(fp.as_bytes());
        }
        let (_, v) = self.run(&SCRIPTS.check_keys, &[HMAC_KEYS], &args).await?;
        v.iter()
            .skip(1)
            .map(|x| String::from_utf8(bytes(x)?).map_err(internal))
            .collect()
    }

    async fn add_failure(&self, who: &str, window: Duration) -> Result<u32, LedgerError> {
        let key = format!("{{eu:{who}}}");
        let ms = window.as_millis().max(1).to_string();
        let (_, v) = self.run(&SCRIPTS.fail, &[&key], &[ms.as_bytes()]).await?;
        let n = int(v.get(1).ok_or_else(|| internal("short reply"))?)?;
        u32::try_from(n).map_err(internal)
    }

    async fn append_audit(
        &self,
        events: &[AuditRecord],
        keep_after: Timestamp,
    ) -> Result<(), LedgerError> {
        if events.is_empty() {
            return Ok(());
        }
        let min = keep_after.0.max(0).to_string();
        let json: Vec<Vec<u8>> = events
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let mut args: Vec<&[u8]> = vec![min.as_bytes()];
        args.extend(json.iter().map(Vec::as_slice));
        self.run(&SCRIPTS.audit, &[AUDIT], &args).await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        after: Option<&str>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<(String, AuditRecord)>, LedgerError> {
        let start = match after {
            Some(a) => {
                let (ms, seq) = parse_audit_id(a).ok_or_else(|| internal("bad audit id"))?;
                if ms < since.0 {
                    format!("{}-0", since.0.max(0))
                } else {
                    format!("({ms}-{seq}")
                }
            }
            None => format!("{}-0", since.0.max(0)),
        };
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(AUDIT).arg(start).arg("+").arg("COUNT").arg(limit);
        let Value::Array(entries) = self.read("access list_audit", cmd).await? else {
            return Err(internal("XRANGE returned a non-array"));
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let Value::Array(parts) = e else {
                return Err(internal("XRANGE entry is not an array"));
            };
            let id = text(parts.first().ok_or_else(|| internal("entry without id"))?)?;
            let Some(Value::Array(fields)) = parts.get(1) else {
                return Err(internal("entry without fields"));
            };
            let json = fields.get(1).ok_or_else(|| internal("entry without e"))?;
            let rec: AuditRecord = serde_json::from_slice(&bytes(json)?).map_err(internal)?;
            out.push((id, rec));
        }
        Ok(out)
    }
}
