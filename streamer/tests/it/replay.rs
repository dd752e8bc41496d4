//! `generator replay` of the public dataset's format, end to end: a small
//! file made here (same-second events, cart rows, empty category codes, a
//! malformed line, true duplicates) replays into files exactly as
//! documented, and the streamer then holds exactly the expected rows.

use std::time::Duration;

use crate::common::*;
use contract::HEADER;
use generator::replay::replay_max;
use generator::synth::user_profile;

const INPUT: &str = "\
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,541312140,9333dfbd
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde
2019-10-01 00:00:00 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,541312140,9333dfbd
2019-10-01 00:00:01 UTC,view,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2
2019-10-01 00:00:01 UTC,remove_from_cart,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2
this line is not an event
2019-10-01 00:00:01 UTC,purchase,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90fc70
2019-10-01 00:01:30 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419
2019-10-01 00:01:30 UTC,purchase,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419
";

#[tokio::test]
async fn a_dataset_replays_into_documented_files_and_exact_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("2019-Oct-sample.csv");
    std::fs::write(&input, INPUT)?;
    let data = dir.path().join("data");
    let summary = replay_max(&input, &data, Duration::from_secs(60)).await?;
    assert_eq!(
        (summary.lines, summary.events, summary.identical, summary.skipped_cart, summary.malformed, summary.files),
        (10, 7, 1, 2, 1, 2)
    );

    // Two slices of 60 data-seconds: 00:00:00 and 00:01:00.
    let who = |id: u32| {
        let p = user_profile(id);
        format!("{id},{},{}", p.name, p.email)
    };
    let (a, b, c, d) = (who(541312140), who(519107250), who(550050854), who(535871217));
    let mut files = csv_files(&data);
    files.sort();
    let names: Vec<String> = files.iter().filter_map(|f| f.file_name()?.to_str().map(String::from)).collect();
    assert_eq!(names, ["replay_20191001T000000_000000.csv", "replay_20191001T000100_000001.csv"]);
    assert_eq!(
        std::fs::read_to_string(&files[0])?,
        format!(
            "{HEADER}\n\
             {a},view,44600062,shiseido #44600062,unknown,35.79,2019-10-01T00:00:00.000000Z\n\
             {a},view,3900821,aqua water_heater,appliances,33.20,2019-10-01T00:00:00.000001Z\n\
             {a},view,44600062,shiseido #44600062,unknown,35.79,2019-10-01T00:00:00.000000Z\n\
             {b},view,17200506,sofa #17200506,furniture,543.10,2019-10-01T00:00:01.000000Z\n\
             {c},purchase,1307067,lenovo notebook,computers,251.74,2019-10-01T00:00:01.000000Z\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(&files[1])?,
        format!(
            "{HEADER}\n\
             {d},view,1004237,apple smartphone,electronics,1081.98,2019-10-01T00:01:30.000000Z\n\
             {d},purchase,1004237,apple smartphone,electronics,1081.98,2019-10-01T00:01:30.000001Z\n"
        )
    );

    // The streamer keeps every distinct event and drops the true duplicate.
    let db = TestDb::new().await;
    let run = streamer::run(args(&data, &dir.path().join("cp"), &db.url, &["--once"]), Default::default()).await?;
    assert_eq!((run.totals.inserted, run.totals.duplicates, run.totals.rejected), (6, 1, 0));
    let client = db.client().await;
    assert_eq!(table(&client).await, oracle(&files).0);
    let rows: Vec<(i32, String, String)> = client
        .query(
            "SELECT user_id, event_type, to_char(event_time AT TIME ZONE 'UTC', 'HH24:MI:SS.US') FROM events \
             ORDER BY event_time, user_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let row = |u: i32, t: &str, at: &str| (u, t.to_owned(), at.to_owned());
    assert_eq!(
        rows,
        vec![
            row(541312140, "view", "00:00:00.000000"),
            row(541312140, "view", "00:00:00.000001"),
            row(519107250, "view", "00:00:01.000000"),
            row(550050854, "purchase", "00:00:01.000000"),
            row(535871217, "view", "00:01:30.000000"),
            row(535871217, "purchase", "00:01:30.000001"),
        ]
    );

    // Replaying the same input again changes nothing.
    let again = dir.path().join("again");
    replay_max(&input, &again, Duration::from_secs(60)).await?;
    let before = table(&client).await;
    let run = streamer::run(args(&again, &dir.path().join("cp2"), &db.url, &["--once"]), Default::default()).await?;
    assert_eq!((run.totals.inserted, run.totals.updated), (0, 0));
    assert_eq!(table(&client).await, before);
    Ok(())
}
