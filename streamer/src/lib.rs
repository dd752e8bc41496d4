//! The streamer: exactly-once micro-batch ingest of the event files in the
//! data folder into PostgreSQL, following the batch protocol of DESIGN.md.
//!
//! This module only wires the parts together: [`watch`] finds ready files,
//! [`checkpoint`] plans batch N (`offsets/N`) before anything touches the
//! database, [`batch`] reads, validates and deduplicates with Polars, [`sink`]
//! commits the batch in one transaction, then `commits/N` is written, the
//! source files are archived, deleted or quarantined as asked, and
//! [`progress`] reports the batch.
//!
//! Failure handling: a transient database error rolls the batch back and
//! retries the same batch (same id, same files) with capped backoff, first
//! asking the load history whether the lost COMMIT went through; a bad file is
//! quarantined and the stream goes on; on shutdown the batch in flight gets a
//! grace period to commit, else it is rolled back and re-run at the next start.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod http;
pub mod monitor;
pub mod ops;
pub mod pg;
pub mod progress;
pub mod report;
pub mod sink;
pub mod watch;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::batch::{BatchRead, FileOutcome, FileSummary, SourceFile};
use crate::checkpoint::{Checkpoint, CommittedFile, Disposition, FileId, Offsets, FORMAT_VERSION};
use crate::config::redact_url;
use crate::monitor::Monitor;
use crate::progress::{ms, BacklogBar, BatchProgress, Phases, ProgressLog, Totals};
use crate::sink::{BatchMeta, Committed, FileLoad, FileStatus, Loader, SinkError};
use crate::watch::{Candidate, Discovery};

pub use config::{CleanSource, Cli, Command, RunArgs};

/// What a run of the stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub checkpoint_id: Uuid,
    pub totals: Totals,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    /// Shutdown came first: the batch is rolled back and stays pending.
    Abandoned,
}

/// Runs the stream until `shutdown` fires (or, with `--once`, until every
/// file present is processed).
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
    args.validate()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    let checkpoint_dir = args.checkpoint_dir.clone();
    let checkpoint = blocking(move || Checkpoint::open(&checkpoint_dir)).await??;
    let progress = ProgressLog::new(&args.checkpoint_dir)
        .with_context(|| format!("cannot write progress into {}", args.checkpoint_dir.display()))?;
    info!(
        checkpoint_id = %checkpoint.id(),
        data_dir = %args.data_dir.display(),
        checkpoint_dir = %args.checkpoint_dir.display(),
        database = %redact_url(args.database_url()),
        tracked_files = checkpoint.tracked_files(),
        next_batch = checkpoint.next_batch_id(),
        "streamer starting"
    );
    let monitor = Arc::new(Monitor::new(Duration::from_secs(args.stall_after)));
    // The HTTP side stops with the stream, never before it.
    let http_stop = CancellationToken::new();
    let http = args.http_addr()?.map(|addr| {
        let server = http::serve(addr, monitor.clone(), args.database_url().to_owned(), http_stop.clone());
        tokio::spawn(server)
    });
    let bar = args.progress.then(BacklogBar::new);
    let mut stream = Stream {
        url: args.database_url().to_owned(),
        args,
        shutdown,
        checkpoint: Some(checkpoint),
        client: None,
        schema_applied: false,
        progress,
        totals: Totals::default(),
        monitor,
        bar,
    };
    let result = stream.run().await;
    http_stop.cancel();
    if let Some(server) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    if let Some(bar) = &stream.bar {
        bar.finish();
    }
    result?;
    stream.totals.log_stopped();
    Ok(RunSummary { checkpoint_id: stream.checkpoint()?.id(), totals: stream.totals })
}

/// Capped exponential backoff: 100 ms, doubling, at most `max`.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max_ms: u64) -> Self {
        Backoff { next: Self::FIRST, max: Duration::from_millis(max_ms) }
    }

    /// The wait to make now; the next one is twice as long.
    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Sleeps `wait` unless `shutdown` fires first; false when it did.
async fn pause(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Runs blocking work (std::fs, Polars) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("a blocking task panicked")
}

struct Stream {
    args: RunArgs,
    url: String,
    shutdown: CancellationToken,
    /// Always `Some` outside of a blocking call that borrows it.
    checkpoint: Option<Checkpoint>,
    client: Option<Client>,
    schema_applied: bool,
    progress: ProgressLog,
    totals: Totals,
    monitor: Arc<Monitor>,
    bar: Option<BacklogBar>,
}

impl Stream {
    fn checkpoint(&self) -> anyhow::Result<&Checkpoint> {
        self.checkpoint.as_ref().context("the checkpoint is in use")
    }

    /// Runs `f` on the checkpoint in a blocking task.
    async fn with_checkpoint<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Checkpoint) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut cp = self.checkpoint.take().context("the checkpoint is in use")?;
        let (cp, out) = blocking(move || {
            let out = f(&mut cp);
            (cp, out)
        })
        .await?;
        self.checkpoint = Some(cp);
        Ok(out)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        // Watch first: files published while the database is awaited keep
        // their close/rename hints.
        let poll = self.args.poll.then(|| Duration::from_millis(self.args.poll_interval));
        let mut discovery = Discovery::start(&self.args.data_dir, self.args.file_settle(), poll)?;
        if !self.ensure_client().await? {
            return Ok(());
        }
        if let Some(last) = self.checkpoint()?.last_commit().cloned() {
            self.dispose(last.files).await?;
        }
        if let Some(plan) = self.checkpoint()?.pending().cloned() {
            if self.guarded(|s| Box::pin(s.recover(plan))).await? == Outcome::Abandoned {
                return Ok(());
            }
        }
        let mut rescan = tokio::time::interval(Duration::from_millis(self.args.rescan_interval));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_trigger = Instant::now();
        // Waits while the data folder or the checkpoint cannot be used.
        let mut retry = Backoff::new(self.args.max_backoff);
        let shutdown = self.shutdown.clone();

        // Ready files from the last listing not yet planned: a backlog is
        // listed once and drained batch by batch, not listed per batch.
        let mut queue: VecDeque<Candidate> = VecDeque::new();
        while !shutdown.is_cancelled() {
            let discovering = Instant::now();
            // Queued files were unprocessed when listed, and only this loop
            // processes files: the queue needs no second filtering.
            let mut waiting = 0;
            let mut next_settle = None;
            if queue.is_empty() {
                let listing = match discovery.list_async().await {
                    Ok(listing) => listing,
                    Err(e) => {
                        // The folder was removed (or made unreadable): say so,
                        // make it again and watch it anew.
                        let wait = retry.step();
                        warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot list the data folder; retrying");
                        if !pause(&shutdown, wait).await {
                            break;
                        }
                        if std::fs::create_dir_all(&self.args.data_dir).is_ok() {
                            match Discovery::start(&self.args.data_dir, self.args.file_settle(), poll) {
                                Ok(fresh) => discovery = fresh,
                                Err(e) => warn!(error = %e, "cannot watch the data folder again"),
                            }
                        }
                        continue;
                    }
                };
                let cp = self.checkpoint()?;
                queue = listing.ready.into_iter().filter(|c| !cp.is_processed(&c.id)).collect();
                (waiting, next_settle) = (listing.waiting, listing.next_settle);
                self.monitor.set_pending(queue.len());
                if let Some(bar) = &self.bar {
                    bar.queued(queue.len());
                }
            }
            if queue.is_empty() {
                if self.args.once && waiting == 0 {
                    break;
                }
                let settle = next_settle.unwrap_or(Duration::MAX);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = discovery.changed() => {}
                    _ = rescan.tick() => {}
                    _ = tokio::time::sleep(settle.min(Duration::from_secs(3600))) => {}
                }
                continue;
            }
            if Instant::now() < next_trigger {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(next_trigger) => {}
                }
                continue;
            }
            let files = take_batch(&mut queue, self.args.max_files_per_batch, self.args.max_bytes_per_batch);
            let plan = match self.with_checkpoint(move |cp| cp.plan(files)).await? {
                Ok(plan) => plan,
                Err(e) => {
                    // Nothing has touched the database: wait and plan again,
                    // from a fresh listing (oldest first, as before).
                    queue.clear();
                    let wait = retry.step();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write the checkpoint; the batch waits");
                    if !pause(&shutdown, wait).await {
                        break;
                    }
                    continue;
                }
            };
            retry.reset();
            let discover = discovering.elapsed();
            next_trigger = Instant::now() + self.args.trigger_interval();
            if self.guarded(|s| Box::pin(s.run_batch(plan, discover, false))).await? == Outcome::Abandoned {
                break;
            }
            self.monitor.set_pending(queue.len());
        }
        Ok(())
    }

    /// Runs a batch; once shutdown fires it gets the grace period to finish,
    /// then it is dropped (its transaction rolls back).
    async fn guarded<'a>(
        &'a mut self,
        batch: impl FnOnce(
            &'a mut Self,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Outcome>> + Send + 'a>>,
    ) -> anyhow::Result<Outcome> {
        let shutdown = self.shutdown.clone();
        let grace = Duration::from_secs(self.args.shutdown_grace);
        let mut fut = batch(self);
        tokio::select! {
            r = &mut fut => r,
            _ = shutdown.cancelled() => {
                info!(grace_secs = grace.as_secs(), "shutdown requested; finishing the batch in flight");
                match tokio::time::timeout(grace, &mut fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!("batch rolled back at shutdown; it is re-run at the next start");
                        Ok(Outcome::Abandoned)
                    }
                }
            }
        }
    }

    /// Connects (and applies the schema once) unless connected; waits with
    /// capped exponential backoff. `false` when shutdown came first.
    async fn ensure_client(&mut self) -> anyhow::Result<bool> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(true);
        }
        self.client = None;
        let mut backoff = Backoff::new(self.args.max_backoff);
        for attempt in 1u64.. {
            let connecting = tokio::time::timeout(Duration::from_secs(10), sink::connect(&self.url));
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(false),
                r = connecting => r,
            };
            let error = match result {
                Ok(Ok(mut client)) => match self.prepare(&mut client).await {
                    Ok(()) => {
                        info!(attempt, database = %redact_url(&self.url), "connected to PostgreSQL");
                        self.client = Some(client);
                        return Ok(true);
                    }
                    Err(e) if e.is_transient() => e.to_string(),
                    Err(e) => return Err(e).context("the database schema cannot be applied"),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 10 s".to_owned(),
            };
            let wait = backoff.step();
            warn!(attempt, retry_in_ms = wait.as_millis() as u64, error, "PostgreSQL is not reachable; waiting");
            if !pause(&self.shutdown, wait).await {
                return Ok(false);
            }
        }
        Ok(false)
    }

    async fn prepare(&mut self, client: &mut Client) -> Result<(), SinkError> {
        if !self.schema_applied {
            sink::apply_schema(client, self.args.analytics.then(|| self.args.metrics_window_secs())).await?;
            self.schema_applied = true;
        }
        Ok(())
    }

    /// A batch planned by an earlier run: if the database has it, only the
    /// commit marker was missing; otherwise it is run again, same files.
    async fn recover(&mut self, plan: Offsets) -> anyhow::Result<Outcome> {
        if !self.ensure_client().await? {
            return Ok(Outcome::Abandoned);
        }
        let id = self.checkpoint()?.id();
        let client = self.client.as_ref().context("connected above")?;
        let history = sink::committed_files(client, id, plan.batch_id).await?;
        if history.is_empty() {
            info!(batch_id = plan.batch_id, files = plan.files.len(), "re-running a batch planned before a restart");
            return self.run_batch(plan, Duration::ZERO, true).await;
        }
        info!(batch_id = plan.batch_id, "batch is in the database already; writing its commit marker");
        self.mark_from_history(&plan, &history).await?;
        Ok(Outcome::Committed)
    }

    /// Marks batch `plan` done with each file's outcome as the load history
    /// has it.
    async fn mark_from_history(&mut self, plan: &Offsets, history: &[sink::HistoryFile]) -> anyhow::Result<()> {
        let files = plan
            .files
            .iter()
            .map(|f| {
                let h = history.iter().find(|h| h.name == f.name);
                let status = h.map_or("loaded", |h| h.status.as_str());
                let reason = h.and_then(|h| h.reason.clone()).unwrap_or_default();
                CommittedFile { file: f.clone(), disposition: self.disposition(status, reason) }
            })
            .collect();
        self.mark(plan.batch_id, files).await
    }

    fn disposition(&self, status: &str, reason: String) -> Disposition {
        match (status, self.args.clean_source) {
            ("quarantined", _) => Disposition::Quarantine { reason },
            ("missing", _) => Disposition::Missing,
            (_, CleanSource::Off) => Disposition::Keep,
            (_, CleanSource::Archive) => Disposition::Archive,
            (_, CleanSource::Delete) => Disposition::Delete,
        }
    }

    async fn run_batch(&mut self, plan: Offsets, discover: Duration, recovered: bool) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let batch_id = plan.batch_id;
        let cp = self.checkpoint()?;
        let meta = BatchMeta {
            checkpoint_id: cp.id(),
            batch_id,
            started_at: Utc::now(),
            names: plan.files.iter().map(|f| f.name.clone()).collect(),
            analytics: self.args.analytics,
        };
        let reingest: Vec<bool> = plan.files.iter().map(|f| cp.knows_name(&f.name)).collect();
        let sources: Arc<[SourceFile]> = plan
            .files
            .iter()
            .map(|id| SourceFile { id: id.clone(), path: self.args.data_dir.join(&id.name) })
            .collect();

        // Read, deduplicate and commit, retrying the same batch (read again)
        // on transient errors.
        let mut backoff = Backoff::new(self.args.max_backoff);
        let mut attempt = 0u32;
        let (files, read, committed) = loop {
            attempt += 1;
            if !self.ensure_client().await? {
                return Ok(Outcome::Abandoned);
            }
            let client = self.client.as_mut().context("connected above")?;
            // After a failure, the lost COMMIT may have gone through.
            let history = if attempt > 1 {
                sink::committed_files(client, meta.checkpoint_id, batch_id).await
            } else {
                Ok(Vec::new())
            };
            let result = match history {
                Ok(history) if !history.is_empty() => {
                    info!(batch_id, "the lost COMMIT went through; not loading the batch again");
                    self.mark_from_history(&plan, &history).await?;
                    return Ok(Outcome::Committed);
                }
                Ok(_) => load(client, &meta, sources.clone(), self.args.chunk_bytes, &reingest).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(done) => break done,
                Err(e) => match e.downcast_ref::<SinkError>() {
                    // The next attempt finds the batch in the load history.
                    Some(s) if s.is_batch_already_loaded() => {}
                    Some(s) if s.is_transient() => {
                        self.monitor.rolled_back();
                        let wait = backoff.step();
                        warn!(batch_id, attempt, retry_in_ms = wait.as_millis() as u64, error = %s, "batch rolled back; retrying");
                        self.client = None;
                        if !pause(&self.shutdown, wait).await {
                            return Ok(Outcome::Abandoned);
                        }
                    }
                    _ => return Err(e).with_context(|| format!("batch {batch_id} failed")),
                },
            }
        };
        for f in &files {
            match f.status {
                FileStatus::Quarantined => {
                    warn!(batch_id, file = %f.file.name, reason = f.reason.as_deref().unwrap_or_default(), "file quarantined")
                }
                FileStatus::Missing => warn!(batch_id, file = %f.file.name, "file vanished before it was read"),
                FileStatus::Loaded if f.reingest => {
                    info!(batch_id, file = %f.file.name, size = f.file.size, "file changed since it was loaded; loaded it again")
                }
                FileStatus::Loaded => {}
            }
        }

        // Mark it done, then move the files as asked.
        let committed_files: Vec<CommittedFile> = files
            .iter()
            .map(|f| CommittedFile {
                file: f.file.clone(),
                disposition: self.disposition(f.status.as_str(), f.reason.clone().unwrap_or_default()),
            })
            .collect();
        self.mark(batch_id, committed_files).await?;

        let c = &committed;
        let (inserted, updated, unchanged, duplicates) =
            (c.inserted.iter().sum(), c.updated.iter().sum(), c.unchanged.iter().sum(), c.duplicates.iter().sum());
        let input_rows: u64 = files.iter().map(|f| f.rows_read).sum();
        let total = started.elapsed() + discover;
        let p = BatchProgress {
            timestamp: Utc::now(),
            batch_id,
            recovered,
            files: files.len(),
            files_quarantined: files.iter().filter(|f| f.status == FileStatus::Quarantined).count(),
            files_missing: files.iter().filter(|f| f.status == FileStatus::Missing).count(),
            input_rows,
            duplicates,
            rejected: files.iter().map(|f| f.rejected).sum(),
            inserted,
            updated,
            unchanged,
            rows_per_sec: input_rows as f64 / total.as_secs_f64().max(1e-9),
            phases: Phases {
                discover_ms: ms(discover),
                read_ms: ms(read.read),
                dedup_ms: ms(read.dedup),
                load_ms: ms(c.load),
                commit_ms: ms(c.commit),
                total_ms: ms(total),
            },
        };
        p.log();
        let now = Utc::now();
        let latencies: Vec<Duration> = files
            .iter()
            .filter(|f| f.status == FileStatus::Loaded)
            .map(|f| (now - chrono::DateTime::from_timestamp_nanos(f.file.mtime_ns)).to_std().unwrap_or_default())
            .collect();
        self.monitor.committed(&p, &latencies);
        if let Some(bar) = &self.bar {
            bar.batch_done(&p);
        }
        if let Err(e) = self.progress.append(&p) {
            warn!(error = %e, path = %self.progress.path().display(), "cannot append to the progress file");
        }
        self.totals.add(&p);
        Ok(Outcome::Committed)
    }

    /// Writes `commits/N`, compacts the log when due, and disposes of the files.
    async fn mark(&mut self, batch_id: u64, files: Vec<CommittedFile>) -> anyhow::Result<()> {
        let commit =
            checkpoint::Commit { version: FORMAT_VERSION, batch_id, committed_at: Utc::now(), files: files.clone() };
        // The batch is in the database: the marker must follow. Until it can
        // be written, nothing else happens; a stop now leaves the batch
        // pending, and the next start finds it in the load history.
        let mut backoff = Backoff::new(self.args.max_backoff);
        loop {
            let attempt = commit.clone();
            match self.with_checkpoint(move |cp| cp.commit(attempt)).await? {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.step();
                    warn!(batch_id, error = %e, retry_in_ms = wait.as_millis() as u64, "batch committed but its marker cannot be written; retrying");
                    if !pause(&self.shutdown, wait).await {
                        return Ok(());
                    }
                }
            }
        }
        self.dispose(files).await?;
        if self.checkpoint()?.wants_compaction() {
            let dir = self.args.data_dir.clone();
            let compacted = self
                .with_checkpoint(move |cp| {
                    let present = eligible_names(&dir)?;
                    cp.compact(&present).map_err(anyhow::Error::from)
                })
                .await?;
            if let Err(e) = compacted {
                // The log stays as it is; compaction is tried again later.
                warn!(error = %e, "cannot compact the checkpoint log");
            }
        }
        Ok(())
    }

    /// Archives, deletes or quarantines the files of a committed batch. Only
    /// the very file that was loaded is touched; failures are logged.
    async fn dispose(&mut self, files: Vec<CommittedFile>) -> anyhow::Result<()> {
        if files.iter().all(|f| matches!(f.disposition, Disposition::Keep | Disposition::Missing)) {
            return Ok(());
        }
        let (data, archive, quarantine) =
            (self.args.data_dir.clone(), self.args.archive_dir(), self.args.quarantine_dir());
        blocking(move || {
            for f in files {
                if let Err(e) = dispose_file(&data, &archive, &quarantine, &f) {
                    warn!(file = %f.file.name, error = %e, "cannot move the file after its batch committed");
                }
            }
        })
        .await
    }
}

/// The files of a batch, in order, within the batch limits: at least one
/// file, at most `max_files`, and no more than `max_bytes` unless a single
/// file is larger.
fn take_batch(ready: &mut VecDeque<Candidate>, max_files: usize, max_bytes: u64) -> Vec<FileId> {
    let mut bytes = 0u64;
    let mut out = Vec::new();
    while let Some(c) = ready.front() {
        if out.len() >= max_files || (!out.is_empty() && bytes.saturating_add(c.id.size) > max_bytes) {
            break;
        }
        bytes = bytes.saturating_add(c.id.size);
        if let Some(c) = ready.pop_front() {
            out.push(c.id);
        }
    }
    out
}

/// Runs [`batch::read_batch`] on a blocking thread, handing each chunk to
/// `emit` there.
async fn blocking_read(
    sources: Arc<[SourceFile]>,
    chunk_bytes: u64,
    emit: impl FnMut(batch::Chunk) -> bool + Send + 'static,
) -> anyhow::Result<BatchRead> {
    blocking(move || batch::read_batch(&sources, chunk_bytes, emit))
        .await?
        .context("reading the batch")?
        .context("the batch reader stopped early")
}

/// One attempt at a batch: the files are read on a blocking thread while the
/// chunks already read are staged, all in one transaction.
async fn load(
    client: &mut Client,
    meta: &BatchMeta,
    sources: Arc<[SourceFile]>,
    chunk_bytes: u64,
    reingest: &[bool],
) -> anyhow::Result<(Vec<FileLoad>, BatchRead, Committed)> {
    // One chunk in the channel and one being read: memory stays at a few
    // chunks whatever the batch size.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<batch::Chunk>(1);
    let reader = tokio::spawn(blocking_read(sources, chunk_bytes, move |chunk| tx.blocking_send(chunk).is_ok()));
    let mut loader = Loader::begin(client, meta).await?;
    while let Some(chunk) = rx.recv().await {
        loader.stage(&chunk.frame).await?;
        loader.reject(&chunk.rejected).await?;
    }
    let read = reader.await.context("the batch reader panicked")??;
    let files = file_loads(read.files.clone(), reingest);
    let committed = loader.finish(&files).await?;
    Ok((files, read, committed))
}

/// The load-history view of the files as read.
fn file_loads(read: Vec<FileSummary>, reingest: &[bool]) -> Vec<FileLoad> {
    read.into_iter()
        .zip(reingest)
        .map(|(f, &reingest)| {
            let mut load = FileLoad {
                file: f.id,
                status: FileStatus::Loaded,
                reason: None,
                rows_read: 0,
                duplicates: 0,
                rejected: 0,
                reingest,
            };
            match f.outcome {
                FileOutcome::Rows { rows_read, rejected, duplicates } => {
                    (load.rows_read, load.rejected, load.duplicates) = (rows_read, rejected, duplicates);
                }
                FileOutcome::Quarantine { reason } => {
                    load.status = FileStatus::Quarantined;
                    load.reason = Some(reason);
                }
                FileOutcome::Missing => {
                    load.status = FileStatus::Missing;
                    load.reason = Some("the file was gone when its batch read it".into());
                }
            }
            load
        })
        .collect()
}

fn eligible_names(dir: &Path) -> anyhow::Result<HashSet<String>> {
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        if let Some(name) = entry?.file_name().to_str() {
            if watch::eligible_name(name) {
                names.insert(name.to_owned());
            }
        }
    }
    Ok(names)
}

fn dispose_file(data: &Path, archive: &Path, quarantine: &Path, f: &CommittedFile) -> std::io::Result<()> {
    let path = data.join(&f.file.name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_file() && watch::file_id(&f.file.name, &meta) == f.file => {}
        // Gone already, or replaced by a newer file: nothing to do.
        _ => return Ok(()),
    }
    match &f.disposition {
        Disposition::Keep | Disposition::Missing => Ok(()),
        Disposition::Delete => std::fs::remove_file(&path),
        Disposition::Archive => move_into(&path, archive).map(|_| ()),
        Disposition::Quarantine { reason } => {
            let target = move_into(&path, quarantine)?;
            let mut note = target.clone().into_os_string();
            note.push(".reason");
            std::fs::write(note, format!("{reason}\n"))
        }
    }
}

/// Moves `path` into `dir` under its name (or `name.N` when taken).
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.exists() {
        let mut alt = name.clone();
        alt.push(format!(".{n}"));
        target = dir.join(alt);
        n += 1;
    }
    if std::fs::rename(path, &target).is_err() {
        // Another filesystem: copy, sync, then remove.
        std::fs::copy(path, &target)?;
        std::fs::File::open(&target)?.sync_all()?;
        std::fs::remove_file(path)?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, size: u64) -> Candidate {
        Candidate { id: FileId { name: name.into(), size, mtime_ns: 0 }, path: PathBuf::from(name) }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(500);
        let waits: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }

    #[test]
    fn batches_respect_file_and_byte_limits_but_never_starve_a_big_file() {
        let names = |v: Vec<FileId>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        let ready = VecDeque::from([cand("a", 10), cand("b", 10), cand("c", 10)]);
        assert_eq!(names(take_batch(&mut ready.clone(), 2, 1_000)), vec!["a", "b"]);
        assert_eq!(names(take_batch(&mut ready.clone(), 10, 25)), vec!["a", "b"]);
        let mut queue = VecDeque::from([cand("big", 100), cand("b", 1)]);
        assert_eq!(names(take_batch(&mut queue, 10, 25)), vec!["big"]);
        assert_eq!(names(take_batch(&mut queue, 10, 25)), vec!["b"], "the rest stays queued");
        assert!(queue.is_empty());
    }
}
