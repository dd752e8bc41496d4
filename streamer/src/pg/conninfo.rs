//! Connection strings read the way libpq reads them — a URL
//! (`postgres://user:password@host:5432/db?key=value`) or key/value pairs
//! (`host=db user=app password='a b'`) — so that the streamer can take out
//! the settings it handles itself (the TLS ones) and show a string with its
//! passwords masked. Redaction works on the parsed parts, never by
//! searching the text, so no spelling of a password survives it.

use std::fmt;

use percent_encoding::percent_decode_str;

/// A connection string taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    form: Form,
    /// The parameters, decoded, in the order given (the URL's query, or
    /// every pair of the key/value form). The last of a key wins.
    params: Vec<Param>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Url {
        /// `postgres://` or `postgresql://`.
        scheme: String,
        /// The user name, decoded.
        user: Option<String>,
        /// The password, decoded.
        password: Option<String>,
        /// Hosts, ports and database name, as written.
        rest: String,
    },
    KeyValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Param {
    key: String,
    value: String,
}

/// Why a connection string cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ConnInfo {
    pub fn parse(s: &str) -> Result<ConnInfo, ParseError> {
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = s.strip_prefix(scheme) {
                return Ok(parse_url(scheme, rest));
            }
        }
        if s.contains("://") {
            return Err(ParseError("a URL must start with postgres:// or postgresql://".into()));
        }
        parse_key_value(s).map(|params| ConnInfo { form: Form::KeyValue, params })
    }

    /// The value of `key`, if set (the last one when set twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|p| p.key == key).map(|p| p.value.as_str())
    }

    /// Takes `key` out of the string, returning its value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let value = self.get(key).map(str::to_owned);
        self.params.retain(|p| p.key != key);
        value
    }

    /// The string again, as tokio-postgres is to read it.
    pub fn to_connection_string(&self) -> String {
        self.render(false)
    }

    /// The string with every password (the URL's, and any parameter whose
    /// name ends in `password`) replaced by `***`.
    pub fn redacted(&self) -> String {
        self.render(true)
    }

    fn render(&self, mask: bool) -> String {
        let secret = |p: &Param| mask && p.key.ends_with("password");
        match &self.form {
            // Written again encoded, so that tokio-postgres (which ends the
            // credentials at the first `@`) reads what libpq would.
            Form::Url { scheme, user, password, rest } => {
                let mut out = scheme.clone();
                if let Some(user) = user {
                    out.push_str(&encode(user));
                    match password {
                        Some(_) if mask => out.push_str(":***"),
                        Some(password) => out.push_str(&format!(":{}", encode(password))),
                        None => {}
                    }
                    out.push('@');
                }
                out.push_str(rest);
                for (i, p) in self.params.iter().enumerate() {
                    out.push(if i == 0 { '?' } else { '&' });
                    let value = if secret(p) { "***".to_owned() } else { encode(&p.value) };
                    out.push_str(&format!("{}={value}", encode(&p.key)));
                }
                out
            }
            Form::KeyValue => self
                .params
                .iter()
                .map(|p| format!("{}={}", p.key, if secret(p) { "***".to_owned() } else { quote(&p.value) }))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// `s` with its password masked, for logs and messages; a string that
/// cannot be read is not shown at all (it may be mostly password).
pub fn redact(s: &str) -> String {
    match ConnInfo::parse(s) {
        Ok(info) => info.redacted(),
        Err(_) => "(a connection string that cannot be read)".to_owned(),
    }
}

impl fmt::Display for ConnInfo {
    /// Always the redacted form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn parse_url(scheme: &str, s: &str) -> ConnInfo {
    let (head, query) = match s.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (s, None),
    };
    // The credentials end at the last `@` before the query: a password with
    // an `@` or a `/` in it is masked whole rather than cut.
    let (user, password, rest) = match head.rfind('@') {
        Some(at) => {
            let (user, password) = match head[..at].split_once(':') {
                Some((user, password)) => (user, Some(decode(password))),
                None => (&head[..at], None),
            };
            (Some(decode(user)), password, head[at + 1..].to_owned())
        }
        None => (None, None, head.to_owned()),
    };
    let mut params = Vec::new();
    for raw in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = raw.split_once('=').unwrap_or((raw, ""));
        params.push(Param { key: decode(key), value: decode(value) });
    }
    ConnInfo { form: Form::Url { scheme: scheme.to_owned(), user, password, rest }, params }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Percent-encodes what a URL's query cannot hold as is.
fn encode(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// A key/value string's value, quoted when it must be.
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq's key/value grammar: `key = value` pairs separated by white
/// space; a value is single-quoted or runs to the next white space; a
/// backslash escapes the next character in either.
fn parse_key_value(s: &str) -> Result<Vec<Param>, ParseError> {
    let mut params = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ParseError(format!("`{key}` has no `=` after it")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ParseError(format!("the quoted value of `{key}` is not closed"))),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(ParseError(format!("`{key}` has no value")));
            }
        }
        params.push(Param { key, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        for (given, shown) in [
            ("postgres://app:s3cret@db:5432/events", "postgres://app:***@db:5432/events"),
            ("postgresql://app@db/events", "postgresql://app@db/events"),
            (
                "postgres://db/events?password=s3cret&sslmode=disable",
                "postgres://db/events?password=***&sslmode=disable",
            ),
            ("postgres://db/events?pass%77ord=s3cret", "postgres://db/events?password=***"),
            ("postgres://a:p@ss@db/x", "postgres://a:***@db/x"),
            ("postgres://a:p/ss@db/x", "postgres://a:***@db/x"),
            ("postgres://db/x?application_name=a@b", "postgres://db/x?application_name=a%40b"),
            ("host=db password=s3cret user=app", "host=db password=*** user=app"),
            ("host=db password = s3cret user=app", "host=db password=*** user=app"),
            ("host=db password='s3 cret' user=app", "host=db password=*** user=app"),
            ("host=db password='it\\'s' user=app", "host=db password=*** user=app"),
            ("host=db password=s3\\ cret", "host=db password=***"),
            ("host=db sslpassword=k3y", "host=db sslpassword=***"),
            ("host=db password='never closed", "(a connection string that cannot be read)"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn settings_can_be_taken_out_and_the_rest_reads_the_same() {
        let mut info = ConnInfo::parse(
            "postgres://u:p%40ss@h1:5432,h2/db?sslmode=verify-full&application_name=a%20b&sslrootcert=%2Fca.pem",
        )
        .expect("parse");
        assert_eq!(info.take("sslmode").as_deref(), Some("verify-full"));
        assert_eq!(info.take("sslrootcert").as_deref(), Some("/ca.pem"));
        assert_eq!(info.to_connection_string(), "postgres://u:p%40ss@h1:5432,h2/db?application_name=a%20b");
        let config: tokio_postgres::Config = info.to_connection_string().parse().expect("tokio-postgres reads it");
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_application_name(), Some("a b"));
        // An `@` left unencoded in a password stays in the password.
        let info = ConnInfo::parse("postgres://u:p@ss@h/db").expect("parse");
        let config: tokio_postgres::Config = info.to_connection_string().parse().expect("tokio-postgres reads it");
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));

        let mut info = ConnInfo::parse("host=db user=app password='a \\'b' sslmode = require").expect("parse");
        assert_eq!(info.take("sslmode").as_deref(), Some("require"));
        let config: tokio_postgres::Config = info.to_connection_string().parse().expect("tokio-postgres reads it");
        assert_eq!(config.get_password(), Some(&b"a 'b"[..]));
        assert_eq!(config.get_user(), Some("app"));
    }

    #[test]
    fn broken_strings_say_what_is_wrong() {
        assert!(ConnInfo::parse("host").expect_err("refused").0.contains("no `=`"));
        assert!(ConnInfo::parse("host=").expect_err("refused").0.contains("no value"));
        assert!(ConnInfo::parse("mysql://db").expect_err("refused").0.contains("postgres://"));
    }
}
