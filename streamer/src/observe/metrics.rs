//! What the stream is doing, for `/health` and `/metrics`: Prometheus
//! counters, histograms and gauges (prometheus-client), and the live state
//! the stall checks need (files waiting with no commit; derived tables
//! behind). The stream and the applier update it; the HTTP side reads it.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::progress::BatchProgress;
use crate::applier::Lag;

/// The `outcome` label of the counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

fn outcome(outcome: &'static str) -> Outcome {
    Outcome { outcome }
}

/// Shared between the stream and the HTTP server.
#[derive(Debug)]
pub struct Monitor {
    registry: Registry,
    batches: Family<Outcome, Counter>,
    files: Family<Outcome, Counter>,
    rows: Family<Outcome, Counter>,
    batch_seconds: Histogram,
    latency_seconds: Histogram,
    files_pending: Gauge,
    last_commit: Gauge<f64, AtomicU64>,
    analytics_lag: Gauge<f64, AtomicU64>,
    analytics_pending: Gauge,
    applier_rounds: Counter,
    applier_batches: Counter,
    applier_seconds: Histogram,
    live: Mutex<Live>,
    stall_after: Duration,
}

#[derive(Debug)]
struct Live {
    pending: usize,
    /// When files started waiting (none are waiting: `None`).
    pending_since: Option<Instant>,
    last_commit: Option<(Instant, DateTime<Utc>)>,
    /// Connected, with the schema applied.
    ready: bool,
    /// Whether this streamer keeps the analytics (and so reports their lag).
    analytics: bool,
    lag: Lag,
}

/// The stream's side of `/health`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamHealth {
    /// Connected, with the schema applied (until then /health says 503).
    pub ready: bool,
    pub files_pending: usize,
    pub last_commit: Option<DateTime<Utc>>,
    /// Seconds files have waited with no commit (0 when none wait).
    pub waiting_secs: f64,
    pub stall_after_secs: u64,
    pub stalled: bool,
    /// Committed batches the analytics applier has not folded in yet, and
    /// the age of the oldest, in seconds (`None` with analytics off).
    pub analytics_lag: Option<Lag>,
    /// The derived tables are further behind than the stall threshold.
    pub analytics_stalled: bool,
}

impl Monitor {
    pub fn new(stall_after: Duration) -> Monitor {
        let batches = Family::<Outcome, Counter>::default();
        let files = Family::<Outcome, Counter>::default();
        let rows = Family::<Outcome, Counter>::default();
        // 5 ms … about 80 s.
        let batch_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let latency_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        let files_pending = Gauge::default();
        let last_commit = Gauge::<f64, AtomicU64>::default();
        let analytics_lag = Gauge::<f64, AtomicU64>::default();
        let analytics_pending = Gauge::default();
        let applier_rounds = Counter::default();
        let applier_batches = Counter::default();
        // 1 ms … about 16 s.
        let applier_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let mut monitor = Monitor {
            registry: Registry::default(),
            batches,
            files,
            rows,
            batch_seconds,
            latency_seconds,
            files_pending,
            last_commit,
            analytics_lag,
            analytics_pending,
            applier_rounds,
            applier_batches,
            applier_seconds,
            live: Mutex::new(Live {
                pending: 0,
                pending_since: None,
                last_commit: None,
                ready: false,
                analytics: false,
                lag: Lag::default(),
            }),
            stall_after,
        };
        monitor.register();
        monitor
    }

    /// Registers every metric, and every outcome at 0 from the start.
    fn register(&mut self) {
        self.registry.register(
            "streamer_batches",
            "Batches by outcome: committed, recovered (planned before a restart, re-run), rolled_back (an attempt rolled back and retried)",
            self.batches.clone(),
        );
        self.registry.register("streamer_files", "Files by outcome: loaded, quarantined, missing", self.files.clone());
        self.registry.register(
            "streamer_rows",
            "Input rows by outcome: inserted, updated, unchanged, duplicate, rejected",
            self.rows.clone(),
        );
        self.registry.register(
            "streamer_batch_duration_seconds",
            "Time from a batch's discovery to its commit",
            self.batch_seconds.clone(),
        );
        self.registry.register(
            "streamer_end_to_end_latency_seconds",
            "Time from a file's modification (its publication) to the commit of its batch",
            self.latency_seconds.clone(),
        );
        self.registry.register(
            "streamer_files_pending",
            "Ready files not yet committed (the batch in flight included)",
            self.files_pending.clone(),
        );
        self.registry.register(
            "streamer_last_commit_timestamp_seconds",
            "Unix time of the last batch commit (0 before the first)",
            self.last_commit.clone(),
        );
        self.registry.register(
            "streamer_analytics_lag_seconds",
            "Age of the oldest committed batch the analytics applier has not folded into the derived tables (0 when caught up)",
            self.analytics_lag.clone(),
        );
        self.registry.register(
            "streamer_analytics_pending_batches",
            "Committed batches the analytics applier has not folded in yet",
            self.analytics_pending.clone(),
        );
        self.registry.register(
            "streamer_applier_rounds",
            "Rounds of the analytics applier run by this streamer",
            self.applier_rounds.clone(),
        );
        self.registry.register(
            "streamer_applier_batches",
            "Batches folded by this streamer's analytics applier",
            self.applier_batches.clone(),
        );
        self.registry.register(
            "streamer_applier_round_duration_seconds",
            "Time of one round of the analytics applier",
            self.applier_seconds.clone(),
        );
        // Every outcome shows from the start, at 0.
        for o in ["committed", "recovered", "rolled_back"] {
            let _ = self.batches.get_or_create(&outcome(o));
        }
        for o in ["loaded", "quarantined", "missing"] {
            let _ = self.files.get_or_create(&outcome(o));
        }
        for o in ["inserted", "updated", "unchanged", "duplicate", "rejected"] {
            let _ = self.rows.get_or_create(&outcome(o));
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Files ready and not yet committed.
    pub fn set_pending(&self, n: usize) {
        self.files_pending.set(n as i64);
        let mut live = self.live();
        live.pending = n;
        if n == 0 {
            live.pending_since = None;
        } else if live.pending_since.is_none() {
            live.pending_since = Some(Instant::now());
        }
    }

    /// A batch committed; `latencies` are its loaded files' end-to-end times.
    pub fn committed(&self, p: &BatchProgress, latencies: &[Duration]) {
        self.batches.get_or_create(&outcome(if p.recovered { "recovered" } else { "committed" })).inc();
        let loaded = p.files.saturating_sub(p.files_quarantined + p.files_missing);
        for (o, n) in [("loaded", loaded), ("quarantined", p.files_quarantined), ("missing", p.files_missing)] {
            self.files.get_or_create(&outcome(o)).inc_by(n as u64);
        }
        for (o, n) in [
            ("inserted", p.inserted),
            ("updated", p.updated),
            ("unchanged", p.unchanged),
            ("duplicate", p.duplicates),
            ("rejected", p.rejected),
        ] {
            self.rows.get_or_create(&outcome(o)).inc_by(n);
        }
        self.batch_seconds.observe(p.phases.total_ms / 1000.0);
        for l in latencies {
            self.latency_seconds.observe(l.as_secs_f64());
        }
        let now = Utc::now();
        self.last_commit.set(now.timestamp_micros() as f64 / 1e6);
        self.live().last_commit = Some((Instant::now(), now));
    }

    /// The streamer has connected and applied the schema.
    pub fn ready(&self) {
        self.live().ready = true;
    }

    /// This streamer keeps the analytics: their lag is reported.
    pub fn analytics_on(&self) {
        self.live().analytics = true;
    }

    /// The analytics lag, as last read.
    pub fn applier_lag(&self, lag: Lag) {
        self.analytics_lag.set(lag.seconds);
        self.analytics_pending.set(lag.batches);
        self.live().lag = lag;
    }

    /// One applier round folded `batches` batches.
    pub fn applier_round(&self, batches: u64, took: Duration) {
        self.applier_rounds.inc();
        self.applier_batches.inc_by(batches);
        self.applier_seconds.observe(took.as_secs_f64());
    }

    /// A batch attempt was rolled back and is retried.
    pub fn rolled_back(&self) {
        self.batches.get_or_create(&outcome("rolled_back")).inc();
    }

    /// Files waiting and no commit for longer than the threshold: stalled.
    pub fn stream_health(&self) -> StreamHealth {
        let live = self.live();
        let waiting = match live.pending_since {
            // Waiting since the later of: files arrived, the last commit.
            Some(since) => {
                let since = live.last_commit.map_or(since, |(at, _)| at.max(since));
                since.elapsed()
            }
            None => Duration::ZERO,
        };
        StreamHealth {
            ready: live.ready,
            files_pending: live.pending,
            last_commit: live.last_commit.map(|(_, at)| at),
            waiting_secs: (waiting.as_secs_f64() * 1000.0).round() / 1000.0,
            stall_after_secs: self.stall_after.as_secs(),
            stalled: live.pending > 0 && waiting > self.stall_after,
            analytics_lag: live.analytics.then_some(live.lag),
            analytics_stalled: live.analytics && live.lag.seconds > self.stall_after.as_secs_f64(),
        }
    }

    /// The Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::progress::Phases;

    fn batch(recovered: bool) -> BatchProgress {
        BatchProgress {
            timestamp: Utc::now(),
            committed_at: Utc::now(),
            batch_id: 0,
            recovered,
            files: 3,
            files_quarantined: 1,
            files_missing: 0,
            input_rows: 10,
            duplicates: 1,
            rejected: 2,
            inserted: 5,
            updated: 1,
            unchanged: 1,
            chunks_inserted: 1,
            chunks_merged: 0,
            rows_merged: 0,
            keys_looked_up: 0,
            rows_per_sec: 0.0,
            phases: Phases { total_ms: 30.0, ..Phases::default() },
        }
    }

    #[test]
    fn counters_histograms_and_gauges_follow_the_batches() {
        let m = Monitor::new(Duration::from_secs(60));
        m.set_pending(4);
        m.committed(&batch(false), &[Duration::from_millis(40), Duration::from_millis(70)]);
        m.committed(&batch(true), &[]);
        m.rolled_back();
        m.set_pending(1);
        let text = m.encode();
        for line in [
            "streamer_batches_total{outcome=\"committed\"} 1",
            "streamer_batches_total{outcome=\"recovered\"} 1",
            "streamer_batches_total{outcome=\"rolled_back\"} 1",
            "streamer_files_total{outcome=\"loaded\"} 4",
            "streamer_files_total{outcome=\"quarantined\"} 2",
            "streamer_files_total{outcome=\"missing\"} 0",
            "streamer_rows_total{outcome=\"inserted\"} 10",
            "streamer_rows_total{outcome=\"rejected\"} 4",
            "streamer_batch_duration_seconds_count 2",
            "streamer_end_to_end_latency_seconds_count 2",
            "streamer_end_to_end_latency_seconds_bucket{le=\"0.04\"} 1",
            "streamer_end_to_end_latency_seconds_bucket{le=\"0.08\"} 2",
            "streamer_files_pending 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("streamer_last_commit_timestamp_seconds 1"), "{text}");
    }

    #[test]
    fn the_stream_is_stalled_only_when_files_wait_past_the_threshold() {
        let m = Monitor::new(Duration::from_millis(30));
        assert!(!m.stream_health().stalled, "nothing waits");
        m.set_pending(2);
        assert!(!m.stream_health().stalled, "files just arrived");
        std::thread::sleep(Duration::from_millis(60));
        let h = m.stream_health();
        assert!(h.stalled && h.files_pending == 2 && h.waiting_secs >= 0.03, "{h:?}");
        m.committed(&batch(false), &[]);
        assert!(!m.stream_health().stalled, "a commit is progress");
        m.set_pending(0);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!m.stream_health().stalled, "an idle stream is not stalled");
        assert_eq!(m.stream_health().analytics_lag, None, "analytics off: no lag reported");
        m.analytics_on();
        m.applier_lag(Lag { batches: 3, seconds: 0.5 });
        let h = m.stream_health();
        assert_eq!(h.analytics_lag, Some(Lag { batches: 3, seconds: 0.5 }));
        assert!(h.analytics_stalled, "half a second behind, past a 30 ms threshold");
    }
}
