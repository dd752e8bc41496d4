//! The stream: discover → register → claim → load → mark, with the roles
//! spread over tasks.
//!
//! - The control session (this task) applies the schema, holds the shared
//!   "a streamer runs" lock and the checkpoint's lock, and takes whichever
//!   of the two per-source roles is free: the registrar (lists the folder
//!   and registers ready files) and the disposer (archives, deletes or
//!   quarantines settled files). A role passes to another streamer when
//!   this one's session ends.
//! - `--loaders` loader tasks ([`crate::loader`]) each claim and load
//!   batches on their own session.
//! - The applier ([`crate::applier`]), with analytics on, folds committed
//!   batches into the derived tables.
//!
//! At start the checkpoint is reconciled with the database first: batches
//! planned before a restart are confirmed from the database or run again,
//! a checkpoint the database does not know (a new, reset or restored
//! database) is said so and re-based (the registry decides what is loaded,
//! so nothing is skipped), and a checkpoint of the release before the
//! registry seeds it with the files it had loaded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::applier::{self, Applier};
use crate::checkpoint::{Checkpoint, Offsets};
use crate::config::Config;
use crate::loader::{self, Shared};
use crate::observe::metrics::Monitor;
use crate::observe::progress::{BacklogBar, ProgressLog, Totals};
use crate::observe::Observers;
use crate::pg::describe;
use crate::watch::Discovery;
use crate::{blocking, lock, registry};

mod control;
use control::Control;

/// What a run of the stream did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub checkpoint_id: Uuid,
    pub totals: Totals,
}

/// Runs the stream until `shutdown` fires (or, with `--once`, until every
/// file present is settled and the derived tables have caught up).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data folder {}", config.data_dir.display()))?;
    let dir = config.checkpoint_dir.clone();
    let checkpoint = blocking(move || Checkpoint::open(&dir)).await??;
    let checkpoint_id = checkpoint.id();
    let progress = ProgressLog::new(&config.checkpoint_dir)
        .with_context(|| format!("cannot write progress into {}", config.checkpoint_dir.display()))?;
    info!(
        checkpoint_id = %checkpoint_id,
        data_dir = %config.data_dir.display(),
        source = %config.source,
        checkpoint_dir = %config.checkpoint_dir.display(),
        database = %config.database,
        loaders = config.loaders,
        next_batch = checkpoint.next_batch_id(),
        "streamer starting"
    );
    let monitor = Arc::new(Monitor::new(config.stall_after));
    if config.analytics {
        monitor.analytics_on();
    }
    let http_stop = CancellationToken::new();
    let http = config.http_addr.map(|addr| {
        tokio::spawn(crate::http::serve(addr, monitor.clone(), config.database.clone(), http_stop.clone()))
    });
    let bar = config.progress.then(BacklogBar::new);
    let observers = Observers::new(monitor.clone(), progress, bar);
    // Watch first: files published while the database is awaited keep
    // their close/rename hints.
    let discovery = Discovery::start(&config.data_dir, config.selection.clone(), config.file_settle, config.poll)?;
    let checkpoint = Arc::new(Mutex::new(checkpoint));

    let result = async {
        let Some(mut control) = Control::connect(&config, checkpoint_id, &shutdown).await? else {
            return Ok(None);
        };
        // A connection lost while reconciling (a server or Citus worker
        // restarting, a session timed out) is retried on a new session.
        let mut backoff = crate::pg::Backoff::new(config.max_backoff);
        let recovered = loop {
            match reconcile(&config, &mut control.client, &checkpoint, checkpoint_id).await {
                Ok(recovered) => break recovered,
                Err(e) if lost_connection(&e) => {
                    let wait = backoff.step();
                    warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "reconciling with the database failed; retrying");
                    if !crate::pause(&shutdown, wait).await || !control.reconnect(&config, &shutdown).await? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        monitor.ready();
        let (fatal, fatal_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config: config.clone(),
            checkpoint: checkpoint.clone(),
            checkpoint_id,
            observers,
            work: Notify::new(),
            committed: Arc::new(Notify::new()),
            unclaimed_recoveries: std::sync::atomic::AtomicUsize::new(recovered.len()),
            recovered: Mutex::new(recovered),
            window_seconds: control.window.seconds,
            citus: control.citus,
            fatal,
            recent: Arc::default(),
        });
        let outcome = serve(&config, control, discovery, shared.clone(), &shutdown, fatal_rx).await;
        Ok(Some((outcome, shared)))
    }
    .await;
    http_stop.cancel();
    if let Some(server) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    let summary = |totals: Totals| RunSummary { checkpoint_id, totals };
    match result {
        Err(e) => Err(e),
        Ok(None) => Ok(summary(Totals::default())),
        Ok(Some((outcome, shared))) => {
            if let Some(bar) = &shared.observers.bar {
                bar.finish();
            }
            outcome?;
            let totals = shared.observers.totals();
            totals.log_stopped();
            Ok(summary(totals))
        }
    }
}

/// Runs the loaders and the applier, and the registrar and disposer here,
/// until shutdown (or `--once` is done); then stops them.
async fn serve(
    config: &Config,
    mut control: Control,
    mut discovery: Discovery,
    shared: Arc<Shared>,
    shutdown: &CancellationToken,
    mut fatal: mpsc::UnboundedReceiver<anyhow::Error>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let loaders: Vec<_> =
        (0..config.loaders).map(|i| tokio::spawn(loader::run(shared.clone(), i, stop.clone()))).collect();
    let applier = config.analytics.then(|| {
        let applier = Applier {
            url: config.database.clone(),
            session: config.session.clone(),
            max_backoff: config.max_backoff,
            monitor: shared.observers.monitor.clone(),
            wake: shared.committed.clone(),
            citus: shared.citus,
        };
        tokio::spawn(applier.run(stop.clone()))
    });
    let result = control.run(config, &mut discovery, &shared, shutdown, &mut fatal).await;
    let caught_up = match (&result, config.once && config.analytics) {
        (Ok(()), true) => wait_for_analytics(&mut control, config, shutdown, &mut fatal).await,
        _ => Ok(()),
    };
    stop.cancel();
    for l in loaders {
        let _ = l.await;
    }
    if let Some(a) = applier {
        let _ = a.await;
    }
    // A loader that gave up while stopping still fails the run.
    if let Ok(e) = fatal.try_recv() {
        return Err(e);
    }
    result.and(caught_up)
}

/// `--once`: waits until the applier (here or in another streamer) has
/// folded every committed batch.
async fn wait_for_analytics(
    control: &mut Control,
    config: &Config,
    shutdown: &CancellationToken,
    fatal: &mut mpsc::UnboundedReceiver<anyhow::Error>,
) -> anyhow::Result<()> {
    let mut said = std::time::Instant::now();
    loop {
        match applier::lag(&control.client).await {
            Ok(lag) if lag.batches == 0 => return Ok(()),
            Ok(lag) if said.elapsed() > Duration::from_secs(10) => {
                info!(batches = lag.batches, lag_secs = lag.seconds, "waiting for the analytics applier to catch up");
                said = std::time::Instant::now();
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %describe(&e), "cannot read the analytics lag; trying again");
                control.reconnect(config, shutdown).await?;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = fatal.recv() => if let Some(e) = e { return Err(e) },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Whether an error comes from PostgreSQL and retrying can help.
fn lost_connection(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .is_some_and(|pg| crate::pg::classify(pg) == crate::pg::ErrorClass::Transient)
}

/// Confirms or queues the batches planned before a restart, re-bases a
/// checkpoint the database does not know, and seeds the registry from a
/// version-1 checkpoint. Returns the batches to run again.
async fn reconcile(
    config: &Config,
    client: &mut Client,
    checkpoint: &Arc<Mutex<Checkpoint>>,
    id: Uuid,
) -> anyhow::Result<VecDeque<Offsets>> {
    let db_last = registry::last_batch(client, id).await?;
    let (legacy, cp_last, pending) = {
        let cp = lock(checkpoint);
        (cp.legacy().cloned(), cp.last_committed(), cp.pending().cloned().collect::<Vec<_>>())
    };
    if let Some(legacy) = legacy {
        if legacy.last_committed.is_some() && db_last >= legacy.last_committed {
            let n = registry::seed_loaded(client, &config.source, &legacy.processed).await?;
            info!(files = n, "checkpoint of the release before the file registry: its loaded files seed the registry");
        }
        let cp = checkpoint.clone();
        blocking(move || lock(&cp).finish_upgrade()).await??;
    }
    if let Some(last) = cp_last.filter(|&l| db_last.is_none_or(|d| d < l)) {
        warn!(
            checkpoint_id = %id,
            checkpoint_last_batch = last,
            database_last_batch = %db_last.map_or_else(|| "none".to_owned(), |d| d.to_string()),
            "this checkpoint has committed batches this database does not have (a new, reset or restored database): \
             the database's file registry decides what is loaded, so every file it does not know is loaded again; \
             the checkpoint goes on from here"
        );
    }
    if let Some(d) = db_last {
        lock(checkpoint).continue_after(d);
    }
    let mut recovered = VecDeque::new();
    for plan in pending {
        if registry::has_batch(client, id, plan.batch_id).await? {
            info!(batch_id = plan.batch_id, "batch is in the database already; writing its commit marker");
            let history = crate::sink::committed_files(client, id, plan.batch_id).await?;
            let commit = crate::loader::from_history(plan.batch_id, history);
            let cp = checkpoint.clone();
            blocking(move || lock(&cp).commit(&commit)).await??;
        } else {
            recovered.push_back(plan);
        }
    }
    Ok(recovered)
}
