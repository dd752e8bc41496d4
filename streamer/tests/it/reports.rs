//! `streamer report` prints the right figures on a known data set, as a
//! table, as CSV and into a file, over all time and over a range; the views
//! of db/004_reports.sql give the same answers in one SELECT.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// Nine rows: three users, two categories, two minutes; one duplicate key
/// (the later row wins) and one invalid row.
const DATA: &str = "\
user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time
1,Ann,ann@example.com,view,10,Atlas,Books,10.00,2026-03-01T10:00:05Z
1,Ann,ann@example.com,purchase,10,Atlas,Books,10.00,2026-03-01T10:00:10Z
2,Bob,bob@example.com,view,20,Kite,Toys,25.50,2026-03-01T10:00:20Z
2,Bob,bob@example.com,view,11,Novel,Books,8.00,2026-03-01T10:01:00Z
2,Bob,bob@example.com,purchase,20,Kite,Toys,25.50,2026-03-01T10:01:05Z
3,Cy,cy@example.com,view,20,Kite,Toys,25.50,2026-03-01T10:01:30Z
3,Cy,cy@example.com,view,21,Yoyo,Toys,4.25,2026-03-01T10:01:40Z
3,Cy,cy@example.com,purchase,21,Yoyo,Toys,4.25,2026-03-01T10:01:40Z
0,Nobody,x@example.com,view,1,Thing,Toys,1.00,2026-03-01T10:01:50Z
";

fn report(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamer"))
        .arg("report")
        .args(args)
        .args(["--database-url", url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("the streamer binary runs")
}

fn csv(url: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--format", "csv"]);
    let out = report(url, &all);
    assert!(out.status.success(), "report {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn load(dir: &Path, url: &str) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data folder");
    std::fs::write(data.join("known.csv"), DATA).expect("test file");
    streamer::run(args(&data, &dir.join("cp"), url, &["--once"]), Default::default()).await.expect("the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_print_the_figures_of_a_known_data_set() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    load(dir.path(), &db.url).await;
    let url = db.url.as_str();

    assert_eq!(
        csv(url, &["funnel"]),
        "product_category,views,purchases,conversion_pct\nToys,2,2,100.00\nBooks,2,1,50.00\n"
    );
    assert_eq!(
        csv(url, &["top-products"]),
        "product_id,product_name,product_category,purchases,revenue\n20,Kite,Toys,1,25.50\n10,Atlas,Books,1,10.00\n21,Yoyo,Toys,1,4.25\n"
    );
    assert_eq!(
        csv(url, &["top-products", "--top", "1"]),
        "product_id,product_name,product_category,purchases,revenue\n20,Kite,Toys,1,25.50\n"
    );
    assert_eq!(
        csv(url, &["revenue"]),
        "window_start,views,purchases,revenue,conversion_pct\n\
         2026-03-01 10:00:00+00,2,1,10.00,50.00\n\
         2026-03-01 10:01:00+00,2,2,29.75,100.00\n"
    );
    assert_eq!(
        csv(url, &["active-users"]),
        "user_id,user_name,events,views,purchases,revenue,last_event\n\
         2,Bob,3,2,1,25.50,2026-03-01 10:01:05+00\n\
         1,Ann,2,1,1,10.00,2026-03-01 10:00:10+00\n\
         3,Cy,2,1,1,4.25,2026-03-01 10:01:40+00\n"
    );
    // The duplicate key (user 3 at 10:01:40) counts once; the invalid row is a reject.
    let ingest = csv(url, &["ingest"]);
    let lines: Vec<&str> = ingest.lines().collect();
    assert_eq!(
        lines[0],
        "hour,batches,files_loaded,files_quarantined,files_missing,rows_read,rows_inserted,rows_updated,rows_duplicate,rows_rejected,latency_p50_s,latency_p95_s,latency_max_s"
    );
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&fields[1..10], ["1", "1", "0", "0", "9", "7", "0", "1", "1"], "{ingest}");
    assert!(fields[10].parse::<f64>().is_ok_and(|s| s >= 0.0), "{ingest}");
    assert_eq!(lines.len(), 2, "{ingest}");

    // A range: the second minute only (windows by their start; events by their time).
    let since = ["--since", "2026-03-01 10:01"];
    assert_eq!(
        csv(url, &["funnel", since[0], since[1]]),
        "product_category,views,purchases,conversion_pct\nToys,1,2,200.00\nBooks,1,0,0.00\n"
    );
    assert_eq!(
        csv(url, &["active-users", "--since", "2026-03-01T10:00:00Z", "--until", "2026-03-01T10:01:00Z"]),
        "user_id,user_name,events,views,purchases,revenue,last_event\n\
         1,Ann,2,1,1,10.00,2026-03-01 10:00:10+00\n\
         2,Bob,1,1,0,0.00,2026-03-01 10:00:20+00\n"
    );
    assert_eq!(
        csv(url, &["revenue", "--since", "2026-04-01"]),
        "window_start,views,purchases,revenue,conversion_pct\n"
    );

    // The table form, and --out.
    let out = report(url, &["funnel"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(table.contains("product_category") && table.contains("│ Toys ") && table.contains("100.00"), "{table}");
    let file = dir.path().join("funnel.csv");
    let out = report(url, &["funnel", "--format", "csv", "--out", &file.display().to_string()]);
    assert!(out.status.success() && out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file)?, csv(url, &["funnel"]));

    // The views answer the same in one SELECT.
    let client = db.client().await;
    let funnel = client
        .query("SELECT product_category, views, purchases, conversion_pct::text FROM conversion_funnel", &[])
        .await?;
    let got: Vec<(String, i64, i64, String)> =
        funnel.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(got, vec![("Toys".into(), 2, 2, "100.00".into()), ("Books".into(), 2, 1, "50.00".into())]);
    for view in ["top_products", "revenue_per_window", "most_active_users", "ingest_health"] {
        assert!(count(&client, &format!("SELECT count(*) FROM {view}")).await > 0, "{view}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mistakes_get_a_clear_message() -> TestResult {
    let db = TestDb::new().await;
    let out = report(&db.url, &["funnel", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a time"), "{out:?}");
    let out = report(&db.url, &["funnel", "--since", "2026-03-02", "--until", "2026-03-01"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since must be before --until"), "{out:?}");
    let out = report(&db.url, &["nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    // A database the streamer never ran on.
    let out = report(&db.url, &["funnel"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("report_conversion_funnel") && err.contains("has a streamer of this version run"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_analytics_off_the_reports_and_the_dashboard_say_they_are_behind() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("known.csv"), DATA)?;
    streamer::run(
        args(&data, &dir.path().join("cp"), &db.url, &["--once", "--analytics", "false"]),
        Default::default(),
    )
    .await?;
    for name in ["funnel", "revenue"] {
        let out = report(&db.url, &[name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("note: the analytics are 1 batches"), "{name}: {stderr}");
    }
    // Reports over events need no note.
    let out = report(&db.url, &["top-products"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Kite"));
    // The dashboard's figure of the lag, which its page shows as a notice.
    let client = db.client().await;
    let (_, sql) = streamer::http::DASHBOARD_QUERIES.iter().find(|(n, _)| *n == "analytics").ok_or("query")?;
    let lag = streamer::pg::text_rows(&client, sql).await?;
    assert_eq!(lag.rows[0][0].as_deref(), Some("1"));
    assert!(streamer::http::DASHBOARD_QUERIES.len() >= 6);

    // Caught up once a streamer runs the analytics: no note.
    streamer::run(args(&data, &dir.path().join("cp"), &db.url, &["--once"]), Default::default()).await?;
    let out = report(&db.url, &["funnel"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}
