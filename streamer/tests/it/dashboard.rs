//! The dashboard in a real browser: a streamer on a fresh database ingests
//! generated files, headless Chromium (Debian's `chromium`; scripts/test.sh
//! installs it) opens `/`, and every figure the page shows is checked against
//! the database. The screenshot is kept in the test's temporary folder, or
//! written to images/dashboard.png with UPDATE_SCREENSHOT=1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use generator::{Generator, Settings};

fn chromium() -> String {
    let candidate = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new(&candidate).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "{candidate} not found: install Debian's chromium package (scripts/test.sh does), or set CHROMIUM");
    candidate
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom` or
/// `--screenshot=…`), giving the page's script 10 s of virtual time.
fn browse(url: &str, profile: &Path, what: &str) -> String {
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-extensions", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,1100", "--virtual-time-budget=10000", what, url])
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

/// The text of the element with `data-testid="id"`.
fn testid(dom: &str, id: &str) -> String {
    let marker = format!("data-testid=\"{id}\">");
    let start = dom.find(&marker).unwrap_or_else(|| panic!("no {id} in the page")) + marker.len();
    unescape(dom[start..].split('<').next().unwrap_or_default())
}

/// Table rows carrying attribute `key`: that attribute (and `data-category`
/// when present) and their cells by `data-col`.
fn rows(dom: &str, key: &str) -> Vec<(String, String, HashMap<String, String>)> {
    let attr = |tag: &str, name: &str| {
        let marker = format!("{name}=\"");
        tag.find(&marker).map(|i| unescape(tag[i + marker.len()..].split('"').next().unwrap_or_default()))
    };
    dom.split("<tr ")
        .skip(1)
        .filter_map(|tr| {
            let tr = tr.split("</tr>").next()?;
            let tag = tr.split('>').next()?;
            let id = attr(tag, key)?;
            let category = attr(tag, "data-category").unwrap_or_default();
            let cells = tr
                .split("<td data-col=\"")
                .skip(1)
                .filter_map(|c| {
                    let (name, rest) = c.split_once("\">")?;
                    Some((name.to_owned(), unescape(rest.split('<').next()?)))
                })
                .collect();
            Some((id, category, cells))
        })
        .collect()
}

/// As the page prints numbers (en-US grouping).
fn grouped(digits: &str) -> String {
    let (int, frac) = digits.split_once('.').map_or((digits, None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{out}.{f}"),
        None => out,
    }
}

async fn text(client: &tokio_postgres::Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_in_chromium_what_the_database_holds() -> TestResult {
    let port = free_port();
    let stream = LiveStream::start(&["--http-addr", &format!("127.0.0.1:{port}"), "--max-files-per-batch", "3"]).await;
    let settings = Settings {
        seed: 2026,
        min_events: 300,
        max_events: 900,
        bad_row_rate: 0.01,
        duplicate_rate: 0.03,
        ..Settings::default()
    };
    let mut g = Generator::new(settings, "dashboard");
    let start = instant("2026-05-04T09:00:00Z");
    for k in 0..10 {
        // Five minutes of event time, so the page shows several windows.
        let f = g.next_file(start + chrono::TimeDelta::seconds(k * 30));
        runtime::publish::publish(&stream.data, &f.name, &f.contents)?;
    }
    wait_for_loads(&stream.client, 10, Duration::from_secs(60)).await;
    wait_for_applied(&stream.client, Duration::from_secs(60)).await;

    let url = format!("http://127.0.0.1:{port}/");
    let profile = tempfile::tempdir()?;
    let dom = browse(&url, profile.path(), "--dump-dom");
    assert!(dom.contains("data-loaded=\"true\""), "the page's script did not load the figures:\n{dom}");
    let c = &stream.client;

    assert_eq!(testid(&dom, "health"), "healthy");
    assert_eq!(testid(&dom, "kpi-events"), grouped(&text(c, "SELECT count(*)::text FROM events").await));
    let revenue = text(c, "SELECT sum(product_price)::text FROM events WHERE event_type = 'purchase'").await;
    assert_eq!(testid(&dom, "kpi-revenue"), grouped(&revenue));
    let conversion = text(
        c,
        "SELECT round(100.0 * count(*) FILTER (WHERE event_type = 'purchase') / count(*) FILTER (WHERE event_type = 'view'), 2)::text FROM events",
    )
    .await;
    assert_eq!(testid(&dom, "kpi-conversion"), format!("{conversion} %"));
    assert_eq!(testid(&dom, "kpi-files"), "10");
    assert_eq!(testid(&dom, "kpi-pending"), "0");
    assert_eq!(testid(&dom, "kpi-rejected"), grouped(&text(c, "SELECT count(*)::text FROM rejected_rows").await));

    // The last batches, cell by cell, against the load history.
    let batches = rows(&dom, "data-batch");
    let committed = count(c, "SELECT count(DISTINCT batch_id) FROM load_history").await;
    assert_eq!(batches.len() as i64, committed.min(10), "every batch, at most ten: {batches:?}");
    for (batch, _, cells) in &batches {
        let sql = format!(
            "SELECT count(*)::text, sum(rows_read)::text, sum(rows_inserted)::text, sum(rows_updated)::text, \
             sum(rows_duplicate)::text, sum(rows_rejected)::text FROM load_history WHERE batch_id = {batch}"
        );
        let row = c.query_one(&sql, &[]).await?;
        for (i, col) in ["files", "rows_read", "inserted", "updated", "duplicates", "rejected"].iter().enumerate() {
            assert_eq!(cells.get(*col), Some(&grouped(&row.get::<_, String>(i))), "batch {batch}, {col}");
        }
    }

    // The windows, against a GROUP BY over events (not the metrics table).
    let windows = rows(&dom, "data-window");
    let shown: std::collections::BTreeSet<&String> = windows.iter().map(|(w, _, _)| w).collect();
    assert_eq!(shown.len(), 3, "the last three windows: {shown:?}");
    for (window, category, cells) in &windows {
        let sql = "SELECT count(*) FILTER (WHERE event_type = 'view')::text, count(*) FILTER (WHERE event_type = 'purchase')::text, \
                   count(DISTINCT user_id)::text, coalesce(sum(product_price) FILTER (WHERE event_type = 'purchase'), 0)::numeric(14,2)::text \
                   FROM events WHERE event_time >= $1::text::timestamptz AND event_time < $1::text::timestamptz + interval '1 minute' \
                   AND product_category = $2";
        let row = c.query_one(sql, &[window, category]).await?;
        for (i, col) in ["views", "purchases", "users", "revenue"].iter().enumerate() {
            assert_eq!(cells.get(*col), Some(&grouped(&row.get::<_, String>(i))), "{window} {category}, {col}");
        }
    }
    let latest =
        text(c, "SELECT to_char(max(event_time) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:00\"Z\"') FROM events")
            .await;
    assert!(shown.contains(&latest), "the newest window {latest} is shown");

    // The picture for the README.
    let shot = match std::env::var_os("UPDATE_SCREENSHOT") {
        Some(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/dashboard.png"),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"),
    };
    browse(&url, profile.path(), &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot)?;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot at {}", shot.display());
    println!("screenshot: {}", shot.display());
    Ok(())
}
