//! What the stream tells the world about each batch: one
//! [`Observers::batch_committed`] feeds every observer — the structured log
//! line and the progress file ([`progress`]), the Prometheus metrics and the
//! stall check ([`metrics`]), the terminal's progress bar, and the running
//! totals — so a new observer is added in one place.

pub mod metrics;
pub mod progress;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Monitor;
use progress::{BacklogBar, BatchProgress, ProgressLog, Totals};

/// Every observer of the stream's batches.
#[derive(Debug)]
pub struct Observers {
    pub monitor: Arc<Monitor>,
    pub progress: ProgressLog,
    pub bar: Option<BacklogBar>,
    totals: Mutex<Totals>,
}

impl Observers {
    pub fn new(monitor: Arc<Monitor>, progress: ProgressLog, bar: Option<BacklogBar>) -> Observers {
        Observers { monitor, progress, bar, totals: Mutex::new(Totals::default()) }
    }

    /// A batch committed; `latencies` are its loaded files' end-to-end times.
    pub fn batch_committed(&self, p: &BatchProgress, latencies: &[Duration]) {
        p.log();
        self.monitor.committed(p, latencies);
        if let Some(bar) = &self.bar {
            bar.batch_done(p);
        }
        if let Err(e) = self.progress.append(p) {
            tracing::warn!(error = %e, path = %self.progress.path().display(), "cannot append to the progress file");
        }
        self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(p);
    }

    /// The totals since the stream started.
    pub fn totals(&self) -> Totals {
        self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
