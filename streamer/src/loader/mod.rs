//! A loader: one of the streamer's `--loaders` tasks, each on its own
//! PostgreSQL session. It claims the oldest pending files of the source in a
//! new transaction, plans the batch in the checkpoint (`offsets/N`; the
//! first chunk is read meanwhile, and staged only once the plan is on disk),
//! reads and stages it chunk by chunk (reading the next chunk overlaps
//! staging the last), commits, marks it (`commits/N`) and reports it.
//!
//! What a failed attempt leads to, by the error's class:
//! - transient (connection, failover, serialization): roll back, wait with
//!   backoff, ask the database whether the lost COMMIT went through, run
//!   the same batch again (same id, same files);
//! - data (the server refused a value, SQLSTATE 21/22/23): the batch runs
//!   again with its first file alone; a file that fails alone is
//!   quarantined with the server's message, and the rest commits — no input
//!   fails a batch twice;
//! - timeout on every try: the batch is split the same way; a single file
//!   that times out [`TIMEOUTS`] times stops the stream with a message;
//! - fatal (authentication, permission, a missing object): the stream stops
//!   with the message.
//!
//! A file whose staged rows must not commit (rewritten while read, too many
//! rejected rows) makes the batch run again with that file settled unread.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::{self, BatchRead, FileOutcome, ReadPlan, SourceFile};
use crate::checkpoint::{Checkpoint, Offsets, PlannedFile};
use crate::config::{CleanSource, Config};
use crate::observe::Observers;
use crate::pg::{connect_session, Backoff, ErrorClass};
use crate::sink::{BatchMeta, Claim, Committed, Loader, SinkError, Stage};
use crate::{blocking, lock, pause, registry};

mod marker;
mod report;
pub(crate) use marker::from_history;
use marker::{abandon, confirm, mark, plan};
use report::report;

/// Timeouts of one single-file batch before the stream stops.
pub const TIMEOUTS: u32 = 3;

/// How long a planned batch whose files another session holds waits before
/// it tries to claim them again.
const HELD_WAIT: Duration = Duration::from_millis(50);

/// What the loaders share.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub checkpoint: Arc<Mutex<Checkpoint>>,
    pub checkpoint_id: uuid::Uuid,
    pub observers: Observers,
    /// Woken when files are registered (here or by another streamer).
    pub work: Notify,
    /// Woken after a commit: the applier and the disposer.
    pub committed: Arc<Notify>,
    /// Batches planned before a restart, to run again first.
    pub recovered: Mutex<VecDeque<Offsets>>,
    /// Recovered batches whose files are not claimed yet: until none is
    /// left, no loader claims new files (they could take a recovered
    /// batch's files, and its id would never commit).
    pub unclaimed_recoveries: std::sync::atomic::AtomicUsize,
    /// The metrics window width the database uses.
    pub window_seconds: i32,
    /// The database is a Citus coordinator: commits take the
    /// [`crate::sink::lock::COMMIT_FENCE`].
    pub citus: bool,
    /// A loader that cannot go on sends why here; the stream stops.
    pub fatal: mpsc::UnboundedSender<anyhow::Error>,
    /// The keys the loaders committed lately (`sink::RecentKeys`).
    pub recent: Arc<crate::sink::RecentKeys>,
}

/// One batch's work: which files, and what was decided about them.
#[derive(Debug, Default)]
struct Job {
    /// Its id once planned.
    batch_id: Option<u64>,
    /// The planned files; `None` before the first claim.
    files: Option<Vec<PlannedFile>>,
    /// Files settled without being read.
    forced: HashMap<i32, FileOutcome>,
    recovered: bool,
    /// A recovered batch's files are claimed (or gone).
    claimed: bool,
    timeouts: u32,
    attempt: u32,
}

impl Job {
    /// A recovered batch's files are claimed (or it needs none): new claims
    /// may go ahead once every recovered batch is there.
    fn mark_claimed(&mut self, shared: &Shared) {
        if self.recovered && !self.claimed {
            self.claimed = true;
            shared.unclaimed_recoveries.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// With the time to claim and plan it, and the batch's whole time
    /// from its claim to its COMMIT's return (boxed: the other variants
    /// are small).
    Committed(Box<Committed>, BatchRead, Duration, Duration),
    /// No file to claim.
    Nothing,
    /// A planned batch's files are all held by another session's batch:
    /// it waits for that one to end (a commit closes this plan, a rollback
    /// or the end of a dead streamer's session gives the files back).
    Held,
    /// A file must be settled unread: run again.
    Exclude(i32, FileOutcome),
    /// The plan cannot be written (the checkpoint folder is full or
    /// read-only): the claims are given back, the batch waits.
    Unplanned(anyhow::Error),
    /// The database had the batch already: only its marker was written.
    Confirmed,
    Failed(SinkError),
}

/// Runs one loader until `stop` fires (the batch in flight gets the grace
/// period first).
pub async fn run(shared: Arc<Shared>, index: usize, stop: CancellationToken) {
    let mut client: Option<(Client, Stage)> = None;
    let mut backoff = Backoff::new(shared.config.max_backoff);
    let mut job = Job::default();
    while !stop.is_cancelled() {
        match session(&shared, index, &stop, &mut client, &mut backoff).await {
            Next::Go => {}
            Next::Again => continue,
            Next::Stop => return,
        }
        let Some((c, stage)) = client.as_mut() else { continue };
        if !pick_recovered(&shared, &mut job) {
            // Another loader is claiming a recovered batch's files.
            if !pause(&stop, Duration::from_millis(20)).await {
                return;
            }
            continue;
        }
        job.attempt += 1;
        let attempt = guarded(&shared, &stop, attempt(&shared, c, stage, &mut job)).await;
        let Some(attempt) = attempt else { return };
        match attempt {
            Attempt::Nothing => {
                job = Job::default();
                backoff = Backoff::new(shared.config.max_backoff);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = shared.work.notified() => {}
                    _ = tokio::time::sleep(shared.config.rescan_interval) => {}
                }
            }
            Attempt::Committed(committed, read, discover, total) => {
                report(&shared, &job, &committed, &read, discover, total);
                job = Job::default();
                backoff = Backoff::new(shared.config.max_backoff);
                if !shared.config.trigger_interval.is_zero() && !pause(&stop, shared.config.trigger_interval).await {
                    return;
                }
            }
            Attempt::Confirmed => {
                job = Job::default();
            }
            Attempt::Held => {
                debug!(batch_id = job.batch_id, "the batch's files are held by another session; waiting");
                if !pause(&stop, HELD_WAIT).await {
                    return;
                }
            }
            Attempt::Unplanned(e) => {
                let wait = backoff.step();
                warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot write the checkpoint; the batch waits"
                );
                if !pause(&stop, wait).await {
                    return;
                }
            }
            Attempt::Exclude(file_id, outcome) => {
                if let Some(reason) = outcome.reason() {
                    warn!(batch_id = job.batch_id, file_id, reason, "a file is settled unread; the batch runs again");
                }
                job.forced.insert(file_id, outcome);
            }
            Attempt::Failed(e) => {
                if !failed(&shared, index, &stop, &mut job, &mut backoff, e, c.is_closed()).await {
                    return;
                }
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}

/// What a loader's loop does next.
enum Next {
    Go,
    Again,
    Stop,
}

/// Opens the loader's session when it has none, waiting with backoff while
/// PostgreSQL cannot be reached; a fatal error stops the stream.
async fn session(
    shared: &Shared,
    index: usize,
    stop: &CancellationToken,
    client: &mut Option<(Client, Stage)>,
    backoff: &mut Backoff,
) -> Next {
    if client.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
        return Next::Go;
    }
    match open_session(&shared.config, shared.citus, &shared.recent).await {
        Ok(c) => {
            *client = Some(c);
            Next::Go
        }
        Err(e) => {
            let wait = backoff.step();
            if e.class() == ErrorClass::Fatal {
                let _ = shared.fatal.send(anyhow::anyhow!("loader {index} cannot open its session: {e}"));
                return Next::Stop;
            }
            let why = if e.pg().is_some() {
                "PostgreSQL is not reachable; waiting"
            } else {
                "no stage slot is free; waiting"
            };
            warn!(loader = index, error = %e, retry_in_ms = wait.as_millis() as u64, "{why}");
            if pause(stop, wait).await {
                Next::Again
            } else {
                Next::Stop
            }
        }
    }
}

/// A free loader takes a batch planned before a restart, if one is left;
/// `false` while another loader still claims a recovered batch's files
/// (new claims wait for those).
fn pick_recovered(shared: &Shared, job: &mut Job) -> bool {
    if job.files.is_some() || job.batch_id.is_some() {
        return true;
    }
    let recovered = lock(&shared.recovered).pop_front();
    if let Some(plan) = recovered {
        info!(batch_id = plan.batch_id, files = plan.files.len(), "re-running a batch planned before a restart");
        *job = Job { batch_id: Some(plan.batch_id), files: Some(plan.files), recovered: true, ..Job::default() };
        return true;
    }
    shared.unclaimed_recoveries.load(std::sync::atomic::Ordering::Acquire) == 0
}

async fn open_session(
    config: &Config,
    citus: bool,
    recent: &Arc<crate::sink::RecentKeys>,
) -> Result<(Client, Stage), SinkError> {
    let (client, _) = connect_session(&config.database, crate::pg::APPLICATION_NAME, &config.session)
        .await
        .map_err(SinkError::query("opening the loader session"))?;
    let stage = crate::sink::prepare_loader_session(&client, citus).await?.with_recent_keys(recent.clone());
    Ok((client, stage))
}

/// Runs `work`; once `stop` fires it gets the grace period to finish, then
/// it is dropped (its transaction rolls back). `None` when it was dropped.
async fn guarded<T>(
    shared: &Shared,
    stop: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = stop.cancelled() => {
            let grace = shared.config.shutdown_grace;
            match tokio::time::timeout(grace, &mut work).await {
                Ok(r) => Some(r),
                Err(_) => {
                    warn!("batch rolled back at shutdown; it is re-run at the next start");
                    None
                }
            }
        }
    }
}

/// Decides what a failed attempt leads to; false when the loader stops.
async fn failed(
    shared: &Shared,
    index: usize,
    stop: &CancellationToken,
    job: &mut Job,
    backoff: &mut Backoff,
    e: SinkError,
    closed: bool,
) -> bool {
    let batch_id = job.batch_id;
    let files = job.files.as_ref().map_or(0, Vec::len);
    match e.class() {
        ErrorClass::Transient => {
            shared.observers.monitor.rolled_back();
            let wait = backoff.step();
            warn!(loader = index, batch_id, attempt = job.attempt, retry_in_ms = wait.as_millis() as u64, error = %e, "batch rolled back; retrying");
            pause(stop, wait).await
        }
        ErrorClass::Data if files > 1 => {
            warn!(batch_id, error = %e, "the database refused the batch's data; it runs again with its first file alone");
            split(shared, job).await
        }
        ErrorClass::Data => {
            let reason = format!("the database refused the file's rows: {e}");
            warn!(batch_id, reason, "file isolated and quarantined");
            if let Some(f) = job.files.as_ref().and_then(|f| f.first()) {
                job.forced.insert(f.file_id, FileOutcome::Quarantine { reason });
            }
            true
        }
        ErrorClass::Timeout if files > 1 => {
            warn!(batch_id, error = %e, "a statement of the batch timed out; it runs again with its first file alone");
            split(shared, job).await
        }
        ErrorClass::Timeout if job.timeouts + 1 < TIMEOUTS => {
            job.timeouts += 1;
            let wait = backoff.step();
            warn!(batch_id, timeouts = job.timeouts, error = %e, "a statement timed out; retrying");
            pause(stop, wait).await
        }
        class => {
            let why = if class == ErrorClass::Timeout {
                format!(
                    "batch {batch_id:?} timed out {TIMEOUTS} times with one file ({e}); raise STATEMENT_TIMEOUT_SECS \
                     (now {} s) or lower CHUNK_BYTES",
                    shared.config.session.statement_timeout.as_secs()
                )
            } else {
                format!("batch {batch_id:?} failed: {e}{}", if closed { " (the connection closed)" } else { "" })
            };
            let _ = shared.fatal.send(anyhow::anyhow!(why));
            false
        }
    }
}

/// The batch runs again with its first file alone (the others go back to
/// pending with the rollback and are claimed by later batches).
async fn split(shared: &Shared, job: &mut Job) -> bool {
    let (Some(batch_id), Some(files)) = (job.batch_id, job.files.as_mut()) else { return true };
    files.truncate(1);
    let files = files.clone();
    let checkpoint = shared.checkpoint.clone();
    match blocking(move || lock(&checkpoint).replan(batch_id, files)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let _ = shared.fatal.send(anyhow::Error::from(e).context("replanning a batch"));
            false
        }
        Err(e) => {
            let _ = shared.fatal.send(e);
            false
        }
    }
}

/// The pairs of counters a batch holds in memory (16 bytes each) before it
/// merges them, and writes them out if they still fill half of it: a
/// quarter as many as `chunk_bytes`, so at most four times a chunk's bytes
/// (1 M pairs at the default 4 MiB, more than a 64 MiB batch of generated
/// rows holds).
pub fn counters_cap(chunk_bytes: u64) -> usize {
    (chunk_bytes / 4).clamp(16, usize::MAX as u64) as usize
}

/// The batch's description and what it claims: the files of its plan when
/// it runs again, else the oldest pending files within the batch limits.
fn what_to_claim(shared: &Shared, job: &Job) -> (BatchMeta, Claim) {
    let config = &shared.config;
    let meta = BatchMeta {
        checkpoint_id: shared.checkpoint_id,
        batch_id: job.batch_id.unwrap_or_default(),
        source: config.source.clone(),
        started_at: Utc::now(),
        window_seconds: shared.window_seconds,
        fence: shared.citus,
        counters_cap: counters_cap(config.chunk_bytes),
    };
    let claim = match &job.files {
        Some(files) => Claim::Files(files.iter().map(|f| f.file_id).collect()),
        None => Claim::Next {
            files: config.max_files_per_batch.min(i32::MAX as usize) as i32,
            bytes: config.max_bytes_per_batch.min(i64::MAX as u64) as i64,
        },
    };
    (meta, claim)
}

/// One attempt at a batch, in one transaction.
async fn attempt(shared: &Shared, client: &mut Client, stage_table: &Stage, job: &mut Job) -> Attempt {
    let discovering = Instant::now();
    let config = &shared.config;
    // After a failure the lost COMMIT may have gone through.
    if let (Some(batch_id), true) = (job.batch_id, job.attempt > 1 || job.recovered) {
        match registry::has_batch(client, shared.checkpoint_id, batch_id).await {
            Ok(true) => {
                job.mark_claimed(shared);
                return confirm(shared, client, batch_id).await;
            }
            Ok(false) => {}
            Err(e) => return Attempt::Failed(SinkError::Query { what: e.what, source: e.source }),
        }
    }
    let (meta, claim) = what_to_claim(shared, job);
    let begun = Instant::now();
    let mut loader = match Loader::begin(client, stage_table, meta, claim).await {
        Ok(loader) => loader,
        Err(e) => return Attempt::Failed(e),
    };
    if loader.files().is_empty() {
        let _ = loader.rollback().await;
        if let (Some(batch_id), Some(files)) = (job.batch_id, job.files.as_ref()) {
            // Its files are another session's: held (that batch is in flight,
            // or its streamer died and the session has not ended yet), or
            // loaded by it meanwhile. Held, the plan waits (a recovered one
            // keeps new claims waiting too); loaded, the plan is closed.
            let ids: Vec<i32> = files.iter().map(|f| f.file_id).collect();
            match registry::count_pending(client, &ids).await {
                Ok(0) => abandon(shared, batch_id).await,
                Ok(_) => return Attempt::Held,
                Err(e) => return Attempt::Failed(SinkError::Query { what: e.what, source: e.source }),
            }
        }
        job.mark_claimed(shared);
        return Attempt::Nothing;
    }
    job.mark_claimed(shared);
    let planned: Vec<PlannedFile> =
        loader.files().iter().map(|f| PlannedFile { file_id: f.file_id, id: f.id.clone() }).collect();
    let forced: Vec<Option<FileOutcome>> = loader.files().iter().map(|f| job.forced.get(&f.file_id).cloned()).collect();
    let sources: Vec<SourceFile> = loader
        .files()
        .iter()
        .map(|f| SourceFile { id: f.id.clone(), path: config.data_dir.join(&f.id.name) })
        .collect();
    // The first chunk is read while the plan goes to disk and the batch is
    // numbered in the database; nothing is staged before the plan is there.
    let reading = start_read(shared, sources, forced);
    let (planned, numbered) = tokio::join!(plan(shared, job, planned), loader.number());
    let batch_id = match planned {
        Ok(id) => id,
        Err(e) => {
            drop(reading);
            let _ = loader.rollback().await;
            return Attempt::Unplanned(e);
        }
    };
    if let Err(e) = numbered {
        return Attempt::Failed(e);
    }
    loader.set_batch_id(batch_id);
    let discover = discovering.elapsed();
    let read = match stage(&mut loader, reading).await {
        Ok(read) => read,
        Err(e) => return Attempt::Failed(e),
    };
    if let Some((index, outcome)) = read.excluded.clone() {
        let file_id = loader.files()[index].file_id;
        let _ = loader.rollback().await;
        return Attempt::Exclude(file_id, outcome);
    }
    crate::crashpoint::hit("before_commit");
    let clean = config.clean_source;
    let finished = loader.finish(&read.files, |o| to_move(clean, o)).await;
    let total = begun.elapsed();
    if shared.citus {
        crate::sink::release_fence(client).await;
    }
    match finished {
        Ok(committed) => {
            crate::crashpoint::hit("after_commit");
            job.batch_id = Some(batch_id);
            if let Err(e) = mark(shared, batch_id, &committed).await {
                let _ = shared.fatal.send(e);
            }
            Attempt::Committed(Box::new(committed), read, discover, total)
        }
        Err(e) if e.is_batch_already_committed() => confirm(shared, client, batch_id).await,
        Err(e) => Attempt::Failed(e),
    }
}

/// Whether a settled file is to be moved out of the data folder.
pub fn to_move(clean: CleanSource, outcome: &FileOutcome) -> bool {
    match outcome {
        FileOutcome::Rows { .. } => clean != CleanSource::Off,
        FileOutcome::Quarantine { .. } => true,
        FileOutcome::Missing | FileOutcome::Changed { .. } => false,
    }
}

/// A batch's read on its blocking thread: the chunks it hands on, and the
/// channel the loader tells it on that it is done with one.
struct Reading {
    chunks: mpsc::Receiver<batch::Chunk>,
    staged: std::sync::mpsc::Sender<()>,
    reader: tokio::task::JoinHandle<Result<Option<BatchRead>, polars::error::PolarsError>>,
}

/// Starts reading the batch on a blocking thread: at most two chunks in
/// flight (the one being staged, and the next, being read or ready), so
/// memory stays at two chunks per loader whatever the batch size. Dropped,
/// the [`Reading`] stops the reader at its next chunk.
fn start_read(shared: &Shared, sources: Vec<SourceFile>, forced: Vec<Option<FileOutcome>>) -> Reading {
    let (tx, chunks) = mpsc::channel::<batch::Chunk>(1);
    // The loader's word that it is done with a chunk: the reader hands on
    // the next one only then.
    let (staged, staged_rx) = std::sync::mpsc::channel::<()>();
    let config = &shared.config;
    let (chunk_bytes, max_rejects, window_micros) =
        (config.chunk_bytes, config.max_rejects_per_file, config.window_micros().max(1));
    let window_micros =
        if shared.window_seconds > 0 { i64::from(shared.window_seconds) * 1_000_000 } else { window_micros };
    let reader = tokio::task::spawn_blocking(move || {
        let plan = ReadPlan { sources: &sources, forced: &forced, chunk_bytes, max_rejects, window_micros };
        let mut handed = 0u64;
        batch::read_batch(plan, |chunk| {
            // A closed channel: the loader stopped (its error is the batch's).
            if handed > 0 && staged_rx.recv().is_err() {
                return false;
            }
            handed += 1;
            tx.blocking_send(chunk).is_ok()
        })
    });
    Reading { chunks, staged, reader }
}

/// Stages and merges the chunks of the batch as they are read, so that the
/// read of the next chunk overlaps the server's work on the last.
async fn stage(loader: &mut Loader<'_>, reading: Reading) -> Result<BatchRead, SinkError> {
    let Reading { mut chunks, staged, reader } = reading;
    while let Some(mut chunk) = chunks.recv().await {
        loader.stage(&mut chunk).await?;
        drop(chunk);
        let _ = staged.send(());
        crate::crashpoint::hit("after_stage");
    }
    match reader.await {
        Ok(Ok(Some(read))) => Ok(read),
        Ok(Ok(None)) => Err(SinkError::reader("the batch reader stopped early")),
        Ok(Err(e)) => Err(SinkError::Frame(e)),
        Err(e) => Err(SinkError::reader(format!("the batch reader panicked: {e}"))),
    }
}
