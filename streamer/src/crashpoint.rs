//! Named points where a test can make the streamer die as a crash would:
//! `STREAMER_CRASH_AT=after_stage:0.2,after_commit:0.1` aborts the process
//! (no unwinding, no cleanup: like SIGKILL) at each named point with the
//! given probability. Unset — always, outside the kill tests — a point costs
//! one check of a value read once. The points: `after_stage` (a chunk was
//! staged), `before_commit` (the batch is merged, not committed),
//! `after_commit` (committed, no marker yet), `applier_lane` (one of the
//! applier's two lanes committed its round).

use std::sync::OnceLock;

/// The environment variable that arms the points.
pub const VARIABLE: &str = "STREAMER_CRASH_AT";

fn armed() -> &'static [(String, f64)] {
    static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(VARIABLE)
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let (name, chance) = p.trim().split_once(':').unwrap_or((p.trim(), "1"));
                Some((name.to_owned(), chance.parse().ok()?))
            })
            .filter(|(name, _)| !name.is_empty())
            .collect()
    })
}

/// Aborts the process if `point` is armed and the dice say so.
pub fn hit(point: &str) {
    let points = armed();
    if points.is_empty() {
        return;
    }
    if let Some((_, chance)) = points.iter().find(|(name, _)| name == point) {
        // A cheap random number: the clock's nanoseconds, mixed.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let roll = (u64::from(nanos) ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        if (roll as f64 / (1u64 << 53) as f64) < *chance {
            eprintln!("crash point {point} hit ({VARIABLE})");
            std::process::abort();
        }
    }
}
