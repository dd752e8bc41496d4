//! PostgreSQL plumbing every part of the streamer shares: opening a session
//! with the settings the streamer needs whatever the role's defaults
//! ([`Session`]), saying what an error was ([`describe`]) and what to do
//! about it ([`classify`]), waiting between attempts ([`Backoff`]), keeping
//! text PostgreSQL can store ([`text`]), and reading a query's result as
//! text ([`text_rows`], for the reports and the dashboard). Every
//! connection goes to a [`Target`]: the connection string read once, its
//! TLS settings made into a rustls configuration, shown only redacted.

pub mod conninfo;
pub mod tls;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use backon::BackoffBuilder as _;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use self::conninfo::ConnInfo;
use self::tls::TlsSettings;

/// The connection's `application_name` unless the URL sets one: the
/// streamer's sessions are easy to find in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "streamer";

/// What a streamer session sets for itself, so that a role's or a server's
/// defaults cannot change what the protocol relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `statement_timeout`: no statement runs longer (a frozen client in the
    /// middle of a COPY loses its claims after this long).
    pub statement_timeout: Duration,
    /// `idle_in_transaction_session_timeout`, and the TCP keepalive and
    /// user timeouts on both ends: a streamer frozen or cut off between two
    /// statements of a batch loses its session, hence its claims, after
    /// about this long.
    pub idle_timeout: Duration,
    /// `idle_session_timeout`: a session idle outside a transaction for this
    /// long ends (a frozen streamer's roles are then taken over). Longer
    /// than a healthy session ever waits between two statements.
    pub idle_session_timeout: Duration,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            statement_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            idle_session_timeout: Duration::from_secs(60),
        }
    }
}

impl Session {
    /// The statements run once per session: commits are durable before the
    /// streamer marks them (`synchronous_commit = on` whatever the server's
    /// default); JIT off (compiling the batch statements took about 200 ms a
    /// batch, a temporary table having no statistics); the timeouts above.
    /// On a Citus coordinator, a worker that cannot be reached fails the
    /// statement within half the statement timeout (a lost connection:
    /// retried), rather than letting it time out (which would split the
    /// batch as if its files were too big); elsewhere the `citus.` setting
    /// is an unused placeholder.
    pub fn setup_sql(&self) -> String {
        let keepalive_idle = (self.idle_timeout.as_secs() / 3).max(1);
        let keepalive_interval = (self.idle_timeout.as_secs() / 9).max(1);
        let node_connect = (self.statement_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        format!(
            "SET synchronous_commit = on; SET jit = off; SET statement_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}; SET idle_session_timeout = {}; \
             SET tcp_keepalives_idle = {keepalive_idle}; SET tcp_keepalives_interval = {keepalive_interval}; \
             SET tcp_keepalives_count = 3; SET tcp_user_timeout = {}; SET citus.node_connection_timeout = {}",
            self.statement_timeout.as_millis(),
            self.idle_timeout.as_millis(),
            self.idle_session_timeout.as_millis(),
            self.idle_timeout.as_millis(),
            node_connect.as_millis(),
        )
    }

    fn apply_to(&self, config: &mut tokio_postgres::Config) {
        let idle = (self.idle_timeout / 3).max(Duration::from_secs(1));
        config
            .keepalives(true)
            .keepalives_idle(idle)
            .keepalives_interval((self.idle_timeout / 9).max(Duration::from_secs(1)))
            .keepalives_retries(3)
            .tcp_user_timeout(self.idle_timeout);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
    }
}

/// A database to connect to: the connection string as tokio-postgres
/// reads it, and the TLS it asks for. Shown (`Display`, `Debug`) with its
/// passwords masked.
#[derive(Clone)]
pub struct Target {
    info: ConnInfo,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Target {
    /// Reads a URL or key/value connection string, with libpq's TLS
    /// settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`; see
    /// [`tls`]). Says what is wrong, never echoing the string.
    pub fn parse(url: &str) -> Result<Target, String> {
        let info = ConnInfo::parse(url).map_err(|e| e.to_string())?;
        let mut rest = info.clone();
        let tls = TlsSettings::take(&mut rest)?;
        let mut config: tokio_postgres::Config =
            rest.to_connection_string().parse().map_err(|e: tokio_postgres::Error| describe(&e))?;
        let (mode, client_config) = tls.client_config()?;
        config.ssl_mode(mode);
        // Off, the configuration is never used; a default one keeps one type.
        let client_config = match client_config {
            Some(c) => c,
            None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        Ok(Target { info, config, tls: MakeRustlsConnect::new(client_config) })
    }

    fn config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.info.redacted())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Target").field(&self.info.redacted()).finish()
    }
}

/// Opens a plain session to `target` (operator commands, reports, the HTTP
/// side); the connection is driven by a task of its own until the client is
/// dropped. `application_name` applies unless the URL sets one.
pub async fn connect(target: &Target, application_name: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = target.config(application_name).connect(target.tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// Opens a streamer session: [`Session`]'s settings applied on both ends.
/// Notifications the server sends (`LISTEN`) arrive on the receiver.
pub async fn connect_session(
    target: &Target,
    application_name: &str,
    session: &Session,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
    let mut config = target.config(application_name);
    session.apply_to(&mut config);
    let (client, mut connection) = config.connect(target.tls.clone()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "database connection closed");
                    break;
                }
            }
        }
    });
    client.batch_execute(&session.setup_sql()).await?;
    Ok((client, rx))
}

/// A PostgreSQL error with what the server or the socket said: the message
/// and SQLSTATE of a database error, else the chain of causes. (The plain
/// `Display` of tokio-postgres says only "db error".) Never holds the URL.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; {detail}"));
        }
        return out;
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

/// What an error tells the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection is gone, the server is starting, stopping or read-only
    /// for a failover, or it asked for a retry: the same work later.
    Transient,
    /// The server refused the data (SQLSTATE classes 21, 22, 23) or a value
    /// could not be encoded: the batch's file is to be isolated.
    Data,
    /// A statement ran past `statement_timeout` (or was cancelled).
    Timeout,
    /// Retrying cannot help: authentication, permissions, a missing
    /// database or object, a setting the server refuses.
    Fatal,
}

/// Sorts an error by what helps (see [`ErrorClass`]).
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    if let Some(db) = e.as_db_error() {
        if db.code().code() == "XX000" && lost_a_node(db.message()) {
            return ErrorClass::Transient;
        }
    }
    if let Some(code) = e.code() {
        return classify_sqlstate(code.code());
    }
    // No SQLSTATE: a failure on the client side.
    let text = e.to_string();
    if text.starts_with("error serializing parameter") || text.starts_with("error encoding message") {
        return ErrorClass::Data;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            // rustls refusing the server's certificate (or the server ours)
            // says the same at every try.
            return match io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::AlertReceived(_),
                ) => ErrorClass::Fatal,
                _ => ErrorClass::Transient,
            };
        }
        source = cause.source();
    }
    match text.as_str() {
        // Also "server does not support TLS" under sslmode=require.
        "authentication error"
        | "invalid connection string"
        | "invalid configuration"
        | "error performing TLS handshake" => ErrorClass::Fatal,
        // Connect, I/O, a timeout waiting for the server, a protocol hiccup.
        _ => ErrorClass::Transient,
    }
}

/// Whether an internal error (XX000) is a Citus coordinator passing on that
/// it lost its connection to a worker (the worker died or restarts): the
/// same work succeeds once the worker is back. Citus reports these with
/// libpq's own words rather than a connection SQLSTATE.
pub fn lost_a_node(message: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "server closed the connection unexpectedly",
        "failure on connection marked as essential",
        "SSL SYSCALL error",
        "invalid socket",
        "connection to the remote node",
        "could not connect to server",
        "terminating connection due to administrator command",
        "lost connection",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

/// [`classify`] by SQLSTATE alone.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // The database does not exist yet: it may be being created (a
        // container's first start, a managed database being provisioned).
        "3D000" => ErrorClass::Transient,
        "57014" => ErrorClass::Timeout,
        // serialization failure, deadlock, admin or crash shutdown, cannot
        // connect now, lock not available, read-only (a failover), idle
        // timeouts (the session ends), object in use
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "25006" | "25P03" | "57P05" | "55006" => {
            ErrorClass::Transient
        }
        _ => match &code[..code.len().min(2)] {
            // connection exception, insufficient resources (disk full, too
            // many connections), system error (I/O), operator intervention
            "08" | "53" | "58" | "57" => ErrorClass::Transient,
            "21" | "22" | "23" => ErrorClass::Data,
            _ => ErrorClass::Fatal,
        },
    }
}

/// Capped exponential backoff with jitter, from 100 ms: each wait is the
/// last doubled, plus up to as much again at random (so that streamers that
/// failed together do not retry together), and never more than `max`.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        let delays = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100).min(max))
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    /// The wait to make now.
    pub fn step(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }
}

/// Text as PostgreSQL can store it: a NUL character (which `text` cannot
/// hold) is spelled `\0`. Every string built from input passes here on its
/// way to the database (reasons, raw lines, header text, file names).
pub fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(s)
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_citus_worker_lost_mid_statement_is_transient_and_other_internal_errors_are_not() {
        use super::lost_a_node;
        // As a coordinator said them when a worker was killed (chaos test).
        assert!(lost_a_node("SSL SYSCALL error: EOF detected\ninvalid socket"));
        assert!(lost_a_node(
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally"
        ));
        assert!(lost_a_node(
            "connection to the remote node postgres@127.0.0.1:41849 failed with the following error: x"
        ));
        assert!(lost_a_node("failure on connection marked as essential: 127.0.0.1:32901"));
        assert!(!lost_a_node("cannot execute a distributed query from a query on a shard"));
        assert!(!lost_a_node("non-IMMUTABLE functions are not allowed in CASE or COALESCE statements"));
    }

    use super::*;

    #[test]
    fn sqlstates_are_sorted_by_what_helps() {
        for (code, class) in [
            ("08006", ErrorClass::Transient),
            ("40001", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("57P01", ErrorClass::Transient),
            ("53100", ErrorClass::Transient),
            ("53300", ErrorClass::Transient),
            ("25006", ErrorClass::Transient),
            ("57014", ErrorClass::Timeout),
            ("22021", ErrorClass::Data),
            ("22008", ErrorClass::Data),
            ("22003", ErrorClass::Data),
            ("23514", ErrorClass::Data),
            ("21000", ErrorClass::Data),
            ("28P01", ErrorClass::Fatal),
            ("42501", ErrorClass::Fatal),
            ("3D000", ErrorClass::Transient),
            ("28000", ErrorClass::Fatal),
            ("42P01", ErrorClass::Fatal),
        ] {
            assert_eq!(classify_sqlstate(code), class, "{code}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_never_passes_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let waits: Vec<Duration> = (0..12).map(|_| b.step()).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(500)), "{waits:?}");
        assert!(waits[11] >= Duration::from_millis(250), "{waits:?}");
    }

    #[test]
    fn text_for_postgresql_has_no_nul() {
        assert_eq!(text("a\0b"), "a\\0b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn the_session_sets_its_own_timeouts() {
        let s = Session {
            statement_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(9),
            idle_session_timeout: Duration::from_secs(20),
        };
        assert_eq!(
            s.setup_sql(),
            "SET synchronous_commit = on; SET jit = off; SET statement_timeout = 30000; \
             SET idle_in_transaction_session_timeout = 9000; SET idle_session_timeout = 20000; \
             SET tcp_keepalives_idle = 3; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; \
             SET tcp_user_timeout = 9000; SET citus.node_connection_timeout = 15000"
        );
    }
}
