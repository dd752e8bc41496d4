//! The deployment files cannot drift from the programs:
//! - every setting `docker-compose.yml` and `.env.example` pass is one the
//!   programs know (from their `--help`), and `.env.example` lists them all;
//! - the settings tables of `docs/User_guide.md` are exactly the flags and
//!   environment variables of `streamer --help`, `generator --help` and
//!   `generator replay --help`, and every operator command's flag is documented;
//! - the Grafana dashboard parses, uses the provisioned data source, and every
//!   one of its SQL queries runs against a database the streamer loaded, with
//!   totals that agree with `events`.
//!
//! (The compose file's schema and the Dockerfile are checked by
//! `scripts/test.sh` with check-jsonschema and hadolint.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use clap::CommandFactory;
use generator::{Generator, Settings};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{path} is empty"))
}

/// The long flags and environment variables a `--help` text lists.
#[derive(Debug, Default)]
struct Help {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Help {
    fn parse(text: &str) -> Help {
        let mut help = Help::default();
        for line in text.lines() {
            let line = line.trim_start();
            // `      --data-dir <DIR>` or `  -h, --help`
            let long = match line.strip_prefix("--") {
                Some(rest) => Some(rest),
                None if line.starts_with('-') => line.split_once(", --").map(|(_, rest)| rest),
                None => None,
            };
            if let Some(rest) = long {
                let flag: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                if flag != "help" && flag != "version" {
                    help.flags.insert(format!("--{flag}"));
                }
            }
            let mut rest = line;
            while let Some(i) = rest.find("[env: ") {
                let name: String = rest[i + 6..].chars().take_while(|c| *c != '=' && *c != ']').collect();
                help.env.insert(name);
                rest = &rest[i + 6..];
            }
        }
        help
    }
}

fn streamer_help(args: &[&str]) -> Help {
    let out = Command::new(env!("CARGO_BIN_EXE_streamer")).args(args).arg("--help").output().expect("streamer runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Help::parse(&String::from_utf8_lossy(&out.stdout))
}

/// What `generator --help` and `generator replay --help` print.
fn generator_help(subcommand: Option<&str>) -> Help {
    let mut cmd = generator::Config::command();
    let text = match subcommand {
        None => cmd.render_long_help(),
        Some(name) => {
            cmd.build();
            cmd.find_subcommand_mut(name).expect("subcommand").render_long_help()
        }
    };
    Help::parse(&text.to_string())
}

/// The `KEY=` names in `.env.example`, set or commented out.
fn env_example_keys() -> BTreeSet<String> {
    read(".env.example")
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map(String::from)
        .collect()
}

/// The variables `docker-compose.yml` itself reads from `.env` (`${NAME…}`).
fn compose_variables() -> BTreeSet<String> {
    let text = read("docker-compose.yml");
    text.split("${")
        .skip(1)
        .map(|s| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn every_setting_the_compose_file_passes_is_one_the_program_knows() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let programs = [("streamer", streamer_help(&[])), ("generator", generator_help(None))];
    for (service, help) in &programs {
        let s = &services[*service];
        assert!(!s.is_badvalue(), "docker-compose.yml has no {service} service");
        let command = s["command"].as_vec().expect("an exec-form command");
        assert_eq!(command[0].as_str(), Some(*service), "the {service} service runs the {service} binary");
        let env = s["environment"].as_hash().expect("an environment map");
        for key in env.keys().filter_map(Yaml::as_str) {
            assert!(help.env.contains(key), "docker-compose.yml passes {key} to the {service}, which does not know it");
        }
        // Settings from .env: the env_file of the shared block.
        let merged = &s["<<"];
        let env_file = if merged.is_badvalue() { &s["env_file"] } else { &merged["env_file"] };
        assert_eq!(env_file[0]["path"].as_str(), Some(".env"), "the {service} reads .env");
    }

    // The shutdown grace fits inside the stop grace period.
    let grace = services["streamer"]["stop_grace_period"].as_str().expect("stop_grace_period");
    let seconds: u64 = grace.trim_end_matches('s').parse().expect("a period in seconds");
    let default_grace = <streamer::Cli as CommandFactory>::command()
        .get_arguments()
        .find(|a| a.get_id() == "shutdown_grace")
        .and_then(|a| a.get_default_values().first().and_then(|v| v.to_str()).map(str::to_owned))
        .expect("--shutdown-grace has a default");
    assert!(
        seconds > default_grace.parse::<u64>().expect("seconds"),
        "stop_grace_period {grace} ≤ SHUTDOWN_GRACE_SECS"
    );

    // .env.example lists every setting of both programs, and only those, plus
    // what compose itself reads and RUST_LOG.
    let mut known: BTreeSet<String> = programs.iter().flat_map(|(_, h)| h.env.iter().cloned()).collect();
    known.extend(generator_help(Some("replay")).env);
    let mut allowed = known.clone();
    allowed.extend(compose_variables());
    allowed.insert("RUST_LOG".into());
    let example = env_example_keys();
    let unknown: Vec<_> = example.difference(&allowed).collect();
    assert!(unknown.is_empty(), ".env.example sets {unknown:?}, which no program or compose reads");
    let missing: Vec<_> = known.union(&compose_variables()).filter(|k| !example.contains(*k)).cloned().collect();
    assert!(missing.is_empty(), ".env.example does not list {missing:?}");
}

/// The flags and environment variables in the table under `heading` in the
/// user guide (up to the next heading).
fn documented(guide: &str, heading: &str) -> Help {
    let start = guide.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("no {heading:?} in the user guide"));
    let section = &guide[start + heading.len() + 2..];
    let section = &section[..section.find("\n#").unwrap_or(section.len())];
    let mut help = Help::default();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(String::from).collect() };
        help.flags.extend(ticked(cells[1]));
        help.env.extend(ticked(cells[2]));
    }
    help
}

/// `documented` (plus `shared`, documented elsewhere) holds exactly `actual`.
fn same_settings(
    context: &str,
    what: &str,
    actual: &BTreeSet<String>,
    documented: &BTreeSet<String>,
    shared: &BTreeSet<String>,
) {
    let undocumented: Vec<_> = actual.iter().filter(|s| !documented.contains(*s) && !shared.contains(*s)).collect();
    assert!(undocumented.is_empty(), "{context}: {what} {undocumented:?} are not documented");
    let stale: Vec<_> = documented.difference(actual).collect();
    assert!(stale.is_empty(), "{context}: {what} {stale:?} are documented but do not exist");
}

#[test]
fn the_user_guide_documents_exactly_the_settings_of_both_programs() {
    let guide = read("docs/User_guide.md");
    let cases = [
        ("### Streamer", "streamer --help", streamer_help(&[])),
        ("### Generator", "generator --help", generator_help(None)),
        ("### Generator replay", "generator replay --help", generator_help(Some("replay"))),
    ];
    for (heading, program, help) in cases {
        let doc = documented(&guide, heading);
        assert!(!help.flags.is_empty() && !help.env.is_empty(), "{program} lists no settings: {help:?}");
        // The replay section documents its own settings; it shares --data-dir and --log-format with the generator.
        let shared =
            if heading == "### Generator replay" { documented(&guide, "### Generator") } else { Help::default() };
        let context = format!("the table under {heading} and {program}");
        same_settings(&context, "flags", &help.flags, &doc.flags, &shared.flags);
        same_settings(&context, "environment variables", &help.env, &doc.env, &shared.env);
    }

    // The operator commands' own flags are documented under Operations.
    let operations = &guide[guide.find("\n## Operations\n").expect("an Operations section")..];
    for command in ["status", "reprocess", "reset", "verify", "report"] {
        assert!(operations.contains(&format!("streamer {command}")), "Operations does not show `streamer {command}`");
        let run = streamer_help(&[]);
        for flag in streamer_help(&[command]).flags.difference(&run.flags) {
            assert!(
                operations.contains(flag.as_str()),
                "`streamer {command} {flag}` is not documented under Operations"
            );
        }
    }
}

/// Grafana's macros for PostgreSQL, expanded as Grafana does, over a time
/// range that holds everything. Any other macro fails the test.
fn expand_grafana_macros(sql: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(i) = rest.find("$__") {
        out.push_str(&rest[..i]);
        let call = &rest[i..];
        let open = call.find('(').expect("a macro call");
        let close = call.find(')').expect("a closed macro call");
        let (name, args) = (&call[3..open], &call[open + 1..close]);
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        out.push_str(&match (name, args.as_slice()) {
            ("timeFilter", [column]) => {
                format!("{column} BETWEEN '2000-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'")
            }
            ("timeGroupAlias", [column, "'1m'"]) => format!("floor(extract(epoch from {column})/60)*60 AS \"time\""),
            _ => panic!("the test does not know the Grafana macro {}", &call[..=close]),
        });
        rest = &call[close + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn every_grafana_query_runs_on_a_loaded_database_and_agrees_with_events() -> TestResult {
    let datasources = yaml("deploy/grafana/provisioning/datasources/postgres.yml");
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("grafana-postgresql-datasource"));
    let uid = source["uid"].as_str().expect("a data source uid");
    let provider = yaml("deploy/grafana/provisioning/dashboards/pipeline.yml");
    assert_eq!(provider["providers"][0]["options"]["path"].as_str(), Some("/var/lib/grafana/dashboards"));
    assert!(read("docker-compose.yml").contains("./deploy/grafana/dashboards:/var/lib/grafana/dashboards"));

    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/dashboards/pipeline.json"))?;
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<(String, String)> = panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("a title").to_owned();
            p["targets"].as_array().expect("targets").iter().map(move |t| {
                assert_eq!(t["datasource"]["uid"].as_str(), Some(uid), "panel {title:?} uses another data source");
                (title.clone(), t["rawSql"].as_str().expect("rawSql").to_owned())
            })
        })
        .collect();
    for title in [
        "Events per minute",
        "Revenue by category per minute",
        "Conversion by category",
        "Ingest latency (file written → rows committed)",
    ] {
        assert!(queries.iter().any(|(t, _)| t == title), "the dashboard has no {title:?} panel");
    }

    // A database loaded over several minutes of event time, with bad rows.
    let db = TestDb::new().await;
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    std::fs::create_dir_all(&data)?;
    let mut g = Generator::new(
        Settings { seed: 5, min_events: 50, max_events: 200, bad_row_rate: 0.02, ..Settings::default() },
        "test",
    );
    for k in 0..12 {
        let f = g.next_file(instant("2026-01-01T00:00:00Z") + chrono::TimeDelta::seconds(40 * k));
        runtime::publish::publish(&data, &f.name, &f.contents)?;
    }
    streamer::run(args(&data, &cp, &db.url, &["--once", "--max-files-per-batch", "3"]), Default::default()).await?;
    let client = db.client().await;

    for (title, sql) in &queries {
        let rows = client.query(&expand_grafana_macros(sql), &[]).await.map_err(|e| {
            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
            format!("panel {title:?}: {why}\n{sql}")
        })?;
        assert!(!rows.is_empty(), "panel {title:?} shows nothing");
    }

    // Totals the panels show agree with the table.
    let sql = |title: &str| expand_grafana_macros(&queries.iter().find(|(t, _)| t == title).expect("panel").1);
    let events = count(&client, "SELECT count(*) FROM events").await;
    let per_minute = client
        .query_one(
            &format!("SELECT sum(views + purchases)::bigint, count(*) FROM ({}) p", sql("Events per minute")),
            &[],
        )
        .await?;
    assert_eq!(per_minute.get::<_, i64>(0), events);
    assert!(per_minute.get::<_, i64>(1) >= 8, "twelve files 40 s apart span at least eight minutes");
    let revenue = "SELECT sum(product_price)::text FROM events WHERE event_type = 'purchase'";
    let expected: String = client.query_one(revenue, &[]).await?.get(0);
    let shown: String = client
        .query_one(&format!("SELECT sum(revenue)::text FROM ({}) p", sql("Revenue by category per minute")), &[])
        .await?
        .get(0);
    assert_eq!(shown, expected);
    let funnel: String = client
        .query_one(&format!("SELECT sum(revenue)::text FROM ({}) p", sql("Conversion by category")), &[])
        .await?
        .get(0);
    assert_eq!(funnel, expected);
    let rejected: i64 = client.query_one(&sql("Rows rejected"), &[]).await?.get(0);
    assert!(rejected > 0 && rejected == count(&client, "SELECT count(*) FROM rejected_rows").await);
    let files: i64 = client.query_one(&sql("Files loaded"), &[]).await?.get(0);
    assert_eq!(files, 12);
    Ok(())
}
