//! The database schema: the numbered migrations of `db/`, compiled into the
//! binary, each applied once and in order, in one transaction under an
//! advisory lock, and recorded in `schema_migrations` with its checksum.
//!
//! Invariants:
//! - a migration already applied is never applied again; if its file has
//!   changed since (its checksum differs), the streamer refuses to start;
//! - a database migrated by a newer streamer (a version this binary does
//!   not know) is refused, never written to;
//! - 001–004 predate the version table and are idempotent: on a database of
//!   that release they are applied again (changing nothing) and recorded;
//! - on a database with the citus extension, the Citus layout
//!   (`db/citus_layout.sql`) follows the migrations, once, in a transaction
//!   of its own: `events` and its co-located tables distributed by
//!   `user_id`, the registry a reference table.

use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;

use super::lock;
use crate::pg::describe;

/// One numbered file of `db/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration { version: $version, name: $name, sql: include_str!(concat!("../../../db/", $name)) }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: [Migration; 11] = [
    migration!(1, "001_events.sql"),
    migration!(2, "002_load_history.sql"),
    migration!(3, "003_analytics.sql"),
    migration!(4, "004_reports.sql"),
    migration!(5, "005_registry.sql"),
    migration!(6, "006_rescued.sql"),
    migration!(7, "007_file_order.sql"),
    migration!(8, "008_superseded.sql"),
    migration!(9, "009_applier_lanes.sql"),
    migration!(10, "010_derived_upkeep.sql"),
    migration!(11, "011_counters_parts.sql"),
];

/// The Citus layout, applied after the migrations when the database has
/// the citus extension and `events` is not distributed yet.
pub const CITUS_LAYOUT: &str = include_str!("../../../db/citus_layout.sql");

/// The last migration written before the version table existed (they are
/// idempotent; the later ones run once).
pub const LAST_IDEMPOTENT: i32 = 4;

impl Migration {
    /// SHA-256 of the file, line ends normalised (a checkout with CRLF line
    /// ends has the same checksum).
    pub fn checksum(&self) -> String {
        let text = self.sql.replace("\r\n", "\n");
        Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why the schema cannot be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "this database was migrated by a newer streamer (schema version {found}); this streamer knows versions up to \
         {known}: run the newer streamer, or restore a database of this version"
    )]
    Newer { found: i32, known: i32 },
    #[error(
        "migration {name} has changed since it was applied to this database (checksum {applied} then, {now} now): \
         migrations are never edited once released; put the change in a new migration"
    )]
    Changed { name: &'static str, applied: String, now: String },
    #[error("applying {name} failed: {}", describe(.source))]
    Apply { name: &'static str, source: tokio_postgres::Error },
    #[error("{what} failed: {}", describe(.source))]
    Query { what: &'static str, source: tokio_postgres::Error },
}

impl SchemaError {
    /// The PostgreSQL error behind it, if any.
    pub fn pg(&self) -> Option<&tokio_postgres::Error> {
        match self {
            SchemaError::Apply { source, .. } | SchemaError::Query { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    move |source| SchemaError::Query { what, source }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied now, in order.
    pub applied: Vec<i32>,
    /// The database is a Citus cluster's coordinator (its citus version).
    pub citus: Option<String>,
    /// The Citus layout was applied now.
    pub distributed: bool,
}

/// Brings the schema up to date; see the module docs.
pub async fn migrate(client: &mut Client) -> Result<Migrated, SchemaError> {
    let tx = client.transaction().await.map_err(query("starting the schema transaction"))?;
    // No statement timeout in the schema's transactions: waiting for another
    // streamer's migration, or a migration of a big table, takes what it takes.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(query("starting the schema transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock::SCHEMA]).await.map_err(query("taking the schema lock"))?;
    // "relation … already exists, skipping" is the expected case, not news.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning; \
         CREATE TABLE IF NOT EXISTS schema_migrations (\
             version    INTEGER PRIMARY KEY, \
             name       TEXT NOT NULL, \
             checksum   TEXT NOT NULL, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(query("creating schema_migrations"))?;
    let rows = tx
        .query("SELECT version, checksum FROM schema_migrations ORDER BY version", &[])
        .await
        .map_err(query("reading schema_migrations"))?;
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let known = MIGRATIONS[MIGRATIONS.len() - 1].version;
    if let Some(&(found, _)) = applied.iter().rev().find(|(v, _)| *v > known) {
        return Err(SchemaError::Newer { found, known });
    }
    let mut out = Migrated::default();
    for m in MIGRATIONS {
        let now = m.checksum();
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, then)) if *then == now => continue,
            Some((_, then)) => return Err(SchemaError::Changed { name: m.name, applied: then.clone(), now }),
            None => {}
        }
        tx.batch_execute(m.sql).await.map_err(|source| SchemaError::Apply { name: m.name, source })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &now],
        )
        .await
        .map_err(query("recording a migration"))?;
        out.applied.push(m.version);
    }
    tx.commit().await.map_err(query("committing the schema"))?;
    distribute(client, &mut out).await?;
    Ok(out)
}

/// Applies the Citus layout when the database has the extension and
/// `events` is not distributed yet (under the schema lock, so two streamers
/// starting at once apply it once).
async fn distribute(client: &mut Client, out: &mut Migrated) -> Result<(), SchemaError> {
    out.citus = client
        .query_opt("SELECT extversion FROM pg_extension WHERE extname = 'citus'", &[])
        .await
        .map_err(query("looking for the citus extension"))?
        .map(|r| r.get(0));
    if out.citus.is_none() {
        return Ok(());
    }
    let tx = client.transaction().await.map_err(query("starting the Citus layout transaction"))?;
    // Distributing a loaded table copies it into the shards: no timeout.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .map_err(query("starting the Citus layout transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock::SCHEMA]).await.map_err(query("taking the schema lock"))?;
    let distributed = tx
        .query_opt("SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'events'::regclass", &[])
        .await
        .map_err(query("reading the Citus layout"))?
        .is_some();
    if !distributed {
        tx.batch_execute(CITUS_LAYOUT)
            .await
            .map_err(|source| SchemaError::Apply { name: "citus_layout.sql", source })?;
        tx.commit().await.map_err(query("committing the Citus layout"))?;
        out.distributed = true;
    }
    Ok(())
}

/// The metrics window width of a database, and whether the applier must
/// rebuild the windowed metrics from `events` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub seconds: i32,
    pub needs_rebuild: bool,
}

/// Why a streamer's window width cannot be used on this database.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error(
        "the database's metrics windows are {stored} s wide and this streamer was started with \
         METRICS_WINDOW_SECS={wanted} while other streamers run on it: start this one with the same width, or stop \
         them all to change it"
    )]
    InUse { stored: i32, wanted: i32 },
    #[error("{what} failed: {}", describe(.source))]
    Query { what: &'static str, source: tokio_postgres::Error },
}

/// Makes `wanted` the database's metrics window width. A database without
/// one takes it (and the applier builds the metrics from `events`); a
/// different width is changed only when no other streamer runs (none holds
/// the shared [`lock::STREAMERS`] lock), and the metrics are then rebuilt.
/// Call it before taking the shared lock on the same session.
pub async fn set_window(client: &Client, wanted: i32) -> Result<Window, WindowError> {
    let q = |what| move |source| WindowError::Query { what, source };
    client
        .execute(
            "INSERT INTO analytics_settings (window_seconds, needs_rebuild) VALUES ($1, true) ON CONFLICT (id) DO NOTHING",
            &[&wanted],
        )
        .await
        .map_err(q("writing the analytics settings"))?;
    let row = client
        .query_one("SELECT window_seconds, needs_rebuild FROM analytics_settings", &[])
        .await
        .map_err(q("reading the analytics settings"))?;
    let stored = Window { seconds: row.get(0), needs_rebuild: row.get(1) };
    if stored.seconds == wanted {
        return Ok(stored);
    }
    let (class, object) = lock::STREAMERS;
    let alone: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &object])
        .await
        .map_err(q("checking for other streamers"))?
        .get(0);
    if !alone {
        return Err(WindowError::InUse { stored: stored.seconds, wanted });
    }
    let changed = client
        .execute("UPDATE analytics_settings SET window_seconds = $1, needs_rebuild = true", &[&wanted])
        .await
        .map_err(q("changing the metrics window width"));
    let released = client
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object])
        .await
        .map_err(q("releasing the streamers lock"));
    changed?;
    released?;
    tracing::warn!(
        old_secs = stored.seconds,
        new_secs = wanted,
        "the metrics window width changed; the applier rebuilds event_metrics_minute from events"
    );
    Ok(Window { seconds: wanted, needs_rebuild: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_and_named_after_their_number() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.name.starts_with(&format!("{:03}_", m.version)), "{}", m.name);
            assert!(m.name.ends_with(".sql"));
        }
    }

    #[test]
    fn the_migrations_before_the_version_table_are_idempotent_by_construction() {
        for m in MIGRATIONS.iter().filter(|m| m.version <= LAST_IDEMPOTENT) {
            let code: String =
                m.sql.lines().map(|l| l.split("--").next().unwrap_or_default()).collect::<Vec<_>>().join(" ");
            for stmt in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                assert!(
                    stmt.contains("IF NOT EXISTS") || stmt.starts_with("CREATE OR REPLACE"),
                    "{}: a statement is not idempotent: {stmt}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn checksums_ignore_line_ends() {
        let a = Migration { version: 9, name: "009_x.sql", sql: "SELECT 1;\nSELECT 2;\n" };
        let b = Migration { version: 9, name: "009_x.sql", sql: "SELECT 1;\r\nSELECT 2;\r\n" };
        assert_eq!(a.checksum(), b.checksum());
        assert_eq!(a.checksum().len(), 64);
    }
}
