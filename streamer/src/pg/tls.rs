//! TLS to PostgreSQL as libpq means it: `sslmode` from `disable` to
//! `verify-full`, `sslrootcert` (a PEM file, or `system` for the operating
//! system's CAs) and a client certificate (`sslcert`, `sslkey`), through
//! rustls. tokio-postgres itself knows only `disable`, `prefer` and
//! `require`; what is checked of the server's certificate is decided here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conninfo::ConnInfo;

/// `sslmode`, as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (libpq's `allow` is read as this too),
    /// the certificate unchecked. libpq's default.
    Prefer,
    /// TLS or no connection; the certificate checked only if a root
    /// certificate file is there (then as `verify-ca`).
    Require,
    /// TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and made out to the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Which CAs are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`.
    System,
}

/// Where libpq looks for a file when the string does not name it.
fn default_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

fn setting(info: &mut ConnInfo, key: &str, env: &str) -> Option<String> {
    info.take(key).or_else(|| std::env::var(env).ok()).filter(|v| !v.is_empty())
}

impl TlsSettings {
    /// Takes the TLS settings out of `info` (falling back to `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY`, then to libpq's files
    /// under `~/.postgresql/`), with libpq's rules between them.
    pub fn take(info: &mut ConnInfo) -> Result<TlsSettings, String> {
        let mode = setting(info, "sslmode", "PGSSLMODE");
        let root = setting(info, "sslrootcert", "PGSSLROOTCERT");
        let cert = setting(info, "sslcert", "PGSSLCERT");
        let key = setting(info, "sslkey", "PGSSLKEY");
        let root_cert = match root.as_deref() {
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
            None => default_file("root.crt").filter(|p| p.is_file()).map(RootCert::File),
        };
        let mode = match (mode.as_deref(), &root_cert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
            (Some(mode), _) => SslMode::parse(mode)?,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (any CA of the system could vouch for any host), not {}",
                mode_name(mode)
            ));
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert: a CA certificate file, or `system` for the system's CAs",
                mode_name(mode)
            ));
        }
        let client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (Some(_), None) | (None, Some(_)) => {
                return Err("sslcert and sslkey go together: set both or neither".to_owned());
            }
            (None, None) => match (default_file("postgresql.crt"), default_file("postgresql.key")) {
                (Some(cert), Some(key)) if cert.is_file() && key.is_file() => Some((cert, key)),
                _ => None,
            },
        };
        Ok(TlsSettings { mode, root_cert, client_cert })
    }

    /// What tokio-postgres is to do: its own mode and, unless TLS is off,
    /// the rustls configuration that checks what this mode checks.
    pub fn client_config(&self) -> Result<(tokio_postgres::config::SslMode, Option<ClientConfig>), String> {
        use tokio_postgres::config::SslMode as Pg;
        let pg_mode = match self.mode {
            SslMode::Disable => return Ok((Pg::Disable, None)),
            SslMode::Prefer => Pg::Prefer,
            _ => Pg::Require,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = match (self.mode, &self.root_cert) {
            (SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
            (SslMode::VerifyFull, Some(root)) => Check::Full(root),
            (_, Some(root)) => Check::Ca(root),
            (_, None) => Check::Nothing,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(Unchecked(provider.clone())),
            Check::Ca(root) => Arc::new(AnyName(webpki(root, &provider)?)),
            Check::Full(root) => webpki(root, &provider)?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let certs = certificates(cert, "sslcert")?;
                let bytes = read(key, "sslkey")?;
                let key = PrivateKeyDer::from_pem_slice(&bytes)
                    .map_err(|e| format!("sslkey {}: no private key in PEM form ({e})", key.display()))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
        };
        Ok((pg_mode, Some(config)))
    }
}

enum Check<'a> {
    Nothing,
    Ca(&'a RootCert),
    Full(&'a RootCert),
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting} {}: {e}", path.display()))
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

fn webpki(root: &RootCert, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            for cert in certificates(path, "sslrootcert")? {
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("sslrootcert=system: the system has no CA certificates (install ca-certificates)".into());
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("sslrootcert: {e}"))
}

/// `prefer` and `require` without a root certificate: encryption, no
/// check of who is at the other end (what libpq does). Nor is the
/// handshake's signature checked against the certificate: with the
/// certificate unchecked it proves nothing, and webpki cannot even read the
/// X.509 v1 certificates that Citus and older tools make for themselves
/// (OpenSSL, and so libpq, accepts them).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name on the
/// certificate is not compared with the host (webpki checks the chain
/// first, so a name error means the chain was good).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(s: &str) -> Result<TlsSettings, String> {
        TlsSettings::take(&mut ConnInfo::parse(s).expect("parse"))
    }

    #[test]
    fn modes_and_root_certificates_follow_libpq() {
        assert_eq!(settings("host=db sslmode=disable").map(|s| s.mode), Ok(SslMode::Disable));
        assert_eq!(settings("host=db sslmode=allow").map(|s| s.mode), Ok(SslMode::Prefer));
        let system = settings("postgres://db/x?sslrootcert=system").expect("system");
        assert_eq!((system.mode, system.root_cert), (SslMode::VerifyFull, Some(RootCert::System)));
        assert!(settings("host=db sslrootcert=system sslmode=require").expect_err("refused").contains("verify-full"));
        assert!(settings("host=db sslmode=verify-full sslrootcert=/nonexistent")
            .expect("settings")
            .client_config()
            .expect_err("refused")
            .contains("/nonexistent"));
        assert!(settings("host=db sslmode=bogus").expect_err("refused").contains("not one of"));
        assert!(settings("host=db sslcert=/c.pem").expect_err("refused").contains("together"));
    }
}
