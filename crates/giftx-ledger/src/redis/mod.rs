//! The Redis ledger: every state change is one Lua script (`lua/`), every
//! key of a script under one hash tag, time always from the caller.
//!
//! Layout (see `keys`):
//! - `{g}`: campaigns, series, batches (and their ids by ordinal, `bo`),
//!   create request ids, leases, an outbox stream for registry events, and
//!   `fg`, set for half a second while some giftxd has foreground work
//!   (issuance's bulk stores yield to it).
//! - `{b<n>}`, n in 0..4096 (from the code digest): per campaign series a
//!   hash of compact code records (`c`: state, login key prefix, latest
//!   exchange seq, serial in the batch, batch ordinal), a hash of exchanges
//!   (`x`), a ZSET of exchanges given with a holder preference (`f`, only
//!   once there is one) and a meta hash (`m`: deadline copy + version,
//!   voided batch flags, swept flag, counters, `tv`: the version the TTLs
//!   were last moved for, `xt`: the deadline `x` got its TTL under); per
//!   bucket a ZSET of PENDING exchanges (`p`) and an outbox stream (`e`),
//!   and per code met with a wrong login key (existing or not) a lockout
//!   key (`l:<series>:<field hex>`, expiring with the lockout). `c`, `x`
//!   and `f` expire together at deadline + retention (a backstop: the
//!   sweep's purge, `purge_campaign` then `purge_bucket`, is what deletes;
//!   nothing else does, and past retention codes read as absent). Any script that meets a newer campaign version may sync
//!   the deadline copy, but only `push_deadline` moves the TTLs (and
//!   writes `tv`), so a bucket synced early still gets them moved.
//!
//! Deadlines and voids are lazy: a code record stays ACTIVE and reads
//! EXPIRED or VOID from its bucket's copy of the campaign. Extending or
//! voiding writes the `{g}` record first (with a push-pending marker), then
//! pushes to every bucket; until a push is finished, every bucket script
//! also takes the caller's (deadline, version, voided batches) and keeps
//! the newer, so a crash in the middle of a push changes nothing callers
//! can see once their campaign cache (at most [`RedisOptions::cache_ttl`]
//! old) is refreshed.

pub mod access;
mod codec;
mod conn;
mod keys;
pub mod provider_store;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use giftx_core::model::{
    Batch, BatchId, BatchState, Campaign, CampaignCounts, CampaignId, CampaignSpec, CodeState,
};
use giftx_core::{Digest, Series, Timestamp};
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use tracing::Instrument;

use crate::{
    ClaimOutcome, ClaimRequest, CodeRef, CodeView, Event, ExchangeId, ExchangeRecord, Lease,
    Ledger, LedgerConfig, LedgerError, NewCode, Page, Refusal, StoreOutcome, SweepOutcome,
};
use codec::{CampaignInfo, int, internal};
pub use conn::TlsOptions;
use conn::{Pool, Rerun, with_retry};
use keys::{BUCKETS, BucketKeys, ExchangeLoc, Slot, global};
use scripts::{LuaScript, Rc, SCRIPTS};

/// Connection tunables of the Redis ledger.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Every call to Redis gives up after this long with
    /// [`LedgerError::Unavailable`].
    pub timeout: Duration,
    /// How long outbox events are kept (streams are trimmed by age).
    pub event_retention: Duration,
    /// How long a campaign record is cached in this process.
    pub cache_ttl: Duration,
    /// Bucket scripts in flight at once when a call fans out over buckets.
    pub fan_out: usize,
    /// Connections the bucket scripts and bulk pipelines are spread over
    /// (by bucket). Redis reads at most 16 KiB per connection per
    /// event-loop turn, and with `appendfsync always` each turn that writes
    /// costs one fsync, so a single connection caps write throughput at
    /// 16 KiB per fsync; several connections let one turn (and one fsync)
    /// take several times that.
    pub connections: usize,
    /// Connections of their own for issuance's bulk stores (`store_codes`
    /// pipelines), so a call such as a claim never queues behind a bulk
    /// pipeline on a shared connection: Redis serves connections in turn,
    /// so a claim waits at most one turn of the bulk connections (16 KiB
    /// each), not for every pipeline in flight.
    pub bulk_connections: usize,
    /// For a `rediss://` URL: the CA to trust.
    pub tls: TlsOptions,
    /// The password to send (`AUTH`), instead of one in the URL.
    pub password: Option<RedisPassword>,
    /// The ACL user for the master in Sentinel mode (in single-node mode
    /// the user is in the URL).
    pub username: Option<String>,
    /// The logical database in Sentinel mode (in single-node mode it is in
    /// the URL).
    pub database: i64,
    /// Replicas a claim and a completion must reach (`WAIT`) before giftx
    /// calls a provider or answers SUCCEEDED; `None`: 1 in Sentinel mode,
    /// and with one node 1 when it had replicas when the connection was
    /// opened, else 0.
    pub min_replicas_acked: Option<usize>,
}

/// A Redis password, never printed.
#[derive(Clone)]
pub struct RedisPassword(pub String);

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_secs(2),
            event_retention: Duration::from_secs(30 * 24 * 3600),
            cache_ttl: Duration::from_secs(1),
            fan_out: 512,
            connections: 4,
            bulk_connections: 4,
            tls: TlsOptions::default(),
            password: None,
            username: None,
            database: 0,
            min_replicas_acked: None,
        }
    }
}

/// The ledger on Redis (standalone; every script also runs on Cluster).
pub struct RedisLedger {
    /// [`RedisOptions::connections`] connections; the first also serves
    /// `{g}` and the provider store.
    pool: Arc<Pool>,
    /// [`RedisOptions::bulk_connections`] connections for issuance's
    /// bulk stores only.
    bulk: Arc<Pool>,
    /// Issuance yields to everything else (see [`Foreground`]).
    foreground: Foreground,
    config: LedgerConfig,
    options: RedisOptions,
    cache: Mutex<CampaignCache>,
}

/// Scripts of the issuance path and of lease upkeep: they do not count as
/// foreground work that bulk stores must yield to (else a stream would
/// slow itself down).
const BACKGROUND_SCRIPTS: [&str; 7] = [
    "begin_batch",
    "touch_batch",
    "finish_batch",
    "store_codes",
    "record_stored",
    "acquire_lease",
    "release_lease",
];

/// While yielding, a bulk pipeline is followed by a pause this many times
/// its round trip: bulk stores then take at most a tenth of Redis's time.
const BULK_PAUSE: u32 = 9;

/// How long after a foreground script bulk stores still yield.
const FOREGROUND_WINDOW: Duration = Duration::from_millis(250);

/// How often a process with foreground work says so in Redis (`{g}:fg`,
/// which lives for [`FOREGROUND_WINDOW`] × 2), and how long a process
/// trusts what it last read there.
const FOREGROUND_SHARE_EVERY: Duration = Duration::from_millis(100);

/// While foreground work (claims, verifies, completions, operator
/// scripts) is running, issuance's bulk stores take turns: one chunk's
/// stores at a time across the process, one pipeline at a time, each
/// followed by a pause [`BULK_PAUSE`] times its round trip, so they use
/// at most about a tenth of Redis's time and a claim waits behind at most
/// one pipeline. Without foreground work they run at full width. (A chunk
/// still finishes well within the batch stall timeout: 128 pipelines of a
/// few milliseconds each, ten times over.)
#[derive(Debug)]
struct Foreground {
    epoch: Instant,
    /// Milliseconds since `epoch` when a foreground script last started.
    last: std::sync::atomic::AtomicU64,
    /// The one turn bulk pipelines share while yielding.
    turn: tokio::sync::Semaphore,
    /// Milliseconds since `epoch` when this process last said in Redis
    /// that it has foreground work.
    shared: std::sync::atomic::AtomicU64,
    /// What `{g}:fg` said when last read (`seen_at`: ms since `epoch`,
    /// plus one; 0 = never read).
    seen: std::sync::atomic::AtomicBool,
    seen_at: std::sync::atomic::AtomicU64,
}

impl Foreground {
    fn new() -> Foreground {
        Foreground {
            epoch: Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            turn: tokio::sync::Semaphore::new(1),
            shared: std::sync::atomic::AtomicU64::new(0),
            seen: std::sync::atomic::AtomicBool::new(false),
            seen_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// True when this process should say in Redis that it has foreground
    /// work (at most every [`FOREGROUND_SHARE_EVERY`]); claims the slot.
    fn share_due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now_ms() + 1;
        let every = u64::try_from(FOREGROUND_SHARE_EVERY.as_millis()).unwrap_or(u64::MAX);
        let last = self.shared.load(Relaxed);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .shared
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }

    /// What `{g}:fg` said, if read within [`FOREGROUND_SHARE_EVERY`].
    fn seen_recently(&self) -> Option<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.seen_at.load(Relaxed);
        let every = u64::try_from(FOREGROUND_SHARE_EVERY.as_millis()).unwrap_or(u64::MAX);
        (at != 0 && (self.now_ms() + 1).saturating_sub(at) < every).then(|| self.seen.load(Relaxed))
    }

    fn saw(&self, present: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.seen.store(present, Relaxed);
        self.seen_at.store(self.now_ms() + 1, Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A script is starting.
    fn note(&self, script: &str) {
        if !BACKGROUND_SCRIPTS.contains(&script) {
            // Plus one: "never" (0) stays distinguishable from "at start".
            self.last
                .store(self.now_ms() + 1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// True while foreground work ran within [`FOREGROUND_WINDOW`].
    fn active(&self) -> bool {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        let window = u64::try_from(FOREGROUND_WINDOW.as_millis()).unwrap_or(u64::MAX);
        last != 0 && self.now_ms().saturating_sub(last.saturating_sub(1)) < window
    }

    /// The turn of one chunk's stores while foreground work is active
    /// (None: no foreground work, run at full width). Chunks take turns
    /// whole, so each finishes soon instead of all finishing late.
    async fn turn(&self, elsewhere: bool) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if !(elsewhere || self.active()) {
            return None;
        }
        self.turn.acquire().await.ok()
    }
}

/// One load of a campaign record by series; every caller that finds it
/// in flight waits for its result instead of loading again.
type Flight = tokio::sync::OnceCell<Result<Option<Arc<CampaignInfo>>, LedgerError>>;

/// Campaign records by series index, briefly cached (the hot path needs
/// one per call), with their reloads single-flight: when an entry lapses
/// under load, one caller reloads it (HGET + HGETALL) and the others in
/// flight wait for that load rather than each sending their own.
#[derive(Default)]
struct CampaignCache {
    entries: HashMap<u16, (Instant, Arc<CampaignInfo>)>,
    /// Loads in flight (at most one per series index, so bounded).
    loading: HashMap<u16, Arc<Flight>>,
    /// Bumped by [`RedisLedger::forget_cache`]: a load begun before does
    /// not fill the cache.
    generation: u64,
}

fn clone_error(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Refused(r) => LedgerError::Refused(r.clone()),
        LedgerError::Unavailable(m) => LedgerError::Unavailable(m.clone()),
        LedgerError::Internal(m) => LedgerError::Internal(m.clone()),
    }
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("config", &self.config)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// File name, key count and source of every script (for the static test
/// that checks headers against file names).
#[doc(hidden)]
pub fn script_catalog() -> Vec<(&'static str, usize, &'static str)> {
    SCRIPTS.catalog()
}

/// Scripts whose write must be on the configured replicas before giftx
/// acts on it: a claim (before the provider is called) and a completion
/// (before SUCCEEDED is answered). A failover may lose any write not yet
/// replicated; these two would lose an exchange a holder was told about.
const DURABLE: &[&str] = &["claim_code", "complete_exchange"];

fn map_err(e: RedisError) -> LedgerError {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => LedgerError::Unavailable(e.to_string()),
        ErrorKind::Server(_)
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::InvalidClientConfig => LedgerError::Internal(e.to_string()),
        _ => LedgerError::Unavailable(e.to_string()),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn refused(rc: Rc, v: &[Value]) -> LedgerError {
    match rc {
        Rc::Locked => match v.get(1).map(int) {
            Some(Ok(until)) => Refusal::Locked {
                until: Timestamp(until),
            }
            .into(),
            _ => internal("LOCKED without a time"),
        },
        rc => match rc.refusal() {
            Some(r) => r.into(),
            None => internal(format!("unexpected return code {rc:?}")),
        },
    }
}

/// A chunk of codes grouped by bucket, without a per-code allocation:
/// `order` holds chunk indexes bucket by bucket, each bucket's run sorted by
/// code field so a field repeated within the chunk is found here (the
/// script never sees two equal fields; the later ones are `repeats`, as an
/// insert-if-absent in chunk order would report them).
struct StorePlan {
    /// Chunk indexes sent, bucket by bucket.
    order: Vec<usize>,
    /// (bucket, start, end) into `order`, ascending by bucket.
    ranges: Vec<(u16, usize, usize)>,
    /// Code field of every code of the chunk.
    fields: Vec<[u8; 10]>,
    /// Chunk indexes repeating an earlier code of the chunk.
    repeats: Vec<usize>,
}

impl StorePlan {
    fn new(codes: &[NewCode]) -> StorePlan {
        let slots: Vec<Slot> = codes.iter().map(|c| Slot::of(&c.code)).collect();
        let nb = usize::from(BUCKETS);
        let mut start = vec![0usize; nb + 1];
        for s in &slots {
            start[usize::from(s.bucket) + 1] += 1;
        }
        for b in 0..nb {
            start[b + 1] += start[b];
        }
        let mut fill = start.clone();
        let mut sorted = vec![0usize; slots.len()];
        for (i, s) in slots.iter().enumerate() {
            let b = usize::from(s.bucket);
            sorted[fill[b]] = i;
            fill[b] += 1;
        }
        let mut order = Vec::with_capacity(slots.len());
        let mut ranges = Vec::new();
        let mut repeats = Vec::new();
        for (b, w) in start.windows(2).enumerate() {
            if w[0] == w[1] {
                continue;
            }
            let run = &mut sorted[w[0]..w[1]];
            run.sort_unstable_by_key(|&i| (slots[i].field, i));
            let from = order.len();
            for (j, &i) in run.iter().enumerate() {
                if j > 0 && slots[run[j - 1]].field == slots[i].field {
                    repeats.push(i);
                } else {
                    order.push(i);
                }
            }
            let bucket = u16::try_from(b).unwrap_or(u16::MAX);
            ranges.push((bucket, from, order.len()));
        }
        StorePlan {
            order,
            ranges,
            fields: slots.iter().map(|s| s.field).collect(),
            repeats,
        }
    }

    /// The arguments `store_codes` takes for one range: per code its field,
    /// then its new record (`A`, login key prefix, no exchange, serial,
    /// batch ordinal `ordinal` in decimal), ready to store as they are.
    fn add_records(
        &self,
        cmd: &mut redis::Cmd,
        codes: &[NewCode],
        (from, to): (usize, usize),
        ordinal: &[u8],
    ) {
        let mut rec = Vec::with_capacity(15 + ordinal.len());
        for &i in &self.order[from..to] {
            rec.clear();
            rec.push(b'A');
            rec.extend_from_slice(&codes[i].login_key.0[..8]);
            rec.extend_from_slice(&[0, 0]);
            rec.extend_from_slice(&codes[i].serial.to_be_bytes());
            rec.extend_from_slice(ordinal);
            cmd.arg(&self.fields[i][..]).arg(&rec[..]);
        }
    }
}

/// Sees every script this process runs, for metrics (the server's
/// Prometheus histograms); set once with [`set_script_observer`].
pub trait ScriptObserver: Send + Sync + 'static {
    /// `script` finished after `elapsed` (round trip); `failed` when Redis
    /// or the connection failed it (a business refusal is not a failure).
    fn script_finished(&self, script: &'static str, elapsed: Duration, failed: bool);
}

static SCRIPT_OBSERVER: std::sync::OnceLock<Box<dyn ScriptObserver>> = std::sync::OnceLock::new();

/// The name of every script the Redis ledger runs, as a
/// [`ScriptObserver`] is told it (metrics create their series up front).
pub fn script_names() -> Vec<&'static str> {
    scripts::SCRIPTS.names()
}

/// Installs the process-wide [`ScriptObserver`]; false when one already is.
pub fn set_script_observer(observer: Box<dyn ScriptObserver>) -> bool {
    SCRIPT_OBSERVER.set(observer).is_ok()
}

/// A command or a pipeline, to run on a pooled connection.
trait Query: Sync {
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut conn::Conn,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut conn::Conn,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(c)
    }
}

impl Query for redis::Pipeline {
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut conn::Conn,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(c)
    }
}

/// Bucket scripts per pipeline when storing codes: with a default
/// IssueCodes chunk of 262,144 (64 codes, 3.3 KB a script) about 2,000
/// codes and 100 KB a pipeline, a few milliseconds of Redis's time, so a
/// store never waits long behind the pipelines in flight and Redis has
/// work as soon as the first one lands.
const STORE_PIPELINE: usize = 32;

impl RedisLedger {
    /// Connects with default [`RedisOptions`].
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached.
    pub async fn connect(url: &str, config: LedgerConfig) -> Result<RedisLedger, LedgerError> {
        Self::connect_with(url, config, RedisOptions::default()).await
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    /// `Unavailable` when Redis cannot be reached; `Internal` for a bad URL.
    pub async fn connect_with(
        url: &str,
        config: LedgerConfig,
        options: RedisOptions,
    ) -> Result<RedisLedger, LedgerError> {
        let open = |size: usize| {
            Pool::new(
                url,
                options.password.as_ref().map(|p| p.0.as_str()),
                &options.tls,
                size.max(1),
                options.timeout,
            )
            .map_err(LedgerError::Internal)
        };
        let (pool, bulk) = (open(options.connections)?, open(options.bulk_connections)?);
        Self::with_pools(pool, bulk, config, options).await
    }

    /// Connects to the master that the sentinels at `sentinels`
    /// (`redis://host:port` each) name `master`, following it through
    /// failovers: every reconnect asks the sentinels again, a connection
    /// to a former master is dropped as soon as they name a new one, and
    /// a write a demoted master refuses (READONLY) goes once more to the
    /// new one.
    ///
    /// # Errors
    /// `Unavailable` when no sentinel or master answers; `Internal` for
    /// bad URLs.
    pub async fn connect_sentinel(
        sentinels: &[String],
        master: &str,
        config: LedgerConfig,
        options: RedisOptions,
    ) -> Result<RedisLedger, LedgerError> {
        let open = |size: usize| {
            Pool::new_sentinel(
                sentinels,
                master,
                (
                    options.username.as_deref(),
                    options.password.as_ref().map(|p| p.0.as_str()),
                    options.database,
                ),
                &options.tls,
                size.max(1),
                options.timeout,
            )
            .map_err(LedgerError::Internal)
        };
        let (pool, bulk) = (open(options.connections)?, open(options.bulk_connections)?);
        Self::with_pools(pool, bulk, config, options).await
    }

    async fn with_pools(
        pool: Pool,
        bulk: Pool,
        config: LedgerConfig,
        options: RedisOptions,
    ) -> Result<RedisLedger, LedgerError> {
        // Open every connection now and PING on it, so a wrong URL, CA,
        // user or password fails here rather than on the first call.
        for p in [&pool, &bulk] {
            for i in 0..p.len() {
                tokio::time::timeout(options.timeout, async {
                    let mut c = p.get(i).await?;
                    redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await
                .map_err(|_| LedgerError::Unavailable("connect timed out".into()))?
                .map_err(map_err)?;
            }
        }
        Ok(RedisLedger {
            pool: Arc::new(pool),
            bulk: Arc::new(bulk),
            foreground: Foreground::new(),
            config,
            options,
            cache: Mutex::new(CampaignCache::default()),
        })
    }

    /// Says in Redis that this process has foreground work, so the bulk
    /// stores of every giftxd yield (fire and forget: losing it only means
    /// a store does not yield for a moment).
    fn share_foreground(&self) {
        let pool = Arc::clone(&self.pool);
        let ttl = ms(FOREGROUND_WINDOW * 2);
        tokio::spawn(async move {
            if let Ok(mut c) = pool.get(0).await {
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(global::FOREGROUND)
                    .arg(1)
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await;
            }
        });
    }

    /// True while another giftxd (or this one) said it has foreground
    /// work; read at most every [`FOREGROUND_SHARE_EVERY`].
    async fn foreground_elsewhere(&self) -> bool {
        if let Some(seen) = self.foreground.seen_recently() {
            return seen;
        }
        let present = self
            .read::<bool, _>(
                "foreground",
                &redis::cmd("EXISTS").arg(global::FOREGROUND).to_owned(),
            )
            .await
            .unwrap_or(false);
        self.foreground.saw(present);
        present
    }

    /// True while issuance's bulk stores yield to foreground work, in
    /// this process or another one on the same Redis.
    pub async fn issuance_yields(&self) -> bool {
        self.foreground.active() || self.foreground_elsewhere().await
    }

    fn trim(&self) -> i64 {
        // Stream ids carry the server's wall clock; trimming by age is
        // housekeeping, so it uses this host's wall clock, not the ledger's.
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(ms)
            .unwrap_or(0);
        wall.saturating_sub(ms(self.options.event_retention)).max(0)
    }

    /// The pooled connection for work on `bucket` (the first for `{g}`).
    fn slot_for(bucket: Option<u16>) -> usize {
        bucket.map_or(0, usize::from)
    }

    /// One plain read command (or pipeline) on the `{g}` connection,
    /// retried once on a fresh connection if its connection broke.
    async fn read<T, Q>(&self, what: &str, q: &Q) -> Result<T, LedgerError>
    where
        T: redis::FromRedisValue,
        Q: Query,
    {
        with_retry(
            &self.pool,
            0,
            Rerun::Safe,
            (self.options.timeout, what),
            |mut c| async move { q.run(&mut c).await },
        )
        .await
    }

    fn retention(&self) -> i64 {
        ms(self.config.retention)
    }

    /// Runs one script with `keys` and the arguments `build` adds.
    async fn run(
        &self,
        s: &LuaScript,
        bucket: Option<u16>,
        keys: &[&str],
        build: impl FnOnce(&mut redis::Cmd),
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
        build(&mut cmd);
        self.foreground.note(s.name);
        if self.foreground.active() && self.foreground.share_due() {
            self.share_foreground();
        }
        let span = tracing::info_span!(
            "ledger.script",
            script = s.name,
            bucket = bucket.map(i64::from).unwrap_or(-1),
            result = tracing::field::Empty
        );
        let started = Instant::now();
        let durable = DURABLE.contains(&s.name);
        let out = async {
            let v: Value = with_retry(
                &self.pool,
                Self::slot_for(bucket),
                s.rerun(),
                (self.options.timeout, s.name),
                |mut c| {
                    let cmd = &cmd;
                    async move {
                        let v = s.call(cmd, &mut c).await?;
                        if durable {
                            self.wait_replicas(&mut c).await?;
                        }
                        Ok(v)
                    }
                },
            )
            .await?;
            let Value::Array(v) = v else {
                return Err(internal(format!("{} returned a non-array", s.name)));
            };
            let rc = Rc::from_int(int(v.first().ok_or_else(|| internal("empty reply"))?)?)?;
            tracing::Span::current().record("result", rc as i64);
            Ok((rc, v))
        }
        .instrument(span)
        .await;
        if let Some(o) = SCRIPT_OBSERVER.get() {
            o.script_finished(s.name, started.elapsed(), out.is_err());
        }
        if let Err(e) = &out {
            tracing::debug!(script = s.name, error = %e, "ledger script failed");
        }
        out
    }

    /// After a write that must survive a failover (see [`DURABLE`]): waits
    /// until it is on the replicas [`RedisOptions::min_replicas_acked`]
    /// asks for (one `WAIT` may cover several writers of the connection:
    /// [`conn::WaitGroup`]). Too few within half the call's timeout is `TRYAGAIN`
    /// (Unavailable to the caller; the write itself stands, and the
    /// exchange stays recoverable).
    async fn wait_replicas(&self, c: &mut conn::Conn) -> redis::RedisResult<()> {
        let n = self.options.min_replicas_acked.unwrap_or(c.wait_default);
        if n == 0 {
            return Ok(());
        }
        let wait_ms = (ms(self.options.timeout) / 2).max(1);
        let waits = c.waits.clone();
        let acked = waits.wait(c, n, wait_ms).await?;
        if usize::try_from(acked).unwrap_or(0) < n {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
                "write not yet on enough replicas",
                format!("{acked} of {n} replicas acknowledged within {wait_ms} ms"),
            )));
        }
        Ok(())
    }

    /// Runs plain read commands in pipelines of at most 512, concurrently
    /// (each pipeline retried once if its connection broke: reads only).
    async fn pipelined(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, LedgerError> {
        let chunks: Vec<Vec<redis::Cmd>> = cmds.chunks(512).map(<[redis::Cmd]>::to_vec).collect();
        let results: Vec<Vec<Value>> = futures::stream::iter(chunks.into_iter().enumerate())
            .map(|(n, chunk)| async move {
                let mut p = redis::pipe();
                for c in chunk {
                    p.add_command(c);
                }
                let p = &p;
                with_retry(
                    &self.pool,
                    n,
                    Rerun::Safe,
                    (self.options.timeout, "pipeline"),
                    |mut c| async move { p.query_async::<Vec<Value>>(&mut c).await },
                )
                .await
            })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, CampaignCache> {
        // Entries are replaced whole: a poisoned cache is still valid.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn load_campaign(&self, id: &CampaignId) -> Result<Option<CampaignInfo>, LedgerError> {
        let info = self.fetch_campaign(id).await?;
        if let Some(info) = &info {
            self.cache().entries.insert(
                info.campaign.series.index(),
                (Instant::now(), Arc::new(info.clone())),
            );
        }
        Ok(info)
    }

    /// The campaign record, straight from Redis (no cache).
    async fn fetch_campaign(&self, id: &CampaignId) -> Result<Option<CampaignInfo>, LedgerError> {
        let h: HashMap<String, Vec<u8>> = self
            .read("HGETALL", redis::cmd("HGETALL").arg(global::campaign(id)))
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        codec::campaign(&h).map(Some)
    }

    async fn series_owner(&self, series: Series) -> Result<Option<CampaignId>, LedgerError> {
        let id: Option<String> = self
            .read(
                "HGET",
                redis::cmd("HGET").arg(global::SERIES).arg(series.index()),
            )
            .await?;
        id.map(|s| CampaignId::parse("campaign", &s).map_err(|e| internal(e.description)))
            .transpose()
    }

    /// The campaign holding `series`, from the cache when fresh enough;
    /// else loaded once for every caller asking meanwhile (single-flight).
    /// Misses are not cached (a campaign created a moment later must be
    /// found), only shared with the callers waiting on the same load.
    async fn info_by_series(
        &self,
        series: Series,
    ) -> Result<Option<Arc<CampaignInfo>>, LedgerError> {
        let idx = series.index();
        let (flight, generation) = {
            let mut c = self.cache();
            if let Some((at, info)) = c.entries.get(&idx)
                && at.elapsed() < self.options.cache_ttl
            {
                return Ok(Some(info.clone()));
            }
            let generation = c.generation;
            let flight = c.loading.entry(idx).or_default();
            if flight.initialized() {
                // Finished, but not yet retired: its answer may be old.
                *flight = Arc::default();
            }
            (flight.clone(), generation)
        };
        let result = flight
            .get_or_init(|| async {
                let info = match self.series_owner(series).await? {
                    Some(id) => self.fetch_campaign(&id).await?.map(Arc::new),
                    None => None,
                };
                if let Some(info) = &info {
                    let mut c = self.cache();
                    if c.generation == generation {
                        c.entries.insert(idx, (Instant::now(), info.clone()));
                    }
                }
                Ok(info)
            })
            .await;
        {
            // The first caller back retires the flight; the next miss
            // starts a new one.
            let mut c = self.cache();
            if c.loading.get(&idx).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                c.loading.remove(&idx);
            }
        }
        match result {
            Ok(info) => Ok(info.clone()),
            Err(e) => Err(clone_error(e)),
        }
    }

    /// Runs `f` for every bucket, `fan_out` at a time; results in any order.
    async fn each_bucket<T, F, Fut>(&self, f: F) -> Result<Vec<T>, LedgerError>
    where
        F: Fn(u16) -> Fut,
        Fut: Future<Output = Result<T, LedgerError>>,
    {
        futures::stream::iter(0..BUCKETS)
            .map(f)
            .buffer_unordered(self.options.fan_out)
            .try_collect()
            .await
    }

    /// Pushes a campaign's deadline to every bucket, then clears the marker.
    async fn push_deadline(&self, info: &CampaignInfo, now: Timestamp) -> Result<(), LedgerError> {
        let c = &info.campaign;
        let (dl, ver) = (c.spec.expire_time.0, c.version);
        let retention = self.retention();
        self.each_bucket(|b| async move {
            let k = BucketKeys::new(b, c.series);
            let (codes, xs, meta, prefs) = (k.codes(), k.exchanges(), k.meta(), k.preferences());
            self.run(
                &SCRIPTS.push_deadline,
                Some(b),
                &[&codes, &xs, &meta, &prefs],
                |i| {
                    i.arg(dl).arg(ver).arg(now.0).arg(retention);
                },
            )
            .await
            .map(|_| ())
        })
        .await?;
        self.run(
            &SCRIPTS.clear_push,
            None,
            &[&global::campaign(&c.spec.id)],
            |i| {
                i.arg(ver);
            },
        )
        .await?;
        Ok(())
    }

    /// Runs `store_codes` for every bucket of `plan`: EVALSHA pipelines of
    /// [`STORE_PIPELINE`] scripts, spread over the connections and run
    /// concurrently. A script the server lost (NOSCRIPT: it did not run) is
    /// loaded again and only its buckets are retried, so no bucket runs
    /// twice. Returns per bucket (issued in the bucket, chunk indexes that
    /// collided).
    async fn store_buckets(
        &self,
        plan: &StorePlan,
        codes: &[NewCode],
        series: Series,
        ordinal: u32,
        (dl, ver): (i64, u64),
        now: Timestamp,
    ) -> Result<Vec<(u64, Vec<usize>)>, LedgerError> {
        let s = &SCRIPTS.store_codes;
        let retention = self.retention();
        let ord = ordinal.to_string();
        let ord = &ord;
        let mut todo: Vec<usize> = (0..plan.ranges.len()).collect();
        let mut out = Vec::with_capacity(plan.ranges.len());
        let elsewhere = !self.foreground.active() && self.foreground_elsewhere().await;
        let turn = self.foreground.turn(elsewhere).await;
        let yielding = turn.is_some();
        let width = if yielding { 1 } else { self.bulk.len() * 2 };
        for _ in 0..5 {
            let batches: Vec<Vec<usize>> =
                todo.chunks(STORE_PIPELINE).map(<[usize]>::to_vec).collect();
            let replies: Vec<Vec<(usize, redis::RedisResult<Value>)>> =
                futures::stream::iter(batches.into_iter().enumerate())
                    .map(|(n, batch)| {
                        let mut p = redis::pipe();
                        p.ignore_errors();
                        for &r in &batch {
                            let (b, from, to) = plan.ranges[r];
                            let k = BucketKeys::new(b, series);
                            let n = to - from;
                            let mut cmd =
                                redis::Cmd::with_capacity(10 + 2 * n, 160 + n * (25 + ord.len()));
                            cmd.arg("EVALSHA")
                                .arg(s.script.get_hash())
                                .arg(s.keys)
                                .arg(k.codes())
                                .arg(k.meta())
                                .arg(now.0)
                                .arg(ord.as_bytes())
                                .arg(dl)
                                .arg(ver)
                                .arg(retention);
                            plan.add_records(&mut cmd, codes, (from, to), ord.as_bytes());
                            p.add_command(cmd);
                        }
                        async move {
                            let p = &p;
                            // Writes: re-sent only if they provably were not sent.
                            let started = Instant::now();
                            let v: Vec<redis::RedisResult<Value>> = with_retry(
                                &self.bulk,
                                n,
                                Rerun::IfUnsent,
                                (self.options.timeout, "store_codes"),
                                |mut c| async move { p.query_async(&mut c).await },
                            )
                            .await?;
                            if yielding {
                                tokio::time::sleep(started.elapsed() * BULK_PAUSE).await;
                            }
                            if v.len() != batch.len() {
                                return Err(internal("short store_codes pipeline reply"));
                            }
                            Ok(batch.into_iter().zip(v).collect())
                        }
                    })
                    .buffer_unordered(width)
                    .try_collect()
                    .await?;
            let mut lost = Vec::new();
            for (r, reply) in replies.into_iter().flatten() {
                let v = match reply {
                    Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        lost.push(r);
                        continue;
                    }
                    Err(e) => return Err(map_err(e)),
                    Ok(Value::Array(v)) => v,
                    Ok(_) => return Err(internal("store_codes returned a non-array")),
                };
                let rc = Rc::from_int(int(v.first().ok_or_else(|| internal("empty reply"))?)?)?;
                if rc != Rc::Ok {
                    return Err(refused(rc, &v));
                }
                let (_, from, to) = plan.ranges[r];
                let sent = &plan.order[from..to];
                let issued = u64::try_from(int(v.get(1).ok_or_else(|| internal("short"))?)?)
                    .map_err(internal)?;
                let mut coll = Vec::new();
                for x in &v[2..] {
                    let n = usize::try_from(int(x)?).map_err(internal)?;
                    let i = n.checked_sub(1).and_then(|n| sent.get(n));
                    coll.push(*i.ok_or_else(|| internal("bad index"))?);
                }
                out.push((issued, coll));
            }
            if lost.is_empty() {
                return Ok(out);
            }
            tracing::debug!(buckets = lost.len(), "store_codes script lost; reloading");
            // Loading a script twice is harmless: retried like a read.
            let _: String = self
                .read(
                    "SCRIPT LOAD",
                    redis::cmd("SCRIPT").arg("LOAD").arg(s.source),
                )
                .await?;
            todo = lost;
        }
        Err(LedgerError::Unavailable(
            "store_codes script keeps disappearing".into(),
        ))
    }

    /// Sums a batch's per-bucket issued counters.
    async fn bucket_issued(&self, series: Series, ordinal: u32) -> Result<u64, LedgerError> {
        let cmds = (0..BUCKETS)
            .map(|b| {
                redis::cmd("HGET")
                    .arg(BucketKeys::new(b, series).meta())
                    .arg(format!("bi:{ordinal}"))
                    .to_owned()
            })
            .collect();
        let mut total = 0u64;
        for v in self.pipelined(cmds).await? {
            if v != Value::Nil {
                total += u64::try_from(int(&v)?).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// A batch; with `now`, an ISSUING batch idle past the stall timeout
    /// reads INCOMPLETE (without, it reads as stored).
    async fn read_batch(
        &self,
        info: &CampaignInfo,
        batch: &BatchId,
        now: Option<Timestamp>,
    ) -> Result<Option<Batch>, LedgerError> {
        let h: HashMap<String, String> = self
            .read(
                "HGETALL",
                redis::cmd("HGETALL").arg(global::batch(&info.campaign.spec.id, batch)),
            )
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        let n = |k: &str| -> Result<i64, LedgerError> {
            h.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| internal(format!("batch field {k} missing")))
        };
        let ordinal = u32::try_from(n("ord")?).map_err(internal)?;
        let stall = ms(self.config.batch_stall_timeout);
        let stalled = || -> Result<bool, LedgerError> {
            Ok(match now {
                Some(now) => now.0 - n("la")? > stall,
                None => false,
            })
        };
        let state = match h.get("st").map(String::as_str) {
            Some("I") if stalled()? => BatchState::Incomplete,
            Some("I") => BatchState::Issuing,
            Some("C") => BatchState::Complete,
            Some("N") => BatchState::Incomplete,
            Some("V") => BatchState::Void,
            _ => return Err(internal("bad batch state")),
        };
        let issued = if state == BatchState::Complete {
            u64::try_from(n("iss")?).map_err(internal)?
        } else {
            self.bucket_issued(info.campaign.series, ordinal).await?
        };
        Ok(Some(Batch {
            campaign: info.campaign.spec.id.clone(),
            id: batch.clone(),
            ordinal,
            requested: u64::try_from(n("req")?).map_err(internal)?,
            issued,
            state,
            create_time: Timestamp(n("ct")?),
            update_time: Timestamp(n("ut")?),
        }))
    }

    async fn read_exchange(
        &self,
        loc: &ExchangeLoc,
    ) -> Result<Option<ExchangeRecord>, LedgerError> {
        let k = loc.keys();
        let field = loc.field();
        let (rc, v) = self
            .run(
                &SCRIPTS.read_exchange,
                Some(loc.bucket()),
                &[&k.exchanges()],
                |i| {
                    i.arg(field);
                },
            )
            .await?;
        match rc {
            Rc::Ok => {
                let id = ExchangeId(format!(
                    "{}{:04x}",
                    hex::encode(loc.series.index().to_be_bytes()) + &hex::encode(loc.prefix),
                    loc.seq
                ));
                Ok(Some(codec::exchange(&v[1..], id, loc.series)?))
            }
            Rc::ExchangeNotFound => Ok(None),
            rc => Err(refused(rc, &v)),
        }
    }

    /// The deadline and version of the campaign holding `series`, for the
    /// scripts that decide retention; `ExchangeNotFound` when no campaign
    /// holds it (then no exchange of it can exist).
    async fn deadline_of(&self, series: Series) -> Result<(i64, u64), LedgerError> {
        let info = self
            .info_by_series(series)
            .await?
            .ok_or(LedgerError::Refused(Refusal::ExchangeNotFound))?;
        Ok((info.campaign.spec.expire_time.0, info.campaign.version))
    }

    /// One page of members of a per-bucket ZSET family (`key_of(bucket)`),
    /// scores up to `max_score`, in (bucket, score, member) order, from an
    /// opaque cursor; with the cursor of the next page.
    async fn page_buckets(
        &self,
        key_of: impl Fn(u16) -> String,
        max_score: i64,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), LedgerError> {
        // Cursor: `<bucket>:<score>:<member>` of the last entry handed out;
        // the next page starts strictly after it in (bucket, score, member)
        // order (the ZSET's own order), so entries finishing between pages
        // shift nothing and none is skipped.
        let (mut bucket, after) = match cursor {
            None | Some("") => (0u16, None),
            Some(c) => {
                let bad = || internal("bad cursor");
                let mut it = c.splitn(3, ':');
                let b: u16 = it.next().and_then(|b| b.parse().ok()).ok_or_else(bad)?;
                let s: i64 = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let m = it.next().ok_or_else(bad)?;
                (b, Some((s, m.to_owned())))
            }
        };
        let limit = limit.max(1);
        let mut taken: Vec<(u16, i64, String)> = Vec::new();
        let mut more = false;
        let scored = |v: Value| -> Result<Vec<(i64, String)>, LedgerError> {
            let pairs: Vec<(String, f64)> =
                redis::from_redis_value(v).map_err(|e| internal(e.to_string()))?;
            // Scores are whole milliseconds, exact in an f64.
            #[allow(clippy::cast_possible_truncation)]
            Ok(pairs.into_iter().map(|(m, s)| (s as i64, m)).collect())
        };
        if let Some((score, member)) = after {
            if bucket >= BUCKETS {
                return Err(internal("bad cursor"));
            }
            // The rest of the cursor's bucket: its score's later members,
            // then higher scores.
            let key = key_of(bucket);
            let cmds = vec![
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(score)
                    .arg(score)
                    .arg("WITHSCORES")
                    .to_owned(),
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({score}"))
                    .arg(max_score)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1)
                    .to_owned(),
            ];
            let mut replies = self.pipelined(cmds).await?.into_iter();
            let same = scored(replies.next().unwrap_or(Value::Nil))?;
            let later = scored(replies.next().unwrap_or(Value::Nil))?;
            let rest = same
                .into_iter()
                .filter(|(s, m)| *s <= max_score && *m > member)
                .chain(later);
            for (s, m) in rest {
                if taken.len() == limit {
                    more = true;
                    break;
                }
                taken.push((bucket, s, m));
            }
            bucket += 1;
        }
        'outer: while !more && bucket < BUCKETS {
            let end = (bucket + 256).min(BUCKETS);
            let cmds = (bucket..end)
                .map(|b| {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key_of(b))
                        .arg("-inf")
                        .arg(max_score)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit + 1)
                        .to_owned()
                })
                .collect();
            let replies = self.pipelined(cmds).await?;
            for (b, r) in (bucket..end).zip(replies) {
                for (s, m) in scored(r)? {
                    if taken.len() == limit {
                        more = true;
                        break 'outer;
                    }
                    taken.push((b, s, m));
                }
            }
            bucket = end;
        }
        let next = if more {
            taken.last().map(|(b, s, m)| format!("{b}:{s}:{m}"))
        } else {
            None
        };
        let ids = taken.into_iter().map(|(_, _, m)| m).collect();
        Ok((ids, next))
    }

    /// The exchanges of `ids` that exist, in order.
    async fn exchanges_by_id(&self, ids: Vec<String>) -> Result<Vec<ExchangeRecord>, LedgerError> {
        let items: Vec<Option<ExchangeRecord>> = futures::stream::iter(ids)
            .map(|id| async move { self.get_exchange(&ExchangeId(id)).await })
            .buffered(64)
            .try_collect()
            .await?;
        Ok(items.into_iter().flatten().collect())
    }

    /// Runs `verify_code` for `code`; `info` None (a series no campaign
    /// holds) runs it all the same, with no deadline, so such a code takes
    /// the path of a wrong key: the same script, the same lockout count.
    async fn run_verify(
        &self,
        code: CodeRef,
        login_key: Digest,
        info: Option<&CampaignInfo>,
        now: Timestamp,
    ) -> Result<(Rc, Vec<Value>), LedgerError> {
        let slot = Slot::of(&code.digest);
        let k = BucketKeys::new(slot.bucket, code.series);
        let lk = keys::lockout(slot.bucket, code.series, &slot.field);
        let (ck, xk, mk, ek) = (k.codes(), k.exchanges(), k.meta(), k.events());
        let (dl, ver, voided) = match info {
            Some(i) => (
                i.campaign.spec.expire_time.0,
                i.campaign.version,
                i.voided.as_str(),
            ),
            None => (0, 0, ","),
        };
        let trim = self.trim();
        self.run(
            &SCRIPTS.verify_code,
            Some(slot.bucket),
            &[&ck, &xk, &mk, &lk, &ek],
            |i| {
                i.arg(now.0)
                    .arg(&slot.field[..])
                    .arg(&login_key.0[..8])
                    .arg(dl)
                    .arg(ver)
                    .arg(voided)
                    .arg(self.config.lockout_threshold)
                    .arg(ms(self.config.lockout_duration))
                    .arg(trim)
                    .arg(self.retention());
            },
        )
        .await
    }

    /// The purge: marks the campaign purged in `{g}` (only once its
    /// deadline + retention has passed by `now`, checked there, atomically
    /// with the deadline it reads), then deletes every bucket's codes and
    /// exchanges of it. Returns the purge time, None when not due.
    async fn purge(
        &self,
        c: &giftx_core::model::Campaign,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, LedgerError> {
        let trim = self.trim();
        let (rc, v) = self
            .run(
                &SCRIPTS.purge_campaign,
                None,
                &[&global::campaign(&c.spec.id), global::EVENTS],
                |i| {
                    i.arg(now.0).arg(self.retention()).arg(trim);
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        let [_, ver, at] = v.as_slice() else {
            return Err(internal("purge_campaign reply is not {0, version, time}"));
        };
        let (ver, at) = (int(ver)?, int(at)?);
        if at == 0 {
            return Ok(None);
        }
        self.forget_cache();
        let prefix = &hex::encode(c.series.index().to_be_bytes());
        self.each_bucket(|b| async move {
            let k = BucketKeys::new(b, c.series);
            let (mk, ek, ck, xk, pk, fk) = (
                k.meta(),
                k.events(),
                k.codes(),
                k.exchanges(),
                k.pending(),
                k.preferences(),
            );
            self.run(
                &SCRIPTS.purge_bucket,
                Some(b),
                &[&mk, &ek, &ck, &xk, &pk, &fk],
                |i| {
                    i.arg(now.0).arg(ver).arg(trim).arg(prefix.as_str());
                },
            )
            .await
            .map(|_| ())
        })
        .await?;
        Ok(Some(Timestamp(at)))
    }

    fn loc(id: &ExchangeId) -> Result<ExchangeLoc, LedgerError> {
        ExchangeLoc::parse(id).ok_or(LedgerError::Refused(Refusal::ExchangeNotFound))
    }

    /// Runs one of the scripts that change an existing exchange (keys c, x,
    /// m, p, e of its bucket; arguments now and exchange field, then what
    /// `middle` adds, then exchange id, trim, known deadline and version,
    /// retention) and decodes the record it answers.
    async fn run_exchange_script(
        &self,
        s: &LuaScript,
        id: &ExchangeId,
        now: Timestamp,
        middle: impl FnOnce(&mut redis::Cmd),
    ) -> Result<ExchangeRecord, LedgerError> {
        let loc = Self::loc(id)?;
        let (dl, ver) = self.deadline_of(loc.series).await?;
        let k = loc.keys();
        let (ck, xk, mk, pk, ek) = (k.codes(), k.exchanges(), k.meta(), k.pending(), k.events());
        let trim = self.trim();
        let (rc, v) = self
            .run(s, Some(loc.bucket()), &[&ck, &xk, &mk, &pk, &ek], |i| {
                i.arg(now.0).arg(loc.field());
                middle(i);
                i.arg(id.0.as_str())
                    .arg(trim)
                    .arg(dl)
                    .arg(ver)
                    .arg(self.retention());
            })
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        codec::exchange(&v[1..], id.clone(), loc.series)
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn create_campaign(
        &self,
        spec: &CampaignSpec,
        request_id: Option<&str>,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError> {
        let json = codec::spec_json(spec)?;
        let trim = self.trim();
        let ck = global::campaign(&spec.id);
        let (rc, v) = self
            .run(
                &SCRIPTS.create_campaign,
                None,
                &[
                    &ck,
                    global::SERIES,
                    global::CAMPAIGN_LIST,
                    global::CREATE_REQUESTS,
                    global::EVENTS,
                ],
                |i| {
                    i.arg(spec.id.as_str())
                        .arg(&json)
                        .arg(spec.expire_time.0)
                        .arg(now.0)
                        .arg(request_id.unwrap_or(""))
                        .arg(trim);
                },
            )
            .await?;
        if !matches!(rc, Rc::Ok | Rc::Existing) {
            return Err(refused(rc, &v));
        }
        let id = codec::text(v.get(1).ok_or_else(|| internal("no campaign id"))?)?;
        let id = CampaignId::parse("campaign", &id).map_err(|e| internal(e.description))?;
        let info = self
            .load_campaign(&id)
            .await?
            .ok_or_else(|| internal("campaign vanished"))?;
        if info.push.is_some() {
            self.push_deadline(&info, now).await?;
        }
        Ok(info.campaign)
    }

    async fn get_campaign(&self, id: &CampaignId) -> Result<Option<Campaign>, LedgerError> {
        Ok(self.load_campaign(id).await?.map(|i| i.campaign))
    }

    async fn campaign_by_series(&self, series: Series) -> Result<Option<Campaign>, LedgerError> {
        match self.series_owner(series).await? {
            Some(id) => self.get_campaign(&id).await,
            None => Ok(None),
        }
    }

    async fn list_campaigns(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Campaign>, LedgerError> {
        let start: i64 = match cursor {
            None | Some("") => 0,
            Some(c) => c.parse().map_err(|_| internal("bad cursor"))?,
        };
        let limit = i64::try_from(limit.max(1)).unwrap_or(1000);
        let (ids, total): (Vec<String>, i64) = self
            .read(
                "LRANGE",
                redis::pipe()
                    .cmd("LRANGE")
                    .arg(global::CAMPAIGN_LIST)
                    .arg(start)
                    .arg(start + limit - 1)
                    .cmd("LLEN")
                    .arg(global::CAMPAIGN_LIST),
            )
            .await?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let id = CampaignId::parse("campaign", &id).map_err(|e| internal(e.description))?;
            if let Some(c) = self.get_campaign(&id).await? {
                items.push(c);
            }
        }
        let end = start + limit;
        Ok(Page {
            items,
            next: (end < total).then(|| end.to_string()),
        })
    }

    async fn extend_campaign(
        &self,
        id: &CampaignId,
        expire_time: Timestamp,
        force: bool,
        now: Timestamp,
    ) -> Result<Campaign, LedgerError> {
        let trim = self.trim();
        let (rc, v) = self
            .run(
                &SCRIPTS.extend_campaign,
                None,
                &[&global::campaign(id), global::EVENTS],
                |i| {
                    i.arg(expire_time.0)
                        .arg(if force { "1" } else { "0" })
                        .arg(now.0)
                        .arg(trim)
                        .arg(self.retention());
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        let info = self
            .load_campaign(id)
            .await?
            .ok_or(LedgerError::Refused(Refusal::CampaignNotFound))?;
        if info.push.is_some() {
            self.push_deadline(&info, now).await?;
        }
        Ok(info.campaign)
    }

    async fn begin_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        requested: u64,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let trim = self.trim();
        let (rc, v) = self
            .run(
                &SCRIPTS.begin_batch,
                None,
                &[
                    &global::campaign(campaign),
                    &global::batch(campaign, batch),
                    global::EVENTS,
                    &global::batch_ordinals(campaign),
                ],
                |i| {
                    i.arg(batch.as_str()).arg(requested).arg(now.0).arg(trim);
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        self.get_batch(campaign, batch, now)
            .await?
            .ok_or_else(|| internal("batch vanished"))
    }

    async fn store_codes(
        &self,
        campaign: &Campaign,
        batch: &Batch,
        codes: &[NewCode],
        now: Timestamp,
    ) -> Result<StoreOutcome, LedgerError> {
        let id = &campaign.spec.id;
        let (rc, v) = self
            .run(
                &SCRIPTS.touch_batch,
                None,
                &[&global::campaign(id), &global::batch(id, &batch.id)],
                |i| {
                    i.arg(now.0).arg(ms(self.config.batch_stall_timeout));
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        let ordinal = u32::try_from(int(v.get(1).ok_or_else(|| internal("no ordinal"))?)?)
            .map_err(internal)?;
        let info = self
            .info_by_series(campaign.series)
            .await?
            .ok_or(LedgerError::Refused(Refusal::BatchNotFound))?;
        let (dl, ver) = (info.campaign.spec.expire_time.0, info.campaign.version);

        let series = campaign.series;
        let plan = StorePlan::new(codes);
        // While the stores run (they may wait their turn behind foreground
        // work for a while), the batch is touched every third of the stall
        // timeout, so a chunk being stored never reads as a stalled batch.
        let started = Instant::now();
        let keepalive = async {
            let every = (self.config.batch_stall_timeout / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                let at = now.0.saturating_add(ms(started.elapsed()));
                let touched = self
                    .run(
                        &SCRIPTS.touch_batch,
                        None,
                        &[&global::campaign(id), &global::batch(id, &batch.id)],
                        |i| {
                            i.arg(at).arg(ms(self.config.batch_stall_timeout));
                        },
                    )
                    .await;
                match touched {
                    Ok((Rc::Ok, _)) => {}
                    Ok((rc, _)) => tracing::warn!(
                        batch = %batch.id,
                        result = rc as i64,
                        "the batch stopped taking codes while a chunk was being stored"
                    ),
                    Err(e) => {
                        tracing::debug!(batch = %batch.id, error = %e, "touching the batch failed")
                    }
                }
            }
        };
        let results = tokio::select! {
            r = self.store_buckets(&plan, codes, series, ordinal, (dl, ver), now) => r?,
            () = keepalive => return Err(internal("the batch keepalive ended")),
        };

        let mut issued: u64 = results.iter().map(|r| r.0).sum();
        let mut collisions = plan.repeats.clone();
        collisions.extend(results.iter().flat_map(|r| r.1.iter().copied()));
        collisions.sort_unstable();
        let untouched: Vec<u16> = (0..BUCKETS)
            .filter(|&b| plan.ranges.binary_search_by_key(&b, |r| r.0).is_err())
            .collect();
        if !untouched.is_empty() {
            let cmds = untouched
                .iter()
                .map(|&b| {
                    redis::cmd("HGET")
                        .arg(BucketKeys::new(b, series).meta())
                        .arg(format!("bi:{ordinal}"))
                        .to_owned()
                })
                .collect();
            for v in self.pipelined(cmds).await? {
                if v != Value::Nil {
                    issued += u64::try_from(int(&v)?).unwrap_or(0);
                }
            }
        }
        let trim = self.trim();
        let stored = codes.len() - collisions.len();
        let (rc, v) = self
            .run(
                &SCRIPTS.record_stored,
                None,
                &[
                    &global::campaign(id),
                    &global::batch(id, &batch.id),
                    global::EVENTS,
                ],
                |i| {
                    i.arg(now.0).arg(stored).arg(issued).arg(trim);
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        Ok(StoreOutcome { issued, collisions })
    }

    async fn finish_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        complete: bool,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let info = self
            .load_campaign(campaign)
            .await?
            .ok_or(LedgerError::Refused(Refusal::BatchNotFound))?;
        let current = self
            .read_batch(&info, batch, Some(now))
            .await?
            .ok_or(LedgerError::Refused(Refusal::BatchNotFound))?;
        let trim = self.trim();
        let (rc, v) = self
            .run(
                &SCRIPTS.finish_batch,
                None,
                &[
                    &global::campaign(campaign),
                    &global::batch(campaign, batch),
                    global::EVENTS,
                ],
                |i| {
                    i.arg(if complete { "1" } else { "0" })
                        .arg(now.0)
                        .arg(current.issued)
                        .arg(trim);
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        self.read_batch(&info, batch, Some(now))
            .await?
            .ok_or_else(|| internal("batch vanished"))
    }

    async fn get_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Option<Batch>, LedgerError> {
        match self.load_campaign(campaign).await? {
            Some(info) => self.read_batch(&info, batch, Some(now)).await,
            None => Ok(None),
        }
    }

    async fn void_batch(
        &self,
        campaign: &CampaignId,
        batch: &BatchId,
        now: Timestamp,
    ) -> Result<Batch, LedgerError> {
        let trim = self.trim();
        let bk = global::batch(campaign, batch);
        let (rc, v) = self
            .run(
                &SCRIPTS.void_batch,
                None,
                &[&global::campaign(campaign), &bk, global::EVENTS],
                |i| {
                    i.arg(now.0).arg(trim);
                },
            )
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        let ordinal = int(v.get(1).ok_or_else(|| internal("no ordinal"))?)?;
        let pending = int(v.get(2).ok_or_else(|| internal("no flag"))?)? == 1;
        let info = self
            .load_campaign(campaign)
            .await?
            .ok_or(LedgerError::Refused(Refusal::BatchNotFound))?;
        if pending {
            let series = info.campaign.series;
            self.each_bucket(|b| async move {
                let k = BucketKeys::new(b, series);
                let (mk, ek) = (k.meta(), k.events());
                self.run(&SCRIPTS.void_bucket, Some(b), &[&mk, &ek], |i| {
                    i.arg(ordinal).arg(now.0).arg(trim);
                })
                .await
                .map(|_| ())
            })
            .await?;
            self.run(&SCRIPTS.clear_void, None, &[&bk], |_| {}).await?;
        }
        self.read_batch(&info, batch, Some(now))
            .await?
            .ok_or_else(|| internal("batch vanished"))
    }

    async fn verify(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<CodeView, LedgerError> {
        let info = self.info_by_series(code.series).await?;
        let (rc, v) = self
            .run_verify(code, login_key, info.as_deref(), now)
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        if v.len() < 3 {
            return Err(internal("short verify reply"));
        }
        let state = match codec::bytes(&v[1])?.as_slice() {
            b"A" => CodeState::Active,
            b"P" => CodeState::Pending,
            b"R" => CodeState::Redeemed,
            b"E" => CodeState::Expired,
            b"V" => CodeState::Void,
            _ => return Err(internal("bad code state")),
        };
        let seq = int(&v[2])?;
        let latest_exchange = if seq > 0 {
            let seq = u16::try_from(seq).map_err(internal)?;
            let id = ExchangeLoc::id(code.series, &code.digest, seq);
            Some(codec::exchange(&v[3..], id, code.series)?)
        } else {
            None
        };
        Ok(CodeView {
            state,
            latest_exchange,
        })
    }

    async fn claim(&self, req: &ClaimRequest, now: Timestamp) -> Result<ClaimOutcome, LedgerError> {
        let series = req.code.series;
        let Some(info) = self.info_by_series(series).await? else {
            // No campaign holds the series: the same path as a wrong key
            // (the verify script finds no code, counts towards lockout).
            let (rc, v) = self.run_verify(req.code, req.login_key, None, now).await?;
            return Err(match rc {
                Rc::Ok => internal("a code of a series no campaign holds"),
                rc => refused(rc, &v),
            });
        };
        let slot = Slot::of(&req.code.digest);
        let k = BucketKeys::new(slot.bucket, series);
        let lk = keys::lockout(slot.bucket, series, &slot.field);
        let (ck, xk, mk, pk, ek, fk) = (
            k.codes(),
            k.exchanges(),
            k.meta(),
            k.pending(),
            k.events(),
            k.preferences(),
        );
        let trim = self.trim();
        let prefix = ExchangeLoc::id_prefix(series, &req.code.digest);
        let (rc, v) = self
            .run(
                &SCRIPTS.claim_code,
                Some(slot.bucket),
                &[&ck, &xk, &mk, &lk, &pk, &ek, &fk],
                |i| {
                    i.arg(now.0)
                        .arg(&slot.field[..])
                        .arg(&req.login_key.0[..8])
                        .arg(&req.request.0[..])
                        .arg(&req.fingerprint.0[..])
                        .arg(req.option.as_str())
                        .arg(req.contact.as_ref().map(|d| &d.0[..]).unwrap_or(b""))
                        .arg(codec::prefs_bits(req.preferences))
                        .arg(&req.lease.holder)
                        .arg(req.lease.until.0)
                        .arg(info.campaign.spec.expire_time.0)
                        .arg(info.campaign.version)
                        .arg(&info.voided)
                        .arg(self.retention())
                        .arg(self.config.lockout_threshold)
                        .arg(ms(self.config.lockout_duration))
                        .arg(&prefix)
                        .arg(trim)
                        .arg(crate::MAX_FAILED_EXCHANGES);
                },
            )
            .await?;
        match rc {
            // The new record is what was asked for: the script answers only
            // what the caller cannot know (sequence, batch ordinal, serial).
            Rc::Ok => {
                let [_, seq, ord, serial] = v.as_slice() else {
                    return Err(internal("claim reply is not {0, seq, ord, serial}"));
                };
                let seq = u16::try_from(int(seq)?).map_err(internal)?;
                let id = ExchangeLoc::id(series, &req.code.digest, seq);
                Ok(ClaimOutcome::Claimed(ExchangeRecord::claimed(
                    req,
                    id,
                    now,
                    u32::try_from(int(ord)?).map_err(internal)?,
                    u32::try_from(int(serial)?).map_err(internal)?,
                )))
            }
            Rc::Existing => {
                if v.len() < 2 + codec::RECORD_MIN_LEN {
                    return Err(internal("short claim reply"));
                }
                let seq = u16::try_from(int(&v[1])?).map_err(internal)?;
                let id = ExchangeLoc::id(series, &req.code.digest, seq);
                Ok(ClaimOutcome::Existing(codec::exchange(
                    &v[2..],
                    id,
                    series,
                )?))
            }
            rc => Err(refused(rc, &v)),
        }
    }

    async fn latest_exchange(
        &self,
        code: CodeRef,
        login_key: Digest,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        self.verify(code, login_key, now)
            .await?
            .latest_exchange
            .ok_or(LedgerError::Refused(Refusal::ExchangeNotFound))
    }

    async fn get_exchange(&self, id: &ExchangeId) -> Result<Option<ExchangeRecord>, LedgerError> {
        match ExchangeLoc::parse(id) {
            Some(loc) => self.read_exchange(&loc).await,
            None => Ok(None),
        }
    }

    async fn begin_attempt(
        &self,
        id: &ExchangeId,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        self.run_exchange_script(&SCRIPTS.begin_attempt, id, now, |i| {
            i.arg(&lease.holder).arg(lease.until.0);
        })
        .await
    }

    async fn defer_attempt(
        &self,
        id: &ExchangeId,
        next_attempt_time: Timestamp,
        park: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        self.run_exchange_script(&SCRIPTS.defer_attempt, id, now, |i| {
            i.arg(next_attempt_time.0).arg(if park { "1" } else { "0" });
        })
        .await
    }

    async fn complete(
        &self,
        id: &ExchangeId,
        sealed_deliverable: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        self.run_exchange_script(&SCRIPTS.complete_exchange, id, now, |i| {
            i.arg(if sealed_deliverable.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(sealed_deliverable.as_deref().unwrap_or(b""));
        })
        .await
    }

    async fn release(
        &self,
        id: &ExchangeId,
        reason: &str,
        retryable: bool,
        now: Timestamp,
    ) -> Result<ExchangeRecord, LedgerError> {
        self.run_exchange_script(&SCRIPTS.release_exchange, id, now, |i| {
            i.arg(reason).arg(if retryable { "1" } else { "0" });
        })
        .await
    }

    async fn list_pending(
        &self,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError> {
        let (ids, next) = self
            .page_buckets(keys::pending, created_before.0, cursor, limit)
            .await?;
        Ok(Page {
            items: self.exchanges_by_id(ids).await?,
            next,
        })
    }

    async fn list_preferences(
        &self,
        campaign: &CampaignId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<ExchangeRecord>, LedgerError> {
        let info = self
            .load_campaign(campaign)
            .await?
            .ok_or(LedgerError::Refused(Refusal::CampaignNotFound))?;
        let series = info.campaign.series.index();
        let (ids, next) = self
            .page_buckets(|b| keys::preferences(b, series), i64::MAX, cursor, limit)
            .await?;
        // Ids whose exchange is gone (purged past retention by a script
        // that does not hold the index's key; the index then goes by its
        // TTL or the next sweep) are skipped.
        Ok(Page {
            items: self.exchanges_by_id(ids).await?,
            next,
        })
    }

    async fn batch_by_ordinal(
        &self,
        campaign: &CampaignId,
        ordinal: u32,
    ) -> Result<Option<Batch>, LedgerError> {
        let Some(info) = self.load_campaign(campaign).await? else {
            return Ok(None);
        };
        let id: Option<String> = self
            .read(
                "HGET",
                redis::cmd("HGET")
                    .arg(global::batch_ordinals(campaign))
                    .arg(ordinal),
            )
            .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let id = BatchId::parse("batch", &id).map_err(|e| internal(e.description))?;
        self.read_batch(&info, &id, None).await
    }

    async fn sweep(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<SweepOutcome, LedgerError> {
        let info = self
            .load_campaign(campaign)
            .await?
            .ok_or(LedgerError::Refused(Refusal::CampaignNotFound))?;
        let purge_due = info.campaign.spec.expire_time.plus(self.config.retention);
        if now < info.campaign.spec.expire_time {
            return Ok(SweepOutcome {
                expired: 0,
                buckets: 0,
                purged: None,
                purge_due,
            });
        }
        let trim = self.trim();
        let c = &info.campaign;
        let voided = &info.voided;
        let counts = self
            .each_bucket(|b| async move {
                let k = BucketKeys::new(b, c.series);
                let (mk, ek) = (k.meta(), k.events());
                let (_, v) = self
                    .run(&SCRIPTS.sweep_expired, Some(b), &[&mk, &ek], |i| {
                        i.arg(now.0)
                            .arg(c.spec.expire_time.0)
                            .arg(c.version)
                            .arg(voided)
                            .arg(trim);
                    })
                    .await?;
                int(v.get(1).ok_or_else(|| internal("short sweep reply"))?)
            })
            .await?;
        let purged = if now >= purge_due || info.purged.is_some() {
            self.purge(c, now).await?
        } else {
            None
        };
        Ok(SweepOutcome {
            expired: counts.iter().sum(),
            buckets: u64::from(BUCKETS),
            purged,
            purge_due,
        })
    }

    async fn counts(
        &self,
        campaign: &CampaignId,
        now: Timestamp,
    ) -> Result<CampaignCounts, LedgerError> {
        let info = self
            .load_campaign(campaign)
            .await?
            .ok_or(LedgerError::Refused(Refusal::CampaignNotFound))?;
        let c = &info.campaign;
        let cmds = (0..BUCKETS)
            .map(|b| {
                redis::cmd("HGETALL")
                    .arg(BucketKeys::new(b, c.series).meta())
                    .to_owned()
            })
            .collect();
        let expired_now = now >= c.spec.expire_time;
        let mut out = CampaignCounts {
            purge_time: info.purged.map(|(t, _)| t),
            ..CampaignCounts::default()
        };
        let mut opt: HashMap<String, (i64, i64)> = HashMap::new();
        for v in self.pipelined(cmds).await? {
            let m: HashMap<String, String> =
                redis::from_redis_value(v).map_err(|e| internal(e.to_string()))?;
            let get = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            out.issued += get("n");
            out.pending += get("p");
            out.redeemed += get("r");
            for (k, v) in &m {
                let n: i64 = v.parse().unwrap_or(0);
                if let Some(ord) = k.strip_prefix("bl:") {
                    let voided = m.contains_key(&format!("v:{ord}"))
                        || info.voided.contains(&format!(",{ord},"));
                    if voided {
                        out.void += n;
                    } else if expired_now {
                        out.expired += n;
                    } else {
                        out.active += n;
                    }
                } else if let Some(o) = k.strip_prefix("or:") {
                    opt.entry(o.to_owned()).or_default().0 += n;
                } else if let Some(o) = k.strip_prefix("op:") {
                    opt.entry(o.to_owned()).or_default().1 += n;
                }
            }
        }
        out.by_option = c
            .spec
            .options
            .iter()
            .map(|o| {
                let (r, p) = opt.get(o.id.as_str()).copied().unwrap_or((0, 0));
                (o.id.clone(), r, p)
            })
            .collect();
        Ok(out)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<bool, LedgerError> {
        let (rc, v) = self
            .run(&SCRIPTS.acquire_lease, None, &[&global::lease(name)], |i| {
                i.arg(&lease.holder).arg(lease.until.0).arg(now.0);
            })
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        Ok(int(v.get(1).ok_or_else(|| internal("short lease reply"))?)? == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LedgerError> {
        let (rc, v) = self
            .run(&SCRIPTS.release_lease, None, &[&global::lease(name)], |i| {
                i.arg(holder);
            })
            .await?;
        if rc != Rc::Ok {
            return Err(refused(rc, &v));
        }
        Ok(())
    }

    async fn recent_events(&self, limit: usize) -> Result<Vec<Event>, LedgerError> {
        let limit = limit.max(1);
        let mut streams = vec![global::EVENTS.to_owned()];
        streams.extend((0..BUCKETS).map(keys::events));
        let cmds = streams
            .iter()
            .map(|s| {
                redis::cmd("XREVRANGE")
                    .arg(s)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .to_owned()
            })
            .collect();
        let mut all: Vec<((u64, u64), Event)> = Vec::new();
        for v in self.pipelined(cmds).await? {
            let entries: Vec<(String, Vec<(String, String)>)> =
                redis::from_redis_value(v).map_err(|e| internal(e.to_string()))?;
            for (id, fields) in entries {
                let (a, b) = id.split_once('-').unwrap_or((&id, "0"));
                let key = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
                let mut ev = Event {
                    id: id.clone(),
                    kind: String::new(),
                    time: Timestamp(0),
                    fields: Vec::new(),
                };
                for (k, val) in fields {
                    match k.as_str() {
                        "k" => ev.kind = val,
                        "t" => ev.time = Timestamp(val.parse().unwrap_or(0)),
                        _ => ev.fields.push((k, val)),
                    }
                }
                all.push((key, ev));
            }
        }
        all.sort_by(|x, y| x.0.cmp(&y.0).then_with(|| x.1.id.cmp(&y.1.id)));
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).map(|(_, e)| e).collect())
    }
}

impl RedisLedger {
    /// Forgets cached campaign records (tests; after an operator change in
    /// another process the cache lapses by itself).
    pub fn forget_cache(&self) {
        let mut c = self.cache();
        c.entries.clear();
        c.loading.clear();
        c.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use giftx_core::model::{CampaignSpec, OptionId, ProviderId, RedemptionOption};
    use giftx_core::{Currency, Money};
    use giftx_testkit::RedisServer;

    /// Calls of `command` Redis has run since the last `CONFIG RESETSTAT`.
    async fn calls(ledger: &RedisLedger, command: &str) -> u64 {
        let mut conn = ledger.pool.get(0).await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lapsed_campaign_entry_is_reloaded_once_for_every_caller_in_flight() {
        let server = RedisServer::start();
        let ledger = Arc::new(
            RedisLedger::connect(&server.url(), LedgerConfig::default())
                .await
                .unwrap(),
        );
        let spec = CampaignSpec {
            tenant: giftx_core::model::TenantId::default_tenant(),
            hmac_key: giftx_core::hash::DEFAULT_KEY_ID.to_owned(),
            id: CampaignId::parse("id", "sorry").unwrap(),
            display_name: "Apology".into(),
            owner: "owner".into(),
            face_value: Money::new(Currency::from_code("JPY").unwrap(), 500),
            expire_time: Timestamp(1_418_601_600_000),
            options: vec![RedemptionOption {
                id: OptionId::parse("o", "amazon").unwrap(),
                display_name: "Amazon".into(),
                provider: ProviderId::parse("p", "fake").unwrap(),
            }],
        };
        let c = ledger
            .create_campaign(&spec, None, Timestamp(1_400_000_000_000))
            .await
            .unwrap();
        let unknown = Series::from_index((c.series.index() + 1) % Series::COUNT).unwrap();
        for round in 0..3 {
            ledger.forget_cache();
            let mut conn = ledger.pool.get(0).await.unwrap();
            let () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..200 {
                let l = ledger.clone();
                let series = if i % 2 == 0 { c.series } else { unknown };
                set.spawn(async move { (series, l.info_by_series(series).await) });
            }
            while let Some(r) = set.join_next().await {
                let (series, info) = r.unwrap();
                let info = info.unwrap();
                if series == c.series {
                    assert_eq!(info.unwrap().campaign.spec.id, spec.id);
                } else {
                    assert!(info.is_none());
                }
            }
            // One load of the campaign for 100 callers (a caller that only
            // arrives once it is done finds the cache filled); misses are
            // shared by the callers waiting together, never cached.
            assert_eq!(calls(&ledger, "hgetall").await, 1, "round {round}");
            let hget = calls(&ledger, "hget").await;
            assert!((2..=101).contains(&hget), "round {round}: {hget} HGETs");
            // Fresh now: no Redis command at all.
            let before = calls(&ledger, "hget").await;
            assert!(ledger.info_by_series(c.series).await.unwrap().is_some());
            assert_eq!(calls(&ledger, "hget").await, before);
        }
    }

    #[tokio::test]
    async fn bulk_stores_yield_only_to_foreground_scripts() {
        let f = Foreground::new();
        assert!(!f.active(), "nothing ran yet");
        for s in BACKGROUND_SCRIPTS {
            f.note(s);
        }
        assert!(!f.active(), "issuance and lease upkeep do not count");
        f.note("claim_code");
        assert!(f.active());
        // While yielding, chunks take turns.
        let first = f.turn(false).await;
        assert!(first.is_some());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), f.turn(false))
                .await
                .is_err(),
            "a second chunk waits for the first"
        );
        drop(first);
        assert!(f.turn(false).await.is_some());
        tokio::time::sleep(FOREGROUND_WINDOW).await;
        assert!(!f.active(), "the window has passed");
    }
}
