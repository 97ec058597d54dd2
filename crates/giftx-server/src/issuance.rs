//! `giftx.v1.IssuanceService`: campaigns, batches of codes, counters.
//!
//! IssueCodes is a pipeline with back-pressure, so memory stays flat
//! whatever the count:
//!
//! ```text
//! chunk n+1: generate (low-priority threads), store ─┐  in order
//! chunk n:   generate (low-priority threads), store ─┴─> bounded channel ─> gRPC stream
//! ```
//!
//! A chunk is sent only after `store_codes` returned for it, so every code
//! a client ever saw is in the ledger. When the client goes away the batch
//! is closed INCOMPLETE with the exact stored count; the batch is closed
//! COMPLETE only after the last code was handed to the transport.
//!
//! Chunks are large (262,144 codes by default: 64 per ledger bucket)
//! because each bucket's store script has a fixed cost in Redis; while a
//! chunk waits, its codes are kept as printed bytes (28 per code) and
//! become protobuf messages only as they are streamed.
//!
//! Memory and ledger growth are bounded whatever the client does:
//! at most `max_streams` (`GIFTX_MAX_ISSUE_STREAMS`) streams run at once
//! (one more is refused RESOURCE_EXHAUSTED with RetryInfo), and a stream
//! holds a *window* of `window_chunks` slots (`GIFTX_ISSUE_WINDOW_CHUNKS`):
//! a chunk takes a slot before it is generated and gives it back only
//! once its last code was handed to the transport. A client that reads
//! nothing therefore stops the stream after `window_chunks` chunks beyond
//! what the transport buffers (HTTP/2 flow control), both in giftxd's
//! memory and in the ledger.
//!
//! Issuance gives way to everything else: codes are generated on
//! low-priority threads ([`crate::background`]) and stored over the
//! ledger's bulk connections, so Exchange calls keep their latency while
//! streams run.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use giftx_core::model::{Batch, BatchId, Campaign, CampaignId, CampaignSpec, CodeState};
use giftx_core::{Code, DomainError, FieldViolation, Hasher, LoginKey, Series};
use giftx_ledger::{LedgerError, NewCode, Refusal};
use giftx_proto::v1 as pb;
use giftx_proto::v1::issuance_service_server::IssuanceService;
use giftx_provider::ProviderError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::auth::{self, Principal};
use crate::convert::{
    self, MAX_ISSUE_COUNT, batch_to_proto, campaign_name, campaign_to_proto, code_state_to_proto,
    money_to_proto, timestamp_to_proto,
};
use crate::state::AppState;
use crate::status::ApiError;

/// Default ListCampaigns page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListCampaigns page size (larger requests are coerced).
pub const MAX_PAGE_SIZE: usize = 1000;
/// Pages of all campaigns read at most to fill one tenant's page.
const MAX_TENANT_SCANS: usize = 16;
/// How many times colliding codes are regenerated before giving up.
const COLLISION_ROUNDS: usize = 8;
/// Chunks generated and stored concurrently ahead of the stream: while one
/// is stored, the next is generated (on the blocking pool, beside Redis).
/// Two keep Redis busy with the default chunk of 262,144 codes; a third
/// only costs memory. The window (`window_chunks`) bounds them further.
const PIPELINE_DEPTH: usize = 2;
/// What a caller refused for too many streams is told to wait.
const STREAMS_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The IssuanceService implementation.
#[derive(Debug, Clone)]
pub struct IssuanceApi {
    state: Arc<AppState>,
    /// One permit per IssueCodes stream that may run.
    streams: Arc<Semaphore>,
}

impl IssuanceApi {
    /// The service over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        let streams = Arc::new(Semaphore::new(state.config.issuance.max_streams));
        IssuanceApi { state, streams }
    }

    /// A stream slot, or RESOURCE_EXHAUSTED (reason
    /// `ISSUE_STREAMS_EXHAUSTED`) with RetryInfo when all are taken.
    fn stream_slot(&self) -> Result<StreamSlot, Status> {
        match self.streams.clone().try_acquire_owned() {
            Ok(permit) => {
                crate::metrics::global().issue_streams_add(1);
                Ok(StreamSlot { _permit: permit })
            }
            Err(_) => {
                crate::metrics::global().issue_stream_refused();
                let max = self.state.config.issuance.max_streams;
                tracing::info!(max, "IssueCodes refused: every stream slot is taken");
                let mut d = tonic_types::ErrorDetails::new();
                d.set_error_info(
                    "ISSUE_STREAMS_EXHAUSTED",
                    crate::status::ERROR_DOMAIN,
                    std::collections::HashMap::from([("max_streams".to_owned(), max.to_string())]),
                );
                d.set_retry_info(Some(STREAMS_RETRY));
                Err(<Status as tonic_types::StatusExt>::with_error_details(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "{max} IssueCodes streams are already running \
                         (GIFTX_MAX_ISSUE_STREAMS); retry when one has finished"
                    ),
                    d,
                ))
            }
        }
    }

    fn reply<T>(&self, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|e| self.state.status(e))
    }

    async fn create_campaign_impl(
        &self,
        p: &Principal,
        req: pb::CreateCampaignRequest,
    ) -> Result<pb::Campaign, ApiError> {
        let now = self.state.now();
        // A provider of another tenant reads as one not configured.
        let mut spec = convert::campaign_spec_from_request(&req, now, |id| {
            self.state.provider_for(p, id, false)
        })?;
        spec.tenant = p.tenant.clone();
        spec.hmac_key = self.state.keys.current_id().to_owned();
        self.check_options(&spec).await?;
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id.as_str());
        let c = match self
            .state
            .ledger
            .create_campaign(&spec, request_id, now)
            .await
        {
            Ok(c) => c,
            Err(LedgerError::Refused(Refusal::CampaignExists)) => {
                // A retry that straddles a key rotation differs from what
                // is stored in its key id only: the same campaign.
                match self.state.ledger.get_campaign(&spec.id).await? {
                    Some(c)
                        if c.spec
                            == (CampaignSpec {
                                hmac_key: c.spec.hmac_key.clone(),
                                ..spec
                            }) =>
                    {
                        c
                    }
                    _ => return Err(LedgerError::Refused(Refusal::CampaignExists).into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let c = self.state.remember_campaign(c);
        for o in &c.spec.options {
            crate::metrics::global().option_known(o.id.as_str());
        }
        tracing::info!(campaign = %c.spec.id, series = %c.series, "campaign ready");
        Ok(campaign_to_proto(&c))
    }

    /// Asks each option's provider whether it can serve the option at all
    /// ([`giftx_provider::ProviderAdapter::check_option`]): an option that
    /// would fail every exchange is refused here, naming its field.
    async fn check_options(&self, spec: &CampaignSpec) -> Result<(), ApiError> {
        let mut v = Vec::new();
        for (i, o) in spec.options.iter().enumerate() {
            let Some(adapter) = self.state.provider_set.adapters.get(&o.provider) else {
                continue;
            };
            match adapter.check_option(&spec.id).await {
                Ok(()) => {}
                Err(ProviderError::Rejected { reason }) => v.push(FieldViolation::new(
                    format!("campaign.options[{i}].provider"),
                    format!(
                        "provider {} cannot serve this option ({reason}); \
                         every exchange of it would fail",
                        o.provider
                    ),
                )),
                Err(e) => {
                    return Err(DomainError::Unavailable(format!(
                        "provider {} cannot check the option now: {e}",
                        o.provider
                    ))
                    .into());
                }
            }
        }
        if v.is_empty() { Ok(()) } else { Err(v.into()) }
    }

    async fn get_campaign_impl(
        &self,
        p: &Principal,
        req: pb::GetCampaignRequest,
    ) -> Result<pb::Campaign, ApiError> {
        let id = convert::parse_campaign_name("name", &req.name)?;
        let c = self.state.campaign_for(p, &id).await?;
        Ok(campaign_to_proto(&c))
    }

    async fn list_campaigns_impl(
        &self,
        p: &Principal,
        req: pb::ListCampaignsRequest,
    ) -> Result<pb::ListCampaignsResponse, ApiError> {
        let mut v = Vec::new();
        let size = convert::page_size("page_size", req.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            .map_err(|e| v.push(e))
            .ok();
        let cursor = convert::decode_page_token(&self.state.keys, "page_token", &req.page_token)
            .map_err(|e| v.push(e))
            .ok();
        let (Some(size), Some(mut cursor)) = (size, cursor) else {
            return Err(v.into());
        };
        // Only the caller's tenant's campaigns; a page may take several
        // of the ledger's (at most MAX_TENANT_SCANS, then a shorter page).
        let mut campaigns = Vec::new();
        for _ in 0..MAX_TENANT_SCANS {
            let page = self
                .state
                .ledger
                .list_campaigns(cursor.as_deref(), size)
                .await?;
            campaigns.extend(
                page.items
                    .iter()
                    .filter(|c| p.reaches(&c.spec.tenant))
                    .map(campaign_to_proto),
            );
            cursor = page.next;
            if cursor.is_none() || campaigns.len() >= size {
                break;
            }
        }
        Ok(pb::ListCampaignsResponse {
            campaigns,
            next_page_token: cursor
                .as_deref()
                .map(|c| convert::encode_page_token(&self.state.keys, c))
                .unwrap_or_default(),
        })
    }

    async fn get_batch_impl(
        &self,
        p: &Principal,
        req: pb::GetBatchRequest,
    ) -> Result<pb::Batch, ApiError> {
        let (c, b) = convert::parse_batch_name("name", &req.name)?;
        self.state.campaign_for(p, &c).await?;
        match self
            .state
            .ledger
            .get_batch(&c, &b, self.state.now())
            .await?
        {
            Some(batch) => Ok(batch_to_proto(&batch)),
            None => Err(giftx_core::DomainError::BatchNotFound.into()),
        }
    }

    async fn void_batch_impl(
        &self,
        p: &Principal,
        req: pb::VoidBatchRequest,
    ) -> Result<pb::Batch, ApiError> {
        let (c, b) = convert::parse_batch_name("name", &req.name)?;
        self.state.campaign_for(p, &c).await?;
        let bulk = crate::telemetry::bulk_span("void_batch");
        let batch = self
            .state
            .ledger
            .void_batch(&c, &b, self.state.now())
            .instrument(bulk.clone())
            .await?;
        bulk.record("giftx.codes", batch.issued);
        tracing::info!(campaign = %c, batch = %b, issued = batch.issued, "batch voided");
        Ok(batch_to_proto(&batch))
    }

    async fn get_campaign_stats_impl(
        &self,
        p: &Principal,
        req: pb::GetCampaignStatsRequest,
    ) -> Result<pb::CampaignStats, ApiError> {
        let id = convert::parse_campaign_name("campaign", &req.campaign)?;
        let campaign = self.state.campaign_for(p, &id).await?;
        let now = self.state.now();
        let counts = self.state.ledger.counts(&id, now).await?;
        let face = campaign.spec.face_value;
        let by_state = [
            (CodeState::Active, counts.active),
            (CodeState::Pending, counts.pending),
            (CodeState::Redeemed, counts.redeemed),
            (CodeState::Expired, counts.expired),
            (CodeState::Void, counts.void),
        ]
        .into_iter()
        .map(|(s, n)| pb::StateStats {
            state: code_state_to_proto(s) as i32,
            count: n,
            value: Some(money_to_proto(face.times(n))),
        })
        .collect();
        let by_option = campaign
            .spec
            .options
            .iter()
            .map(|o| {
                let (redeemed, pending) = counts
                    .by_option
                    .iter()
                    .find(|(id, _, _)| id == &o.id)
                    .map_or((0, 0), |&(_, r, p)| (r, p));
                pb::OptionStats {
                    option_id: o.id.to_string(),
                    redeemed_count: redeemed,
                    redeemed_value: Some(money_to_proto(face.times(redeemed))),
                    pending_count: pending,
                }
            })
            .collect();
        Ok(pb::CampaignStats {
            campaign: campaign_name(&id),
            issued_count: counts.issued,
            by_state,
            by_option,
            breakage: Some(money_to_proto(face.times(counts.expired))),
            read_time: Some(timestamp_to_proto(now)),
            purge_time: counts.purge_time.map(timestamp_to_proto),
        })
    }

    async fn issue_codes_impl(
        &self,
        p: &Principal,
        req: pb::IssueCodesRequest,
        slot: StreamSlot,
    ) -> Result<IssueStream, ApiError> {
        let mut v: Vec<FieldViolation> = Vec::new();
        let campaign_id = convert::parse_campaign_name("campaign", &req.campaign)
            .map_err(|e| v.push(e))
            .ok();
        let batch_id = BatchId::parse("batch_id", &req.batch_id)
            .map_err(|e| v.push(e))
            .ok();
        if !(1..=MAX_ISSUE_COUNT).contains(&req.count) {
            v.push(FieldViolation::new(
                "count",
                format!("must be between 1 and {MAX_ISSUE_COUNT}"),
            ));
        }
        let (Some(campaign_id), Some(batch_id), true) = (campaign_id, batch_id, v.is_empty())
        else {
            return Err(v.into());
        };
        let count = req.count.unsigned_abs();
        let campaign = self.state.campaign_for(p, &campaign_id).await?;
        // Before the batch is begun: a campaign under a key this process
        // lacks is refused without leaving an open batch behind.
        let hasher = self.state.hasher_of(&campaign)?.clone();
        let batch = self
            .state
            .ledger
            .begin_batch(&campaign_id, &batch_id, count, self.state.now())
            .await?;
        tracing::info!(campaign = %campaign_id, batch = %batch_id, count, "issuing");

        let (tx, rx) = mpsc::channel::<Msg>(1);
        let completed = Arc::new(AtomicBool::new(false));
        let job = Job {
            state: self.state.clone(),
            hasher,
            campaign,
            batch,
            count,
            chunk_size: self.state.config.issuance.chunk_size,
            window: Arc::new(Semaphore::new(self.state.config.issuance.window_chunks)),
        };
        tokio::spawn(job.run(tx, completed.clone()).in_current_span());

        let reader = Reader {
            rx,
            buf: Vec::new().into_iter(),
            chunk_slot: None,
            _slot: slot,
            done: false,
            state: self.state.clone(),
            campaign: campaign_id,
            batch: batch_id,
            completed,
        };
        Ok(Box::pin(futures::stream::unfold(reader, Reader::next)))
    }
}

/// The IssueCodes response stream.
pub type IssueStream = Pin<Box<dyn Stream<Item = Result<pb::IssuedCode, Status>> + Send>>;

/// An IssueCodes stream's place among `max_streams`: held by the
/// response stream, so it is given back when the stream ends or its
/// client goes away.
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        crate::metrics::global().issue_streams_add(-1);
    }
}

/// What the producer hands the response stream.
enum Msg {
    /// Stored codes, ready to send, with their window slot (given back
    /// once the last of them was handed to the transport).
    Codes(Vec<Printed>, OwnedSemaphorePermit),
    /// Issuing failed; the batch is already closed INCOMPLETE.
    Failed(Status),
    /// Every code was stored and queued.
    Done,
}

/// Printed length of a code (`SSRR-RRRR-RRRR-RRRC`).
const CODE_TEXT: usize = 19;
/// Printed length of a login key (`RRRR-RRRC`).
const KEY_TEXT: usize = 9;

/// One generated code as it will be sent, compactly (a chunk of codes
/// waits in memory while it is stored): printed code and login key
/// (ASCII), and serial. Becomes a `pb::IssuedCode` only as it is streamed.
#[derive(Clone, Copy)]
struct Printed {
    text: [u8; CODE_TEXT + KEY_TEXT],
    serial: i64,
}

impl Printed {
    fn to_proto(self) -> pb::IssuedCode {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        pb::IssuedCode {
            code: text(&self.text[..CODE_TEXT]),
            login_key: text(&self.text[CODE_TEXT..]),
            serial: self.serial,
        }
    }
}

/// Codes generated for one chunk: what is sent and what is stored.
struct Chunk {
    items: Vec<Printed>,
    hashes: Vec<NewCode>,
}

fn one_code(hasher: &Hasher, series: Series, serial: i64) -> Result<(Printed, NewCode), ApiError> {
    let code =
        Code::generate(series).map_err(|e| ApiError::internal(format!("CSPRNG failed: {e}")))?;
    let key =
        LoginKey::generate().map_err(|e| ApiError::internal(format!("CSPRNG failed: {e}")))?;
    let stored = NewCode {
        code: hasher.code(&code),
        login_key: hasher.login_key(&code, &key),
        serial: u32::try_from(serial).unwrap_or(u32::MAX),
    };
    let (c, k) = (code.printed(), key.printed());
    if c.len() != CODE_TEXT || k.len() != KEY_TEXT {
        return Err(ApiError::internal("unexpected printed credential length"));
    }
    let mut text = [0u8; CODE_TEXT + KEY_TEXT];
    text[..CODE_TEXT].copy_from_slice(c.as_bytes());
    text[CODE_TEXT..].copy_from_slice(k.as_bytes());
    Ok((Printed { text, serial }, stored))
}

fn generate_chunk(
    hasher: &Hasher,
    series: Series,
    first_serial: u64,
    n: usize,
) -> Result<Chunk, ApiError> {
    let mut items = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let serial = i64::try_from(first_serial + i).unwrap_or(i64::MAX);
        let (item, hash) = one_code(hasher, series, serial)?;
        items.push(item);
        hashes.push(hash);
    }
    Ok(Chunk { items, hashes })
}

/// A chunk being generated and stored: its codes and window slot.
type ChunkTask = JoinHandle<Result<(Vec<Printed>, OwnedSemaphorePermit), Stop>>;

/// Why the producer stopped early.
enum Stop {
    /// The response stream was dropped: the client went away.
    ClientGone,
    /// Something failed; the client is told.
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Failed(e)
    }
}

impl From<giftx_ledger::LedgerError> for Stop {
    fn from(e: giftx_ledger::LedgerError) -> Self {
        Stop::Failed(e.into())
    }
}

/// One IssueCodes call's producer.
#[derive(Clone)]
struct Job {
    state: Arc<AppState>,
    /// The campaign's HMAC key.
    hasher: Hasher,
    campaign: Arc<Campaign>,
    batch: Batch,
    count: u64,
    chunk_size: usize,
    /// Window slots: chunks generated but not yet handed to the transport.
    window: Arc<Semaphore>,
}

impl Job {
    async fn run(self, tx: mpsc::Sender<Msg>, completed: Arc<AtomicBool>) {
        match self.produce(&tx).await {
            Ok(()) => {
                // Everything is queued; the stream closes the batch COMPLETE
                // after the last code. If it goes away first, close it
                // INCOMPLETE here.
                tx.closed().await;
                if !completed.load(Ordering::SeqCst) {
                    self.close_incomplete("client went away before the end")
                        .await;
                }
            }
            Err(Stop::ClientGone) => {
                self.close_incomplete("client went away").await;
            }
            Err(Stop::Failed(e)) => {
                self.close_incomplete("issuing failed").await;
                let _ = tx.send(Msg::Failed(self.state.status(e))).await;
            }
        }
    }

    async fn close_incomplete(&self, why: &str) {
        let b = &self.batch;
        match self
            .state
            .ledger
            .finish_batch(&b.campaign, &b.id, false, self.state.now())
            .await
        {
            Ok(batch) => tracing::warn!(
                campaign = %b.campaign, batch = %b.id, issued = batch.issued,
                requested = batch.requested, "batch INCOMPLETE: {why}"
            ),
            Err(e) => tracing::warn!(
                campaign = %b.campaign, batch = %b.id, error = %e,
                "could not close the batch INCOMPLETE ({why}); it will read INCOMPLETE after the stall timeout"
            ),
        }
    }

    /// Generates and stores one chunk (serials `first_serial..`), on its
    /// own task so several chunks are in flight at once; hands back the
    /// codes to send (their hashes are dropped once stored).
    fn spawn_chunk(&self, first_serial: u64, n: usize, slot: OwnedSemaphorePermit) -> ChunkTask {
        let job = self.clone();
        tokio::spawn(
            async move {
                let hasher = job.hasher.clone();
                let series = job.campaign.series;
                // Low priority: streams read at full speed must not take
                // the CPU from RPCs and Redis (see crate::background).
                let mut chunk = crate::background::run(move || {
                    generate_chunk(&hasher, series, first_serial, n)
                })
                .await
                .map_err(|e| ApiError::internal(format!("code generation: {e}")))??;
                job.store(&mut chunk).await?;
                Ok((chunk.items, slot))
            }
            .in_current_span(),
        )
    }

    async fn produce(&self, tx: &mpsc::Sender<Msg>) -> Result<(), Stop> {
        let mut inflight = VecDeque::with_capacity(PIPELINE_DEPTH);
        let res = self.pipeline(tx, &mut inflight).await;
        if res.is_err() {
            // Let chunks already being stored land, so the batch's count
            // is final when it is closed.
            for handle in inflight {
                let _ = handle.await;
            }
        }
        res
    }

    async fn pipeline(
        &self,
        tx: &mpsc::Sender<Msg>,
        inflight: &mut VecDeque<ChunkTask>,
    ) -> Result<(), Stop> {
        // `queued`: codes handed to chunk tasks so far (serials 1..=queued).
        let mut queued: u64 = 0;
        loop {
            while inflight.len() < PIPELINE_DEPTH && queued < self.count {
                // A window slot first: with nothing in flight, wait for the
                // reader to give one back (or go away); otherwise take one
                // only if free, and send what is ready meanwhile.
                let slot = if inflight.is_empty() {
                    tokio::select! {
                        s = self.window.clone().acquire_owned() => s
                            .map_err(|_| ApiError::internal("issuing window closed"))?,
                        () = tx.closed() => return Err(Stop::ClientGone),
                    }
                } else {
                    match self.window.clone().try_acquire_owned() {
                        Ok(s) => s,
                        Err(_) => break,
                    }
                };
                let n = usize::try_from((self.count - queued).min(self.chunk_size as u64))
                    .unwrap_or(self.chunk_size);
                inflight.push_back(self.spawn_chunk(queued + 1, n, slot));
                queued += n as u64;
            }
            let Some(handle) = inflight.pop_front() else {
                break;
            };
            let (items, slot) = handle
                .await
                .map_err(|e| ApiError::internal(format!("code storing task: {e}")))??;
            // Chunks are sent in order, each only once stored.
            tx.send(Msg::Codes(items, slot))
                .await
                .map_err(|_| Stop::ClientGone)?;
            if tx.is_closed() {
                return Err(Stop::ClientGone);
            }
        }
        tx.send(Msg::Done).await.map_err(|_| Stop::ClientGone)
    }

    /// Stores a chunk, regenerating codes whose hash was already taken,
    /// until every code of the chunk is stored.
    async fn store(&self, chunk: &mut Chunk) -> Result<(), Stop> {
        let ledger = &self.state.ledger;
        let out = ledger
            .store_codes(&self.campaign, &self.batch, &chunk.hashes, self.state.now())
            .await?;
        let mut pending: Vec<usize> = out.collisions;
        for _ in 0..COLLISION_ROUNDS {
            if pending.is_empty() {
                return Ok(());
            }
            tracing::debug!(collisions = pending.len(), "regenerating colliding codes");
            let mut retry = Vec::with_capacity(pending.len());
            for &i in &pending {
                let (Some(item), Some(hash)) = (chunk.items.get_mut(i), chunk.hashes.get_mut(i))
                else {
                    return Err(ApiError::internal(format!(
                        "ledger reported collision index {i} outside a chunk of {}",
                        chunk.items.len()
                    ))
                    .into());
                };
                let (new_item, new_hash) =
                    one_code(&self.hasher, self.campaign.series, item.serial)?;
                *item = new_item;
                *hash = new_hash;
                retry.push(new_hash);
            }
            let out = ledger
                .store_codes(&self.campaign, &self.batch, &retry, self.state.now())
                .await?;
            // Map indexes in `retry` back to indexes in the chunk.
            pending = out
                .collisions
                .iter()
                .filter_map(|&j| pending.get(j).copied())
                .collect();
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(ApiError::internal("could not generate unique codes").into())
        }
    }
}

/// The response stream's state.
struct Reader {
    rx: mpsc::Receiver<Msg>,
    buf: std::vec::IntoIter<Printed>,
    /// The window slot of the chunk in `buf`.
    chunk_slot: Option<OwnedSemaphorePermit>,
    _slot: StreamSlot,
    done: bool,
    state: Arc<AppState>,
    campaign: CampaignId,
    batch: BatchId,
    completed: Arc<AtomicBool>,
}

impl Reader {
    async fn next(mut self) -> Option<(Result<pb::IssuedCode, Status>, Self)> {
        loop {
            if let Some(item) = self.buf.next() {
                return Some((Ok(item.to_proto()), self));
            }
            // Every code of the chunk went to the transport: its window
            // slot lets the producer store the next one.
            self.chunk_slot = None;
            if self.done {
                return None;
            }
            match self.rx.recv().await {
                Some(Msg::Codes(v, slot)) => {
                    self.buf = v.into_iter();
                    self.chunk_slot = Some(slot);
                }
                Some(Msg::Failed(status)) => {
                    self.done = true;
                    return Some((Err(status), self));
                }
                Some(Msg::Done) => {
                    self.done = true;
                    let now = self.state.now();
                    return match self
                        .state
                        .ledger
                        .finish_batch(&self.campaign, &self.batch, true, now)
                        .await
                    {
                        Ok(b) => {
                            self.completed.store(true, Ordering::SeqCst);
                            tracing::info!(campaign = %self.campaign, batch = %self.batch, issued = b.issued, "batch COMPLETE");
                            None
                        }
                        Err(e) => {
                            let status = self.state.status(e);
                            Some((Err(status), self))
                        }
                    };
                }
                None => {
                    self.done = true;
                    let status = self
                        .state
                        .status(ApiError::internal("the issuing task stopped unexpectedly"));
                    return Some((Err(status), self));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl IssuanceService for IssuanceApi {
    async fn create_campaign(
        &self,
        request: Request<pb::CreateCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(
            &request,
            format!("campaigns/{}", request.get_ref().campaign_id),
        );
        self.reply(self.create_campaign_impl(&p, request.into_inner()).await)
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::Campaign>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().name.clone());
        self.reply(self.get_campaign_impl(&p, request.into_inner()).await)
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let p = auth::principal(&request)?;
        self.reply(self.list_campaigns_impl(&p, request.into_inner()).await)
    }

    type IssueCodesStream = IssueStream;

    async fn issue_codes(
        &self,
        request: Request<pb::IssueCodesRequest>,
    ) -> Result<Response<Self::IssueCodesStream>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().campaign.clone());
        let slot = self.stream_slot()?;
        self.reply(self.issue_codes_impl(&p, request.into_inner(), slot).await)
    }

    async fn get_batch(
        &self,
        request: Request<pb::GetBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().name.clone());
        self.reply(self.get_batch_impl(&p, request.into_inner()).await)
    }

    async fn void_batch(
        &self,
        request: Request<pb::VoidBatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().name.clone());
        self.reply(self.void_batch_impl(&p, request.into_inner()).await)
    }

    async fn get_campaign_stats(
        &self,
        request: Request<pb::GetCampaignStatsRequest>,
    ) -> Result<Response<pb::CampaignStats>, Status> {
        let p = auth::principal(&request)?;
        auth::note_resource(&request, request.get_ref().campaign.clone());
        self.reply(self.get_campaign_stats_impl(&p, request.into_inner()).await)
    }
}
