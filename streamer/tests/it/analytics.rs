//! The windowed metrics and the counters datamart (db/003_analytics.sql)
//! equal their GROUP BY definitions over `events` after every batch: with
//! upserts that change a row's type, product, category and price, with
//! duplicates and bad rows, when the window width changes, and on a database
//! that had events before the analytics tables existed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::common::*;
use rand::{Rng, SeedableRng};

const CATEGORIES: [&str; 3] = ["Books", "Toys", "Garden"];

/// A file of `rows` random rows over a small key space (15 users, 4 minutes
/// of whole and half seconds), so later files overwrite earlier keys with
/// other values; about one row in 40 is invalid.
pub fn random_file(dir: &Path, name: &str, rows: usize, rng: &mut impl Rng) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut out = std::fs::File::create(&tmp).expect("test file");
    writeln!(out, "{}", contract::COLUMNS.join(",")).expect("write");
    for _ in 0..rows {
        let user = rng.random_range(1..=15);
        let millis = rng.random_range(0..480) * 500;
        let time = instant("2026-03-01T12:00:00Z") + chrono::TimeDelta::milliseconds(millis);
        let kind = if rng.random_bool(0.3) { "purchase" } else { "view" };
        let product = rng.random_range(1..=8);
        let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        let cents = rng.random_range(1..100_000);
        let price =
            if rng.random_bool(0.025) { "-1".to_owned() } else { format!("{}.{:02}", cents / 100, cents % 100) };
        writeln!(
            out,
            "{user},User {user},u{user}@example.com,{kind},{product},Product {product},{category},{price},{}",
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
        .expect("write");
    }
    drop(out);
    std::fs::rename(&tmp, &path).expect("publish");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_after_random_batches_with_upserts() -> TestResult {
    random_batches_equal_their_group_by("probe", false, false).await
}

/// The same with every join of the database's sessions hashed, as the
/// planner does for a backlog's big rounds (the small rounds above probe
/// indexes): the applier's distinct-user count then matches the touched
/// users and cells to their rows by a hash join over a scan of `events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_hashes_its_joins() -> TestResult {
    random_batches_equal_their_group_by("probe", true, false).await
}

/// The same with the distinct users counted once per touched (user,
/// window), the form a round that touches a big part of `events` takes;
/// `events` has no statistics, so the scan reads all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_counts_users_by_one_scan() -> TestResult {
    random_batches_equal_their_group_by("scan", false, false).await
}

/// The same with `events` analyzed after every round: the scan reads only
/// the rows in the round's time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_counters_equal_their_group_by_when_the_applier_scans_the_rounds_time_range() -> TestResult {
    random_batches_equal_their_group_by("scan", false, true).await
}

/// `join`: the applier's distinct-user count (`pipeline.applier_join`);
/// `hash_joins`: every join of the database's sessions hashed; `analyze`:
/// `events` analyzed after every round (the applier's scan then reads only
/// the round's time range).
async fn random_batches_equal_their_group_by(join: &str, hash_joins: bool, analyze: bool) -> TestResult {
    let mut rng = seeded_rng("ANALYTICS_SEED");
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let client = db.client().await;
    // New sessions (the streamer's) take the database's settings.
    let mut settings = vec![format!("pipeline.applier_join = '{join}'")];
    if hash_joins {
        settings.extend(["enable_nestloop = off".to_owned(), "enable_mergejoin = off".to_owned()]);
    }
    for setting in settings {
        client
            .batch_execute(&format!(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {}', current_database()); END $$",
                setting.replace('\'', "''")
            ))
            .await?;
    }
    let mut files = Vec::new();
    // At least eight rounds, and on until the upserts changed enough rows in
    // place (with a random seed, eight rounds sometimes changed only 40).
    let mut updated = 0;
    for round in 0..24 {
        if round >= 8 && updated > 50 {
            break;
        }
        for k in 0..rng.random_range(1..=3) {
            let rows = rng.random_range(20..150);
            files.push(random_file(&data, &format!("r{round:02}_{k}.csv"), rows, &mut rng));
        }
        // Several files per batch (duplicates across files) or one per batch.
        let per_batch = rng.random_range(1..=3).to_string();
        streamer::run(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", &per_batch]), Default::default())
            .await?;
        let (expected, _) = oracle(&files);
        assert!(table(&client).await == expected, "round {round}: events differs from the oracle");
        let sizes = assert_analytics_exact(&client).await;
        assert!(sizes.iter().all(|&n| n > 0), "round {round}: an analytics table is empty: {sizes:?}");
        updated = count(&client, "SELECT sum(rows_updated)::int8 FROM load_history").await;
        if analyze {
            client.batch_execute("ANALYZE events").await?;
        }
    }
    // The rounds did exercise the hard path: rows changed in place.
    assert!(updated > 50, "only {updated} rows were updated: the test lost its point");
    let windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;
    assert_eq!(windows, 4, "four minutes of data make four one-minute windows");

    // A round whose windows are apart: rows deleted by hand in the first
    // minute (the users keep other rows there) and a file in the last. The
    // scan form reads only the round's time range: it must span both.
    let deleted = client
        .execute(
            "DELETE FROM events WHERE event_id IN (SELECT min(event_id) FROM events \
             WHERE event_time < '2026-03-01T12:01:00Z' GROUP BY user_id, product_category HAVING count(*) > 1)",
            &[],
        )
        .await?;
    assert!(deleted > 0, "the first minute has users with several rows in a category");
    let last = data.join("last_minute.csv");
    let mut lines = vec![contract::COLUMNS.join(",")];
    lines.extend((1..=5).map(|u| {
        format!("{u},User {u},u{u}@example.com,view,1,Product 1,{},9.99,2026-03-01T12:03:59.{u}75Z", CATEGORIES[0])
    }));
    std::fs::write(data.join(".last.tmp"), lines.join("\n") + "\n")?;
    std::fs::rename(data.join(".last.tmp"), &last)?;
    streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE to_char(event_time, 'MS') LIKE '_75'").await, 5);
    assert_analytics_exact(&client).await;
    Ok(())
}

async fn width(client: &tokio_postgres::Client) -> i64 {
    count(client, "SELECT window_seconds::int8 FROM analytics_settings").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_width_rebuilds_the_metrics_and_analytics_off_then_on_catches_up_without_a_rebuild() -> TestResult
{
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in 0..4 {
        random_file(&data, &format!("f{k}.csv"), 200, &mut rng);
    }
    let client = db.client().await;
    let run = |extra: &'static [&'static str]| {
        let (data, cp, url) = (data.clone(), cp.clone(), db.url.clone());
        async move {
            let mut flags = vec!["--once"];
            flags.extend_from_slice(extra);
            streamer::run(args(&data, &cp, &url, &flags), Default::default()).await
        }
    };

    run(&[]).await?;
    assert_eq!(width(&client).await, 60);
    assert_analytics_exact(&client).await;
    let misaligned = count(
        &client,
        "SELECT count(*) FROM event_metrics_minute WHERE window_start <> date_trunc('minute', window_start)",
    )
    .await;
    assert_eq!(misaligned, 0, "one-minute windows start on the minute");
    let minute_windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;

    // Nothing new to load, another width: the table is rebuilt.
    run(&["--metrics-window", "15"]).await?;
    assert_eq!(width(&client).await, 15);
    assert_analytics_exact(&client).await;
    let quarter_windows = count(&client, "SELECT count(DISTINCT window_start) FROM event_metrics_minute").await;
    assert_eq!((minute_windows, quarter_windows), (4, 16), "four minutes of data");

    // Analytics off: events go on loading, the derived tables wait (the
    // batch's deltas are kept, not applied).
    let before: i64 =
        count(&client, "SELECT coalesce(sum(views + purchases), 0)::int8 FROM event_metrics_minute").await;
    random_file(&data, "f4.csv", 200, &mut rng);
    run(&["--analytics", "false", "--metrics-window", "15"]).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM load_history").await, 5);
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 1, "waiting");
    let still: i64 = count(&client, "SELECT coalesce(sum(views + purchases), 0)::int8 FROM event_metrics_minute").await;
    assert_eq!(still, before, "not applied while off");
    // On again: the applier folds what waited, with no rebuild.
    run(&["--metrics-window", "15"]).await?;
    assert_eq!(count(&client, "SELECT count(*) FROM batches WHERE applied_at IS NULL").await, 0);
    assert!(!client.query_one("SELECT needs_rebuild FROM analytics_settings", &[]).await?.get::<_, bool>(0));
    assert_analytics_exact(&client).await;

    // A database of a version without analytics: events, no settings, empty tables.
    client
        .batch_execute(
            "DELETE FROM analytics_settings; TRUNCATE event_metrics_minute, user_category_counts, user_product_counts",
        )
        .await?;
    run(&["--metrics-window", "60"]).await?;
    assert_eq!(width(&client).await, 60);
    let sizes = assert_analytics_exact(&client).await;
    assert!(sizes.iter().all(|&n| n > 0), "the analytics were built from events: {sizes:?}");
    Ok(())
}

#[tokio::test]
async fn the_streamer_session_compiles_nothing_with_jit() -> TestResult {
    // JIT compiled the batch statements for about 200 ms a batch.
    let db = TestDb::new().await;
    let (client, _) = streamer::pg::connect_session(
        &streamer::pg::Target::parse(&db.url)?,
        "test",
        &streamer::pg::Session::default(),
    )
    .await?;
    let jit: String = client.query_one("SHOW jit", &[]).await?.get(0);
    assert_eq!(jit, "off");
    Ok(())
}
