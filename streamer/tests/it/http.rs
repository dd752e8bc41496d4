//! The HTTP side: `/health` (200, or 503 with the reason when the database
//! is unreachable or the stream stalled), `/metrics` in the Prometheus text
//! format, the dashboard and its JSON; and a port already taken costs one
//! warning, not the stream.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use generator::{Generator, Settings};

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_the_dashboard_answer_with_what_the_database_holds() -> TestResult {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let stream = LiveStream::start(&["--http-addr", &addr]).await;
    let settings = Settings { seed: 11, min_events: 100, max_events: 200, bad_row_rate: 0.02, ..Settings::default() };
    let mut g = Generator::new(settings, "http");
    for k in 0..5 {
        stream.publish(&mut g, k);
    }
    wait_for_loads(&stream.client, 5, Duration::from_secs(30)).await;
    wait_for_applied(&stream.client, Duration::from_secs(30)).await;
    let events = count(&stream.client, "SELECT count(*) FROM events").await;
    let rejected = count(&stream.client, "SELECT sum(rows_rejected)::int8 FROM load_history").await;

    let (status, content_type, body) = http_get_ok(port, "/health").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"), "{body}");
    let health: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(health["status"], "ok", "{body}");
    assert_eq!(health["database"]["reachable"], true);
    assert_eq!(health["stream"]["files_pending"], 0);
    assert!(health["stream"]["last_commit"].is_string(), "{body}");

    let (status, content_type, text) = http_get_ok(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert_eq!(metric(&text, "streamer_rows_total{outcome=\"inserted\"}"), Some(events as f64), "{text}");
    assert_eq!(metric(&text, "streamer_rows_total{outcome=\"rejected\"}"), Some(rejected as f64), "{text}");
    assert_eq!(metric(&text, "streamer_files_total{outcome=\"loaded\"}"), Some(5.0), "{text}");
    assert_eq!(metric(&text, "streamer_end_to_end_latency_seconds_count"), Some(5.0), "{text}");
    let batches = count(&stream.client, "SELECT count(DISTINCT batch_id) FROM load_history").await;
    assert_eq!(metric(&text, "streamer_batches_total{outcome=\"committed\"}"), Some(batches as f64), "{text}");
    assert_eq!(metric(&text, "streamer_batch_duration_seconds_count"), Some(batches as f64), "{text}");
    assert_eq!(metric(&text, "streamer_files_pending"), Some(0.0), "{text}");
    assert!(metric(&text, "streamer_last_commit_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");

    let (status, content_type, html) = http_get_ok(port, "/").await;
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains("<script src=\"/dashboard.js\">") && html.contains("/dashboard.css"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "no asset from elsewhere");
    for asset in ["/dashboard.js", "/dashboard.css"] {
        let (status, _, body) = http_get_ok(port, asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 500 && !body.contains("https://"), "{asset}");
    }

    let (status, _, body) = http_get_ok(port, "/api/dashboard").await;
    assert_eq!(status, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(d["totals"]["events"], events.to_string());
    assert_eq!(d["totals"]["files_loaded"], "5");
    assert_eq!(d["totals"]["rows_rejected"], rejected.to_string());
    let revenue: String = stream
        .client
        .query_one("SELECT coalesce(sum(product_price), 0)::text FROM events WHERE event_type = 'purchase'", &[])
        .await?
        .get(0);
    assert_eq!(d["totals"]["revenue"], revenue);
    let read: i64 = d["batches"]
        .as_array()
        .ok_or("batches")?
        .iter()
        .map(|b| b["rows_read"].as_str().unwrap_or("0").parse::<i64>().unwrap_or(0))
        .sum();
    assert_eq!(read, count(&stream.client, "SELECT sum(rows_read)::int8 FROM load_history").await);
    assert!(!d["windows"].as_array().ok_or("windows")?.is_empty());
    let minutes = d["minutes"].as_array().ok_or("minutes")?;
    assert!(!minutes.is_empty() && minutes.iter().all(|m| m["latency_p95_ms"].is_string()), "{body}");
    let (status, _, _) = http_get_ok(port, "/nothing-here").await;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_with_the_reason_when_the_stream_stalls_and_200_again_once_it_commits() -> TestResult {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let stream = LiveStream::start(&["--http-addr", &addr, "--stall-after", "1"]).await;
    let mut g = Generator::new(Settings { seed: 3, ..Settings::default() }, "stall");
    stream.publish(&mut g, 0);
    wait_for_loads(&stream.client, 1, Duration::from_secs(30)).await;
    assert_eq!(http_get_ok(port, "/health").await.0, 200);

    // A lock on events holds the next batch before its merge: files wait.
    let blocker = stream.db.client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE").await?;
    stream.publish(&mut g, 1);
    let mut answer = None;
    for _ in 0..100 {
        let (status, _, body) = http_get_ok(port, "/health").await;
        if status == 503 {
            answer = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = answer.ok_or("/health never said 503 while the batch was blocked")?;
    let health: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["stream"]["stalled"], true);
    assert_eq!(health["stream"]["files_pending"], 1);
    assert_eq!(health["database"]["reachable"], true, "the database answers; the stream is what is stuck");
    assert!(health["reasons"][0].as_str().unwrap_or_default().starts_with("stalled: 1 file(s) waiting"), "{body}");

    blocker.batch_execute("ROLLBACK").await?;
    wait_for_loads(&stream.client, 2, Duration::from_secs(30)).await;
    let mut status = 0;
    for _ in 0..100 {
        status = http_get_ok(port, "/health").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "healthy again once the batch committed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_when_the_database_cannot_be_reached() -> TestResult {
    let port = free_port();
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let addr = format!("127.0.0.1:{port}");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(streamer::run(args(&data, &cp, &nowhere, &["--http-addr", &addr]), shutdown.clone()));
    let (status, _, body) = http_get_ok(port, "/health").await;
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(health["database"]["reachable"], false);
    let reasons: Vec<&str> =
        health["reasons"].as_array().map(|r| r.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    assert!(reasons.iter().any(|r| r.starts_with("starting: ")), "{reasons:?}");
    let reason =
        reasons.iter().find(|r| r.starts_with("the database is not reachable: ")).ok_or(format!("{reasons:?}"))?;
    assert!(!reason.contains("postgres://"), "no URL in the answer: {reason}");
    let (status, _, body) = http_get_ok(port, "/api/dashboard").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"error\""), "{body}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_already_taken_is_reported_once_and_the_stream_runs_on() -> TestResult {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    let files = generate(&data, Settings { seed: 5, ..Settings::default() }, 3);
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["--data-dir", &data.display().to_string(), "--checkpoint-dir", &cp.display().to_string()])
        .args(["--database-url", &db.url, "--once", "--file-settle", "0", "--http-addr", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env_remove("HTTP_ADDR")
        .stdout(Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("cannot serve HTTP").count(), 1, "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "the address is named: {log}");
    let (expected, _) = oracle(&files);
    assert!(table(&db.client().await).await == expected, "the stream loaded everything");
    drop(taken);
    Ok(())
}
