//! PostgreSQL plumbing every part of the streamer shares: opening a session
//! ([`connect`], with the streamer's `application_name`), saying what an
//! error was ([`describe`]), and reading a query's result as text
//! ([`text_rows`], for the reports and the dashboard).

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The connection's `application_name` unless the URL sets one: the
/// streamer's sessions are easy to find in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "streamer";

/// Opens a session to `url`; the connection is driven by a task of its own
/// until the client is dropped. `application_name` applies unless the URL
/// sets one.
pub async fn connect(url: &str, application_name: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A PostgreSQL error with what the server or the socket said: the message
/// and SQLSTATE of a database error, else the chain of causes. (The plain
/// `Display` of tokio-postgres says only "db error".) Never holds the URL.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// A query's result as text, the way PostgreSQL prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Runs `sql` (simple protocol) and keeps the last statement's rows as text.
pub async fn text_rows(client: &Client, sql: &str) -> Result<TextRows, tokio_postgres::Error> {
    let mut out = TextRows::default();
    for message in client.simple_query(sql).await? {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                out.columns = columns.iter().map(|c| c.name().to_owned()).collect();
                out.rows.clear();
            }
            SimpleQueryMessage::Row(row) => {
                out.rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
            _ => {}
        }
    }
    Ok(out)
}
