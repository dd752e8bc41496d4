//! Hostile input: every case of the corpus in `tests/fixtures/` (plus the
//! ones a repository cannot hold: links, folders, FIFOs, odd names, a 10 MB
//! line, files deleted or truncated after they were planned) with its
//! expected outcome. Rows that can be saved are saved, the rest are rejected
//! with a precise reason, and the stream never stops.

use std::path::Path;

use crate::common::*;

/// What must become of one file.
enum Expect {
    /// Loaded: rows read, and each rejected row as (line, part of the reason).
    Loaded(i64, &'static [(i64, &'static str)]),
    Quarantined(&'static str),
}
use Expect::*;

const CORPUS: [(&str, Expect); 29] = [
    ("missing_column.csv", Loaded(2, &[(3, "expected 9 fields, found 8")])),
    ("extra_column.csv", Loaded(2, &[(3, "expected 9 fields, found 10")])),
    ("reordered_columns.csv", Loaded(1, &[])),
    ("short_header.csv", Quarantined("wrong header: missing column event_time")),
    ("header_by_name.csv", Loaded(3, &[(4, "expected 11 fields, found 10")])),
    ("duplicate_column.csv", Quarantined("wrong header: column user_id appears twice")),
    ("quoted_fields.csv", Loaded(2, &[])),
    ("bom.csv", Loaded(1, &[])),
    ("crlf.csv", Loaded(2, &[])),
    ("invalid_utf8.csv", Loaded(1, &[(2, "not UTF-8: user_name has an invalid byte at offset 3")])),
    ("invalid_utf8_header.csv", Quarantined("not UTF-8: the header has an invalid byte")),
    ("nul_byte.csv", Loaded(2, &[(3, "user_name: contains a NUL character")])),
    ("empty.csv", Quarantined("empty file")),
    ("header_only.csv", Loaded(0, &[])),
    (
        "numeric_overflow.csv",
        Loaded(
            4,
            &[
                (2, "user_id: '99999999999999999999' is out of range"),
                (3, "user_id: 2147483648 is larger than 2147483647"),
                (4, "product_id: 3000000000 is larger than 2147483647"),
            ],
        ),
    ),
    (
        "zero_and_negative_ids.csv",
        Loaded(
            5,
            &[
                (2, "user_id: 0 is not > 0"),
                (3, "user_id: -4 is not > 0"),
                (4, "product_id: 0 is not > 0"),
                (5, "product_id: -1 is not > 0"),
            ],
        ),
    ),
    (
        "non_numeric_ids.csv",
        Loaded(
            4,
            &[
                (2, "user_id: 'u12' is not an integer"),
                (3, "user_id: ' 12' is not an integer"),
                (4, "user_id: '12.0' is not an integer"),
                (5, "user_id: missing"),
            ],
        ),
    ),
    (
        "invalid_timestamps.csv",
        Loaded(
            5,
            &[
                (2, "event_time: '2026-13-45T99:99:99Z' is not a timestamp"),
                (3, "event_time: 'yesterday' is not a timestamp"),
                (4, "event_time: missing"),
                (5, "event_time: '2026-01-01' is not a timestamp"),
                (6, "is more precise than microseconds"),
            ],
        ),
    ),
    (
        "out_of_range_timestamps.csv",
        Loaded(
            3,
            &[(2, "is not a timestamp"), (3, "'2026-02-30T00:00:00Z' is not a timestamp"), (4, "is not a timestamp")],
        ),
    ),
    ("timestamps_with_offsets.csv", Loaded(4, &[])),
    (
        "prices.csv",
        Loaded(
            9,
            &[
                (5, "product_price: '1.505' has more than 2 decimal places"),
                (6, "product_price: '1e3' is not a decimal number"),
                (7, "product_price: '-2.00' is negative"),
                (8, "product_price: missing"),
                (9, "product_price: '100000000.00' is larger than 99999999.99"),
                (10, "product_price: '.5' is not a decimal number"),
            ],
        ),
    ),
    (
        "event_types.csv",
        Loaded(
            5,
            &[
                (4, "event_type: 'click' is not view or purchase"),
                (5, "event_type: missing"),
                (6, "event_type: 'view ' is not view or purchase"),
            ],
        ),
    ),
    ("duplicates_in_file.csv", Loaded(4, &[])),
    (
        "overlong_text.csv",
        Loaded(
            5,
            &[
                (3, "user_name: longer than 100 characters"),
                (4, "user_email: longer than 100 characters"),
                (5, "product_name: longer than 100 characters"),
                (6, "product_category: longer than 50 characters"),
            ],
        ),
    ),
    ("non_ascii_text.csv", Loaded(3, &[(4, "user_name: longer than 100 characters")])),
    ("blank_lines.csv", Loaded(2, &[])),
    ("unterminated_quote.csv", Loaded(2, &[(3, "expected 9 fields, found 2")])),
    ("no_final_newline.csv", Loaded(1, &[])),
    ("only_garbage.csv", Quarantined("wrong header: missing columns")),
];

const HEADER: &str = contract::HEADER;
const HOSTILE_NAME: &str = "it's \"quoted\"; DROP TABLE events;-- é ü.csv";

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

async fn history(client: &tokio_postgres::Client, name: &str) -> Option<(String, i64, Option<String>)> {
    let rows = client
        .query("SELECT status, rows_read, reason FROM load_history WHERE file_name = $1", &[&name])
        .await
        .expect("load_history");
    assert!(rows.len() <= 1, "{name} loaded {} times", rows.len());
    rows.first().map(|r| (r.get(0), r.get(1), r.get(2)))
}

async fn event(client: &tokio_postgres::Client, user_id: i32) -> (String, String, String, String, String) {
    let r = client
        .query_one(
            "SELECT user_name, product_name, product_category, product_price::text, \
             to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM events WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("one event");
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

#[tokio::test]
async fn every_hostile_case_ends_as_expected_and_the_stream_goes_on() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    copy_dir(&fixtures(), &data);
    assert_eq!(csv_files(&data).len(), CORPUS.len(), "every fixture has its expected outcome");

    // Cases a repository cannot hold.
    let outside = dir.path().join("outside.csv");
    std::fs::write(&outside, format!("{HEADER}\n31,Out Side,o@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n"))?;
    std::os::unix::fs::symlink(&outside, data.join("outside_link.csv"))?;
    std::fs::create_dir(data.join("a_directory.csv"))?;
    let fifo = std::process::Command::new("mkfifo").arg(data.join("a_fifo.csv")).status()?;
    assert!(fifo.success(), "mkfifo");
    for ignored in [".hidden.csv", "_underscore.csv", "temporary.csv.tmp"] {
        std::fs::write(data.join(ignored), format!("{HEADER}\n32,Hid Den,h@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n"))?;
    }
    std::fs::write(
        data.join(HOSTILE_NAME),
        format!("{HEADER}\n33,Odd Name,o@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n"),
    )?;
    let huge = "h".repeat(10 * 1024 * 1024);
    std::fs::write(data.join("huge_line.csv"), format!("{HEADER}\n34,{huge},h@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n35,Fine,f@x,view,1,P,C,1.00,2026-01-01T00:00:00Z\n"))?;

    let summary = streamer::run(args(&data, &cp, &db.url, &["--once"]), Default::default()).await?;
    let client = db.client().await;

    for (name, expect) in &CORPUS {
        let got = history(&client, name).await;
        match expect {
            Quarantined(reason) => {
                let (status, _, why) = got.ok_or(format!("{name} not in the load history"))?;
                assert_eq!(status, "quarantined", "{name}");
                assert!(why.as_deref().unwrap_or_default().contains(reason), "{name}: {why:?}");
                assert!(data.join("_rejected").join(name).exists(), "{name} moved to quarantine");
            }
            Loaded(rows, rejected) => {
                let (status, rows_read, _) = got.ok_or(format!("{name} not in the load history"))?;
                assert_eq!((status.as_str(), rows_read), ("loaded", *rows), "{name}");
                let bad = client
                    .query(
                        "SELECT line_number, reason FROM rejected_rows WHERE file_name = $1 ORDER BY line_number",
                        &[name],
                    )
                    .await?;
                let bad: Vec<(i64, String)> = bad.iter().map(|r| (r.get(0), r.get(1))).collect();
                assert_eq!(bad.len(), rejected.len(), "{name}: {bad:?}");
                for ((line, reason), (want_line, want)) in bad.iter().zip(rejected.iter()) {
                    assert_eq!(line, want_line, "{name}: {reason}");
                    assert!(reason.contains(want), "{name} line {line}: {reason:?} lacks {want:?}");
                }
            }
        }
    }

    // Never read: links (even to a valid file), folders, FIFOs, hidden, _ and .tmp names.
    for name in
        ["outside_link.csv", "a_directory.csv", "a_fifo.csv", ".hidden.csv", "_underscore.csv", "temporary.csv.tmp"]
    {
        assert!(history(&client, name).await.is_none(), "{name} was read");
    }
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE user_id IN (31, 32)").await, 0);
    // An odd name is just a name.
    assert_eq!(history(&client, HOSTILE_NAME).await.map(|h| h.0), Some("loaded".to_owned()));
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE user_id = 33").await, 1);
    // A 10 MB field is refused without a 10 MB reject.
    let huge_reject = client
        .query_one("SELECT length(raw_line), reason FROM rejected_rows WHERE file_name = 'huge_line.csv'", &[])
        .await?;
    assert!(huge_reject.get::<_, i32>(0) <= 4096);
    assert_eq!(huge_reject.get::<_, String>(1), "user_name: longer than 100 characters");
    assert_eq!(count(&client, "SELECT count(*) FROM events WHERE user_id = 35").await, 1);

    // What was saved is exact.
    let quoted = client
        .query_one("SELECT user_name, product_name, product_category FROM events WHERE user_name = 'Lee, Ann'", &[])
        .await?;
    assert_eq!(quoted.get::<_, String>(1), "The \"Best\" Mug");
    assert_eq!(quoted.get::<_, String>(2), "Home\nand Kitchen");
    assert_eq!(event(&client, 11).await.4, "2026-01-01 00:00:00.000001");
    assert_eq!(event(&client, 12).await.4, "2026-01-01 00:00:00.000000");
    assert_eq!(event(&client, 13).await.4, "2026-01-01 00:00:00.500000");
    assert_eq!(event(&client, 14).await.4, "2026-01-01 00:00:00.000000");
    assert_eq!(event(&client, 15).await.3, "1.50");
    assert_eq!(event(&client, 16).await.3, "7.00");
    assert_eq!(event(&client, 17).await.3, "0.05");
    assert_eq!(
        count(&client, "SELECT count(*) FROM events WHERE user_id IN (18, 19) AND event_type IN ('view', 'purchase')")
            .await,
        2
    );
    assert_eq!(event(&client, 20).await.3, "3.00", "the last duplicate in the file wins");
    assert_eq!(event(&client, 23).await.1, "Tasse à café ☕");
    assert_eq!(event(&client, 24).await.0.chars().count(), 100);
    assert_eq!(
        count(&client, "SELECT count(*) FROM events WHERE user_id IN (3, 4, 5, 25, 26, 27, 29, 30)").await,
        7,
        "29 is inside the unclosed quote"
    );
    // Columns by name, whatever their order, case or spaces; the others kept as JSON with their row.
    assert_eq!(
        event(&client, 41).await,
        ("Ann".into(), "Mug".into(), "Home".into(), "3.50".into(), "2026-01-02 00:00:00.000000".into())
    );
    let rescued = |id: i32| {
        let client = &client;
        async move {
            client
                .query_one("SELECT _rescued::text FROM events WHERE user_id = $1", &[&id])
                .await
                .map(|r| r.get::<_, Option<String>>(0))
                .expect("one event")
                .map(|text| serde_json::from_str::<serde_json::Value>(&text).expect("JSON"))
        }
    };
    assert_eq!(rescued(41).await, Some(serde_json::json!({"campaign": "spring", "session id": "s-1"})));
    assert_eq!(rescued(42).await, Some(serde_json::json!({"campaign": "", "session id": "s,2"})));
    assert_eq!(event(&client, 44).await.0, "Ann", "reordered columns are read by name");
    assert_eq!(rescued(44).await, None, "no extra column, no rescued data");
    assert!(summary.totals.files >= CORPUS.len() as u64 + 2);
    Ok(())
}

#[tokio::test]
async fn files_deleted_or_truncated_after_planning_are_handled() -> TestResult {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let body =
        |n: i32| (1..=n).map(|i| format!("{i},A,a@x,view,1,P,C,1.00,2026-01-01T00:00:0{i}Z\n")).collect::<String>();
    std::fs::write(data.join("deleted.csv"), format!("{HEADER}\n{}", body(3)))?;
    std::fs::write(data.join("truncated.csv"), format!("{HEADER}\n{}", body(3)))?;
    let config = args(&data, &cp, &db.url, &["--once"]);
    register(&db.url, &config.source, &data, &["deleted.csv", "truncated.csv"]).await;
    // Between registering and reading: one file goes, the other shrinks.
    std::fs::remove_file(data.join("deleted.csv"))?;
    std::fs::write(data.join("truncated.csv"), format!("{HEADER}\n{}", body(1)))?;

    streamer::run(config, Default::default()).await?;
    let client = db.client().await;
    let (status, _, reason) = history(&client, "deleted.csv").await.ok_or("deleted.csv not recorded")?;
    assert_eq!(status, "missing");
    assert!(reason.is_some());
    // The registered 3-row file is not what is there now: it is settled as
    // changed, and the 1-row file there is a new file, loaded.
    let statuses: Vec<(String, i64)> = client
        .query("SELECT status, rows_read FROM load_history WHERE file_name = 'truncated.csv' ORDER BY load_id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(statuses, vec![("changed".to_owned(), 0), ("loaded".to_owned(), 1)]);
    assert_eq!(count(&client, "SELECT count(*) FROM events").await, 1);
    Ok(())
}
