//! `streamer report NAME`: the report functions of db/004_reports.sql over a
//! time range, printed as a table (comfy-table) or CSV, to stdout or a file.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{Args, ValueEnum};
use runtime::ConfigError;

use crate::pg::{describe, text_rows, TextRows};

/// The reports, each a function of db/004_reports.sql (and a view over all time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportName {
    /// Views, purchases and conversion per category (view `conversion_funnel`).
    Funnel,
    /// Products by revenue (view `top_products`).
    TopProducts,
    /// Views, purchases, revenue and conversion per metrics window (view `revenue_per_window`).
    Revenue,
    /// Users by number of events (view `most_active_users`).
    ActiveUsers,
    /// Files, rows, rejects and latency per hour, from the load history (view `ingest_health`).
    Ingest,
}

impl ReportName {
    /// The SQL function behind the report, and whether it takes `top`.
    pub fn function(self) -> (&'static str, bool) {
        match self {
            ReportName::Funnel => ("report_conversion_funnel", false),
            ReportName::TopProducts => ("report_top_products", true),
            ReportName::Revenue => ("report_revenue_per_window", false),
            ReportName::ActiveUsers => ("report_most_active_users", true),
            ReportName::Ingest => ("report_ingest_health", false),
        }
    }

    /// Whether the report reads the derived tables (and is behind `events`
    /// while the analytics applier is).
    pub fn derived(self) -> bool {
        matches!(self, ReportName::Funnel | ReportName::Revenue)
    }
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
}

/// `streamer report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    pub name: ReportName,

    /// From this time on (inclusive): RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM[:SS]` in UTC.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub since: Option<DateTime<Utc>>,

    /// Up to this time (exclusive), same forms as --since.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub until: Option<DateTime<Utc>>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,

    /// Write to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Rows of top-products and active-users.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: u32,

    #[command(flatten)]
    pub state: crate::config::StateArgs,
}

/// A time given on the command line, in UTC unless it says otherwise.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err("not a time: use RFC 3339 (2026-01-01T10:00:00Z), 2026-01-01 or 2026-01-01 10:00 (UTC)".into())
}

/// The statement of a report: times are formatted by us, never pasted from input.
pub fn report_sql(name: ReportName, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>, top: u32) -> String {
    let time = |t: Option<DateTime<Utc>>| {
        t.map_or("NULL".to_owned(), |t| format!("'{}'::timestamptz", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")))
    };
    let (function, takes_top) = name.function();
    let top = if takes_top { format!(", {top}") } else { String::new() };
    format!("SET TIME ZONE 'UTC'; SELECT * FROM {function}({}, {}{top})", time(since), time(until))
}

/// Runs the report and prints it.
pub async fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let url = args
        .state
        .url()
        .map_err(|e| ConfigError::new(e.setting, format!("{} (the report reads the database)", e.message)))?;
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            return Err(ConfigError::new("--since/--until", "--since must be before --until").into());
        }
    }
    let client = crate::pg::connect(&url, "streamer-report")
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {}", describe(&e)))?;
    let sql = report_sql(args.name, args.since, args.until, args.top);
    let rows = text_rows(&client, &sql).await.map_err(|e| {
        anyhow::anyhow!("the report failed: {} (has a streamer of this version run on this database?)", describe(&e))
    })?;
    if args.name.derived() {
        if let Ok(lag) = crate::applier::lag(&client).await {
            if lag.batches > 0 {
                eprintln!(
                    "note: the analytics are {} batches ({:.0} s) behind the events table; this report leaves them out \
                     until a streamer with ANALYTICS=true folds them in",
                    lag.batches, lag.seconds
                );
            }
        }
    }
    let text = match args.format {
        ReportFormat::Csv => to_csv(&rows)?,
        ReportFormat::Table => to_table(&rows),
    };
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes()).context("cannot write to stdout")?,
    }
    Ok(())
}

pub fn to_csv(rows: &TextRows) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&rows.columns)?;
    for row in &rows.rows {
        w.write_record(row.iter().map(|v| v.as_deref().unwrap_or_default()))?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?)
}

pub fn to_table(rows: &TextRows) -> String {
    use comfy_table::{CellAlignment, Table};
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(&rows.columns);
    table.add_rows(rows.rows.iter().map(|r| r.iter().map(|v| v.clone().unwrap_or_default())));
    // Numbers to the right, as a spreadsheet would.
    for (i, column) in table.column_iter_mut().enumerate() {
        let numeric = !rows.rows.is_empty()
            && rows.rows.iter().all(|r| r.get(i).and_then(|v| v.as_deref()).is_none_or(|v| v.parse::<f64>().is_ok()));
        if numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = table.to_string();
    out.push('\n');
    if rows.rows.is_empty() {
        out.push_str("(no rows)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_the_usual_forms_and_always_in_utc() {
        let t = |s: &str| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(t("2026-03-01T10:00:00+02:00"), Ok("2026-03-01T08:00:00+00:00".into()));
        assert_eq!(t("2026-03-01 10:00"), Ok("2026-03-01T10:00:00+00:00".into()));
        assert_eq!(t("2026-03-01 10:00:30"), Ok("2026-03-01T10:00:30+00:00".into()));
        assert_eq!(t("2026-03-01"), Ok("2026-03-01T00:00:00+00:00".into()));
        assert!(t("yesterday").is_err());
        assert!(t("2026-03-01'; DROP TABLE events; --").is_err());
    }

    #[test]
    fn the_statement_names_the_function_and_formats_the_range_itself() {
        let since = parse_time("2026-03-01 10:00").ok();
        assert_eq!(
            report_sql(ReportName::TopProducts, since, None, 5),
            "SET TIME ZONE 'UTC'; SELECT * FROM report_top_products('2026-03-01T10:00:00.000000Z'::timestamptz, NULL, 5)"
        );
        assert_eq!(
            report_sql(ReportName::Funnel, None, None, 5),
            "SET TIME ZONE 'UTC'; SELECT * FROM report_conversion_funnel(NULL, NULL)"
        );
    }

    #[test]
    fn tables_align_numbers_right_and_say_when_empty() {
        let rows = TextRows {
            columns: vec!["category".into(), "views".into()],
            rows: vec![vec![Some("Books".into()), Some("7".into())], vec![Some("Toys".into()), Some("12".into())]],
        };
        let table = to_table(&rows);
        assert!(table.contains("│ Books    ┆     7 │"), "{table}");
        assert_eq!(to_csv(&rows).ok().as_deref(), Some("category,views\nBooks,7\nToys,12\n"));
        let empty = to_table(&TextRows { columns: vec!["a".into()], rows: vec![] });
        assert!(empty.ends_with("(no rows)\n"), "{empty}");
    }
}
