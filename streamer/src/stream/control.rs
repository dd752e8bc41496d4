//! The control session of a run and the roles it holds: the schema and
//! the shared locks at connect, then the registrar (lists the folder,
//! registers ready files) and the disposer (archives, deletes or
//! quarantines settled files), each taken when free.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::checkpoint::FileId;
use crate::config::{CleanSource, Config};
use crate::dispose::{self, Action, Folders};
use crate::loader::Shared;
use crate::pg::{classify, connect_session, describe, Backoff, ErrorClass};
use crate::sink::lock;
use crate::sink::schema::{self, SchemaError, WindowError};
use crate::watch::Discovery;
use crate::{blocking, lock, pause, registry};

/// How soon a `--once` run looks again while files are pending in other
/// streamers' batches (their commits do not notify this one).
const ONCE_POLL: Duration = Duration::from_millis(100);

/// The control session and the roles it holds.
pub(super) struct Control {
    pub(super) client: Client,
    notifications: mpsc::UnboundedReceiver<String>,
    checkpoint_id: Uuid,
    pub(super) window: schema::Window,
    /// The database is a Citus coordinator (batches and the applier fence
    /// their snapshots, see [`lock::COMMIT_FENCE`]).
    pub(super) citus: bool,
    registrar: bool,
    disposer: bool,
    /// Identities of present files the registry holds (filled when this
    /// streamer becomes the registrar).
    known: HashSet<FileId>,
    /// Names already warned about (not eligible, not regular).
    warned: HashSet<String>,
    /// [`registry::REGISTER`], prepared for the session.
    register: Statement,
}

/// Why the control session cannot be set up, by what helps.
enum SetupError {
    Transient(String),
    Fatal(anyhow::Error),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> SetupError {
        match classify(&e) {
            ErrorClass::Transient => SetupError::Transient(describe(&e)),
            _ => SetupError::Fatal(anyhow::anyhow!(describe(&e))),
        }
    }
}

impl Control {
    /// Connects and sets up the control session, waiting with backoff
    /// while PostgreSQL cannot be reached; `None` when shutdown came first.
    pub(super) async fn connect(
        config: &Config,
        checkpoint_id: Uuid,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Control>> {
        let mut backoff = Backoff::new(config.max_backoff);
        for attempt in 1u64.. {
            let connecting = connect_session(&config.database, crate::pg::APPLICATION_NAME, &config.session);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                r = tokio::time::timeout(Duration::from_secs(15), connecting) => r,
            };
            let error = match result {
                Ok(Ok((mut client, notifications))) => match tokio::select! {
                    // (The setup may wait for a killed run's session to end.)
                    _ = shutdown.cancelled() => return Ok(None),
                    r = Control::setup(config, &mut client, checkpoint_id) => r,
                } {
                    Ok((window, citus, register)) => {
                        info!(attempt, database = %config.database, "connected to PostgreSQL");
                        return Ok(Some(Control {
                            client,
                            notifications,
                            checkpoint_id,
                            window,
                            citus,
                            registrar: false,
                            disposer: false,
                            known: HashSet::new(),
                            warned: HashSet::new(),
                            register,
                        }));
                    }
                    Err(SetupError::Fatal(e)) => return Err(e),
                    Err(SetupError::Transient(e)) => e,
                },
                Ok(Err(e)) if classify(&e) != ErrorClass::Transient => {
                    return Err(anyhow::anyhow!("cannot connect to PostgreSQL: {}", describe(&e)))
                }
                Ok(Err(e)) => describe(&e),
                Err(_) => "no answer within 15 s".to_owned(),
            };
            let wait = backoff.step();
            warn!(attempt, retry_in_ms = wait.as_millis() as u64, error, "PostgreSQL is not reachable; waiting");
            if !pause(shutdown, wait).await {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The schema, the window width, the locks every streamer holds, and
    /// the notifications of new files.
    async fn setup(
        config: &Config,
        client: &mut Client,
        checkpoint_id: Uuid,
    ) -> Result<(schema::Window, bool, Statement), SetupError> {
        let migrated = schema::migrate(client).await.map_err(|e| match &e {
            SchemaError::Apply { source, .. } | SchemaError::Query { source, .. }
                if classify(source) == ErrorClass::Transient =>
            {
                SetupError::Transient(e.to_string())
            }
            _ => SetupError::Fatal(anyhow::Error::from(e).context("the database schema cannot be brought up to date")),
        })?;
        if let Some(version) = &migrated.citus {
            if migrated.distributed {
                info!(citus = %version, "Citus found: events and its co-located tables are now distributed by user_id");
            } else {
                tracing::debug!(citus = %version, "Citus layout in place");
            }
        }
        let window = schema::set_window(client, config.metrics_window_secs).await.map_err(|e| match &e {
            WindowError::Query { source, .. } if classify(source) == ErrorClass::Transient => {
                SetupError::Transient(e.to_string())
            }
            WindowError::InUse { .. } => SetupError::Fatal(
                runtime::ConfigError::new("--metrics-window/METRICS_WINDOW_SECS", e.to_string()).into(),
            ),
            WindowError::Query { .. } => SetupError::Fatal(e.into()),
        })?;
        let (class, object) = lock::STREAMERS;
        client.execute("SELECT pg_advisory_lock_shared($1, $2)", &[&class, &object]).await?;
        // This process holds the checkpoint folder's flock: a session holding
        // the lock is a killed predecessor's (its backend ends once it
        // notices: at once, or after the statement it runs, or within the
        // session timeout when its host was cut off) or one of a copy of the
        // folder (it stays).
        let patience = config.session.idle_timeout + Duration::from_secs(5);
        let waiting = std::time::Instant::now();
        let mut said = false;
        let alone = loop {
            let taken: bool =
                client.query_one(&lock::keyed(lock::CHECKPOINT), &[&checkpoint_id.to_string()]).await?.get(0);
            if taken || waiting.elapsed() >= patience {
                break taken;
            }
            if !said {
                info!(
                    %checkpoint_id,
                    wait_up_to_secs = patience.as_secs(),
                    "a session of this checkpoint is still open (a killed run's, until the server notices); waiting"
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if !alone {
            return Err(SetupError::Fatal(anyhow::anyhow!(
                "another streamer runs with checkpoint {checkpoint_id} on this database (a copied checkpoint folder?): \
                 give each streamer its own CHECKPOINT_DIR"
            )));
        }
        client.batch_execute(&format!("LISTEN {}", registry::CHANNEL)).await?;
        let register = client.prepare(registry::REGISTER).await?;
        Ok((window, migrated.citus.is_some(), register))
    }

    /// Connects again after the control session was lost (the roles went
    /// with it).
    pub(super) async fn reconnect(&mut self, config: &Config, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        match Control::connect(config, self.checkpoint_id, shutdown).await? {
            Some(fresh) => {
                if fresh.window != self.window && fresh.window.seconds != self.window.seconds {
                    anyhow::bail!(
                        "the database's metrics window width changed to {} s while this streamer was disconnected",
                        fresh.window.seconds
                    );
                }
                let warned = std::mem::take(&mut self.warned);
                *self = Control { warned, ..fresh };
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes a free role; true when it was taken now.
    async fn take(&mut self, class: i32, source: &str) -> Result<bool, tokio_postgres::Error> {
        Ok(self.client.query_one(&lock::keyed(class), &[&source]).await?.get(0))
    }

    /// The registrar and disposer loop (see the module docs).
    pub(super) async fn run(
        &mut self,
        config: &Config,
        discovery: &mut Discovery,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
        fatal: &mut mpsc::UnboundedReceiver<anyhow::Error>,
    ) -> anyhow::Result<()> {
        let mut rescan = tokio::time::interval(config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listing_backoff = Backoff::new(config.max_backoff);
        let mut db_backoff = Backoff::new(config.max_backoff);
        while !shutdown.is_cancelled() {
            if self.client.is_closed() && !self.reconnect(config, shutdown).await? {
                return Ok(());
            }
            let step = self.step(config, discovery, shared).await;
            let next_settle = match step {
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Wait(settle)) => {
                    listing_backoff = Backoff::new(config.max_backoff);
                    db_backoff = Backoff::new(config.max_backoff);
                    settle
                }
                Err(StepError::Listing(e)) => {
                    let wait = listing_backoff.step();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot list the data folder; retrying");
                    if !pause(shutdown, wait).await {
                        return Ok(());
                    }
                    if std::fs::create_dir_all(&config.data_dir).is_ok() {
                        match Discovery::start(
                            &config.data_dir,
                            config.selection.clone(),
                            config.file_settle,
                            config.poll,
                        ) {
                            Ok(fresh) => *discovery = fresh,
                            Err(e) => warn!(error = %e, "cannot watch the data folder again"),
                        }
                    }
                    continue;
                }
                Err(StepError::Database(e)) => {
                    let wait = db_backoff.step();
                    warn!(error = %describe(&e), retry_in_ms = wait.as_millis() as u64, "the control session failed; retrying");
                    if classify(&e) != ErrorClass::Transient && !self.client.is_closed() {
                        return Err(anyhow::anyhow!("the control session failed: {}", describe(&e)));
                    }
                    if !pause(shutdown, wait).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let settle = next_settle.unwrap_or(Duration::MAX).min(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                e = fatal.recv() => if let Some(e) = e { return Err(e) },
                _ = discovery.changed() => {}
                _ = rescan.tick() => {}
                _ = tokio::time::sleep(settle) => {}
                n = self.notifications.recv() => if n.is_some() { shared.work.notify_waiters() },
                _ = shared.committed.notified() => {}
            }
        }
        Ok(())
    }

    /// One look at the folder: register what is ready, move what is
    /// settled, and (with `--once`) tell whether everything is done.
    async fn step(&mut self, config: &Config, discovery: &Discovery, shared: &Shared) -> Result<Step, StepError> {
        let source = config.source.as_str();
        let listing = discovery.list_async().await.map_err(StepError::Listing)?;
        for (name, why) in &listing.skipped {
            if self.warned.insert(name.clone()) {
                warn!(file = %name, reason = %why, "file in the data folder never read");
            }
        }
        let present: HashSet<&str> = listing.present.iter().map(String::as_str).collect();
        self.warned.retain(|n| present.contains(n.as_str()) || listing.skipped.iter().any(|(s, _)| s == n));
        self.known.retain(|f| present.contains(f.name.as_str()));
        if !self.registrar && self.take(lock::REGISTRAR, source).await? {
            self.registrar = true;
            self.known = registry::known(&self.client, source, &listing.present).await?;
            info!(source, "this streamer registers the files of the data folder");
        }
        let mut unregistered = 0;
        if self.registrar {
            let mut new: Vec<FileId> =
                listing.ready.iter().map(|c| c.id.clone()).filter(|id| !self.known.contains(id)).collect();
            if let Some(max_age) = config.max_file_age {
                self.skip_old(source, &mut new, max_age).await?;
            }
            if !new.is_empty() {
                let n = registry::register(&self.client, &self.register, source, &new).await?;
                tracing::debug!(files = new.len(), pending = n, "files registered");
                self.known.extend(new);
                shared.work.notify_waiters();
            }
        } else if config.once {
            // Whether the registrar has registered what is ready here: asked
            // of the registry for the files this streamer has not seen there.
            let unseen: Vec<&FileId> =
                listing.ready.iter().map(|c| &c.id).filter(|id| !self.known.contains(id)).collect();
            if !unseen.is_empty() {
                let names: Vec<String> = unseen.iter().map(|id| id.name.clone()).collect();
                let found = registry::known(&self.client, source, &names).await?;
                unregistered = unseen.iter().filter(|id| !found.contains(id)).count();
                self.known.extend(found);
            }
        }
        // Pending first: every batch committed before the count is disposed of below.
        let pending = registry::pending(&self.client, source).await?;
        if !self.disposer && self.take(lock::DISPOSER, source).await? {
            self.disposer = true;
        }
        if self.disposer {
            self.dispose(config).await?;
        }
        shared.observers.monitor.set_pending(pending as usize);
        if let Some(bar) = &shared.observers.bar {
            bar.queued(pending as usize);
        }
        let recovering = !lock(&shared.recovered).is_empty();
        if config.once && listing.waiting == 0 && unregistered == 0 && pending == 0 && !recovering {
            return Ok(Step::Done);
        }
        // With --once the last pending files may be in another streamer's
        // batches, whose commits wake nobody here: look again soon, not at
        // the next rescan.
        let next = listing.next_settle;
        Ok(Step::Wait(if config.once && pending > 0 {
            Some(next.map_or(ONCE_POLL, |s| s.min(ONCE_POLL)))
        } else {
            next
        }))
    }

    /// Takes the files of `new` older than `max_age` out of it and records
    /// them as skipped, each named once in the log.
    async fn skip_old(&mut self, source: &str, new: &mut Vec<FileId>, max_age: Duration) -> Result<(), StepError> {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        let cut = now_ns.saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
        let (old, fresh): (Vec<FileId>, Vec<FileId>) = std::mem::take(new).into_iter().partition(|f| f.mtime_ns < cut);
        *new = fresh;
        if old.is_empty() {
            return Ok(());
        }
        let reason = format!("older than --max-file-age ({} s) when first seen", max_age.as_secs());
        registry::skip(&self.client, source, &old, &reason).await?;
        for f in &old {
            warn!(file = %f.name, reason = %reason, "file skipped, never loaded");
        }
        self.known.extend(old);
        Ok(())
    }

    /// Moves the settled files of the disposer's queue.
    async fn dispose(&mut self, config: &Config) -> Result<(), StepError> {
        let queue = registry::to_move(&self.client, &config.source, 200).await?;
        if queue.is_empty() {
            return Ok(());
        }
        let (data, archive, quarantine, clean) =
            (config.data_dir.clone(), config.archive_dir.clone(), config.quarantine_dir.clone(), config.clean_source);
        let done = blocking(move || {
            let folders = Folders { data: &data, archive: &archive, quarantine: &quarantine };
            queue
                .into_iter()
                .map(|f| {
                    let action = match (f.quarantined, clean) {
                        (true, _) => Some(Action::Quarantine { reason: f.reason.clone().unwrap_or_default() }),
                        (false, CleanSource::Archive) => Some(Action::Archive),
                        (false, CleanSource::Delete) => Some(Action::Delete),
                        (false, CleanSource::Off) => None,
                    };
                    if let Some(action) = action {
                        match dispose::dispose(&folders, &f.id, &action) {
                            Ok(dispose::Moved::Replaced) => {
                                warn!(file = %f.id.name, "a newer file has the name of a settled one; it was left in place")
                            }
                            Ok(_) => {}
                            // The file stays in the data folder, settled: never read again.
                            Err(e) => warn!(file = %f.id.name, error = %e, "cannot move the file after its batch committed"),
                        }
                    }
                    f.file_id
                })
                .collect::<Vec<i32>>()
        })
        .await
        .map_err(|e| StepError::Listing(crate::watch::WatchError::List { path: config.data_dir.clone(), source: std::io::Error::other(e) }))?;
        registry::moved(&self.client, &done).await?;
        Ok(())
    }
}

enum Step {
    Done,
    /// Look again by then at the latest (a file settles).
    Wait(Option<Duration>),
}

enum StepError {
    Listing(crate::watch::WatchError),
    Database(tokio_postgres::Error),
}

impl From<registry::RegistryError> for StepError {
    fn from(e: registry::RegistryError) -> StepError {
        StepError::Database(e.source)
    }
}

impl From<tokio_postgres::Error> for StepError {
    fn from(e: tokio_postgres::Error) -> StepError {
        StepError::Database(e)
    }
}
