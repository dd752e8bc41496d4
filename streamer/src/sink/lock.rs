//! The advisory locks the streamers of one database coordinate with. Each
//! role with one owner at a time is a session-level lock held by the owner's
//! session: it ends with the session, so a streamer that dies (or is cut
//! off) hands its roles over within the session timeouts.
//!
//! Two-key locks `(class, object)`: `object` is 0, or `hashtext()` of the
//! source id or checkpoint id, computed by the server ([`keyed`]).

/// Serialises schema changes between streamers starting at once (one key).
pub const SCHEMA: i64 = 0x6576_656e_7473;

const CLASS: i32 = 0x7069_7065; // "pipe"

/// Held shared by every running streamer; taken exclusively only to change
/// what all of them must agree on (the metrics window width).
pub const STREAMERS: (i32, i32) = (CLASS, 0);
/// The analytics applier: one per database.
pub const APPLIER: (i32, i32) = (CLASS, 1);
/// On Citus, where a COMMIT reaches the coordinator first and the workers
/// a moment later: held shared by a batch from just before its COMMIT until
/// the COMMIT returned (every worker committed), and exclusively by the
/// applier while it takes its snapshots, so that a round never sees a batch
/// on the coordinator that a worker does not show yet (or the reverse).
pub const COMMIT_FENCE: (i32, i32) = (CLASS, 2);
/// The applier's lane 2 (`user_product_counts`): held by the applier's
/// second session through each of its lane rounds, and by the main session
/// through a whole round, so that no two rounds fold lane 2 at once (a
/// replaced applier's second session may still be ending its round).
pub const APPLIER_LANE: (i32, i32) = (CLASS, 3);
/// Registration of new files of a source: one registrar per source.
pub const REGISTRAR: i32 = CLASS + 1;
/// Archive, delete and quarantine moves of a source: one disposer per source.
pub const DISPOSER: i32 = CLASS + 2;
/// One process per checkpoint id (a copied checkpoint folder is refused).
pub const CHECKPOINT: i32 = CLASS + 3;
/// On Citus, a loader session's stage slot (object: the slot): its
/// distributed staging table `events_stage_<slot>` is the holder's alone.
pub const STAGE_SLOT: i32 = CLASS + 4;

/// `SELECT pg_try_advisory_lock(class, hashtext($1))`: true when taken.
pub fn keyed(class: i32) -> String {
    format!("SELECT pg_try_advisory_lock({class}, hashtext($1))")
}
