//! The Lua scripts (one per state change) and the return codes they share.

use std::sync::LazyLock;

use crate::{LedgerError, Refusal};

/// A Lua script that knows its name and how many keys it takes (the `-N`
/// in its file name), so a call site passing another number of keys is
/// caught before Redis sees it.
pub(crate) struct LuaScript {
    pub(crate) name: &'static str,
    pub(crate) keys: usize,
    /// What Redis runs: the file, after its prelude from `lua/lib/` if it
    /// has one (Redis scripts cannot include one another).
    pub(crate) source: &'static str,
    /// The file alone (what the static test checks).
    pub(crate) file_source: &'static str,
    pub(crate) script: redis::Script,
}

impl LuaScript {
    /// The script of `lua/<file>` (`source`, nothing put before it).
    pub(crate) fn new(file: &'static str, source: &'static str) -> LuaScript {
        LuaScript::with_prelude(file, source, source)
    }

    /// The script of `lua/<file>` (`file_source`) run as `source`: the file
    /// after a prelude.
    fn with_prelude(
        file: &'static str,
        file_source: &'static str,
        source: &'static str,
    ) -> LuaScript {
        // `<verb_noun>-<numkeys>.lua`; a malformed name reads as 0 keys and
        // fails the static test.
        let stem = file.trim_end_matches(".lua");
        let (name, keys) = match stem.rsplit_once('-') {
            Some((n, k)) => (n, k.parse().unwrap_or(0)),
            None => (stem, 0),
        };
        LuaScript {
            name,
            keys,
            source,
            file_source,
            script: redis::Script::new(source),
        }
    }
}

/// Scripts that only read: safe to run again when their connection broke
/// before the answer came (see `conn::Rerun`). Every other script writes,
/// and after such a failure may or may not have run, so it is re-sent only
/// when it provably was not sent. A script listed here must call no
/// command that writes (checked by a test).
const READ_ONLY: &[&str] = &[
    "read_exchange",
    "store_get",
    "store_list",
    "store_stock_get",
    "store_stock_status",
];

impl LuaScript {
    /// Whether this script may be sent again after its connection broke.
    pub(crate) fn rerun(&self) -> super::conn::Rerun {
        if READ_ONLY.contains(&self.name) {
            super::conn::Rerun::Safe
        } else {
            super::conn::Rerun::IfUnsent
        }
    }

    /// `EVALSHA <sha> <n> keys...`, ready for the arguments. One
    /// `redis::Cmd` keeps every argument in one buffer: cheaper than a
    /// `ScriptInvocation`, which allocates per argument and copies them
    /// all again into a command on every call.
    pub(crate) fn command(&self, keys: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        cmd
    }

    /// Runs `cmd` (from [`LuaScript::command`]); when Redis does not know
    /// the script (`NOSCRIPT`: restarted without it, or `SCRIPT FLUSH`),
    /// loads it and tries again, a few times, since another flush may come
    /// between the load and the retry.
    pub(crate) async fn call(
        &self,
        cmd: &redis::Cmd,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<redis::Value> {
        let mut tries = 0;
        loop {
            match cmd.query_async::<redis::Value>(conn).await {
                Err(e)
                    if tries < 5
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    tries += 1;
                    let _: String = redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(self.source)
                        .query_async(conn)
                        .await?;
                }
                other => return other,
            }
        }
    }
}

/// `field => "file-N.lua"`, or `field => "file-N.lua" after "lib/x.lua"`
/// for a script run with a shared prelude put before it.
macro_rules! scripts {
    ($($field:ident => $file:literal $(after $lib:literal)?),* $(,)?) => {
        /// Every script of the Redis ledger.
        pub(crate) struct Scripts {
            $(pub(crate) $field: LuaScript,)*
        }

        pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
            $($field: LuaScript::with_prelude(
                $file,
                include_str!(concat!("../../lua/", $file)),
                concat!(
                    $(include_str!(concat!("../../lua/", $lib)),)?
                    include_str!(concat!("../../lua/", $file))
                ),
            ),)*
        });

        impl Scripts {
            /// (file name, keys the wrapper passes, source of the file
            /// alone) of every script.
            pub(crate) fn catalog(&self) -> Vec<(&'static str, usize, &'static str)> {
                vec![$(($file, self.$field.keys, self.$field.file_source),)*]
            }

            /// The name of every script (what the script observer is told).
            pub(crate) fn names(&self) -> Vec<&'static str> {
                vec![$(self.$field.name,)*]
            }
        }
    };
}

scripts! {
    create_campaign => "create_campaign-5.lua",
    extend_campaign => "extend_campaign-2.lua",
    clear_push => "clear_push-1.lua",
    begin_batch => "begin_batch-4.lua",
    touch_batch => "touch_batch-2.lua",
    finish_batch => "finish_batch-3.lua",
    void_batch => "void_batch-3.lua",
    clear_void => "clear_void-1.lua",
    acquire_lease => "acquire_lease-1.lua",
    release_lease => "release_lease-1.lua",
    store_codes => "store_codes-2.lua",
    record_stored => "record_stored-3.lua",
    claim_code => "claim_code-7.lua",
    verify_code => "verify_code-5.lua",
    read_exchange => "read_exchange-1.lua",
    begin_attempt => "begin_attempt-5.lua" after "lib/exchange_record.lua",
    defer_attempt => "defer_attempt-5.lua" after "lib/exchange_record.lua",
    complete_exchange => "complete_exchange-5.lua" after "lib/exchange_record.lua",
    release_exchange => "release_exchange-5.lua" after "lib/exchange_record.lua",
    push_deadline => "push_deadline-4.lua",
    void_bucket => "void_bucket-2.lua",
    sweep_expired => "sweep_expired-2.lua",
    purge_campaign => "purge_campaign-2.lua",
    purge_bucket => "purge_bucket-6.lua",
}

/// What a script answered: the first element of every reply. The scripts'
/// headers document these numbers; they never leave this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rc {
    Ok = 0,
    Existing = 1,
    LoginKeyMismatch = 2,
    Locked = 3,
    Expired = 4,
    Void = 5,
    AlreadyRedeemed = 6,
    InFlight = 7,
    RequestIdReused = 8,
    CampaignNotFound = 9,
    CampaignExists = 10,
    SeriesExhausted = 11,
    DeadlineEarlier = 12,
    BatchNotFound = 13,
    BatchExists = 14,
    BatchClosed = 15,
    CampaignExpired = 16,
    ExchangeNotFound = 17,
    ExchangeFinished = 18,
    Leased = 19,
    TooManyAttempts = 20,
    DeadlineInPast = 30,
    CampaignPurged = 31,
}

impl Rc {
    pub(crate) fn from_int(n: i64) -> Result<Rc, LedgerError> {
        use Rc::*;
        Result::Ok(match n {
            0 => Ok,
            1 => Existing,
            2 => LoginKeyMismatch,
            3 => Locked,
            4 => Expired,
            5 => Void,
            6 => AlreadyRedeemed,
            7 => InFlight,
            8 => RequestIdReused,
            9 => CampaignNotFound,
            10 => CampaignExists,
            11 => SeriesExhausted,
            12 => DeadlineEarlier,
            13 => BatchNotFound,
            14 => BatchExists,
            15 => BatchClosed,
            16 => CampaignExpired,
            17 => ExchangeNotFound,
            18 => ExchangeFinished,
            19 => Leased,
            20 => TooManyAttempts,
            30 => DeadlineInPast,
            31 => CampaignPurged,
            n => {
                return Err(LedgerError::Internal(format!(
                    "unknown script return code {n}"
                )));
            }
        })
    }

    /// The refusal this code stands for (`Locked` needs its time: the
    /// caller builds that one).
    pub(crate) fn refusal(self) -> Option<Refusal> {
        use Rc::*;
        Some(match self {
            Ok | Existing | Locked => return None,
            LoginKeyMismatch => Refusal::LoginKeyMismatch,
            Expired => Refusal::Expired,
            Void => Refusal::Void,
            AlreadyRedeemed => Refusal::AlreadyRedeemed,
            InFlight => Refusal::InFlight,
            RequestIdReused => Refusal::RequestIdReused,
            CampaignNotFound => Refusal::CampaignNotFound,
            CampaignExists => Refusal::CampaignExists,
            SeriesExhausted => Refusal::SeriesExhausted,
            DeadlineEarlier => Refusal::DeadlineEarlier,
            BatchNotFound => Refusal::BatchNotFound,
            BatchExists => Refusal::BatchExists,
            BatchClosed => Refusal::BatchClosed,
            CampaignExpired => Refusal::CampaignExpired,
            ExchangeNotFound => Refusal::ExchangeNotFound,
            ExchangeFinished => Refusal::ExchangeFinished,
            Leased => Refusal::Leased,
            TooManyAttempts => Refusal::TooManyAttempts,
            DeadlineInPast => Refusal::DeadlineInPast,
            CampaignPurged => Refusal::CampaignPurged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prelude_goes_before_its_file_and_reads_no_clock() {
        let lib = include_str!("../../lua/lib/exchange_record.lua");
        assert!(!lib.contains("'TIME'") && !lib.contains("\"TIME\""));
        for s in [
            &SCRIPTS.begin_attempt,
            &SCRIPTS.defer_attempt,
            &SCRIPTS.complete_exchange,
            &SCRIPTS.release_exchange,
        ] {
            assert_eq!(s.source, format!("{lib}{}", s.file_source), "{}", s.name);
        }
        assert_eq!(SCRIPTS.claim_code.source, SCRIPTS.claim_code.file_source);
    }

    /// The Redis commands `source` calls by name.
    fn commands(source: &str) -> Vec<String> {
        let mut out = Vec::new();
        for call in ["rcall(", "redis.call(", "redis.pcall("] {
            for (i, _) in source.match_indices(call) {
                let rest = source[i + call.len()..].trim_start();
                let quote = rest.chars().next().unwrap_or(' ');
                assert!(
                    quote == '\'' || quote == '"',
                    "a command named by a variable: {}",
                    &rest[..rest.len().min(40)]
                );
                let name: String = rest[1..].chars().take_while(|c| *c != quote).collect();
                out.push(name.to_ascii_uppercase());
            }
        }
        out
    }

    #[test]
    fn scripts_retried_after_a_broken_connection_only_read() {
        const READS: &[&str] = &[
            "GET",
            "HGET",
            "HMGET",
            "HGETALL",
            "HEXISTS",
            "HLEN",
            "LLEN",
            "LRANGE",
            "EXISTS",
            "ZRANGE",
            "ZRANGEBYLEX",
            "ZRANGEBYSCORE",
            "ZSCORE",
            "SISMEMBER",
            "TIME",
        ];
        let mut all = SCRIPTS.catalog();
        all.extend(crate::redis::provider_store::script_catalog());
        let mut seen = 0;
        for (file, _, source) in all {
            let name = file.trim_end_matches(".lua");
            let name = name.rsplit_once('-').map_or(name, |(n, _)| n);
            if !READ_ONLY.contains(&name) {
                continue;
            }
            seen += 1;
            let cmds = commands(source);
            assert!(!cmds.is_empty(), "{file}: no command found");
            for c in cmds {
                assert!(
                    READS.contains(&c.as_str()),
                    "{file} calls {c}, which writes"
                );
            }
        }
        assert_eq!(seen, READ_ONLY.len(), "a READ_ONLY name matches no script");
        // And a writer is caught: verify_code counts wrong keys.
        assert!(commands(SCRIPTS.verify_code.source).contains(&"SET".to_owned()));
        assert_eq!(
            SCRIPTS.verify_code.rerun(),
            crate::redis::conn::Rerun::IfUnsent
        );
        assert_eq!(
            SCRIPTS.read_exchange.rerun(),
            crate::redis::conn::Rerun::Safe
        );
    }
}
