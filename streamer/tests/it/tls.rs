//! TLS and authentication through the real binary, against a throwaway
//! PostgreSQL that offers TLS with a certificate of a test CA and refuses
//! every connection without it: each libpq `sslmode` does what libpq's
//! does (a wrong host name refused under `verify-full`, any name under
//! `verify-ca`, no check under `require`), a client certificate logs in,
//! and a wrong password or a refused setting stops with a clear message.

use std::path::Path;

use crate::common::*;
use generator::Settings;

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A CA that signed nothing the server holds.
    other_ca: String,
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key")).expect("CA")
}

fn pki() -> Pki {
    let ca = ca("pipeline test CA");
    // The server's certificate names `localhost` only, not 127.0.0.1.
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let client_key = rcgen::KeyPair::generate().expect("key");
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(rcgen::DnType::CommonName, "certuser");
    let client = client.signed_by(&client_key, &ca).expect("client certificate");
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        other_ca: self::ca("someone else's CA").pem(),
    }
}

/// A cluster that speaks TLS only: `postgres` trusted over TLS, `app` by
/// password over TLS, `certuser` by client certificate; no plain TCP.
fn tls_cluster(pki: &Pki) -> TempCluster {
    let cluster = TempCluster::init();
    let cert = cluster.private_file("server.crt", &pki.server_cert);
    let key = cluster.private_file("server.key", &pki.server_key);
    let ca = cluster.private_file("ca.crt", &pki.ca);
    cluster.configure(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\npassword_encryption = 'scram-sha-256'",
        cert.display(),
        key.display(),
        ca.display()
    ));
    cluster.hba(
        "local all all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         hostssl all app 127.0.0.1/32 scram-sha-256\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         host all all 0.0.0.0/0 reject\n",
    );
    cluster.up();
    cluster
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("written");
    path.display().to_string()
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stderr: String,
}

/// `streamer --once` on a folder of two generated files with `url`.
fn run_once(url: &str, tag: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    generate(&data, Settings { seed: 77, min_events: 20, max_events: 40, ..Settings::default() }, 2);
    let out = streamer_bin(&data, &cp, url, &["--once", "--source-id", tag], &[("HOME", "/nonexistent")])
        .output()
        .expect("streamer runs");
    Run { ok: out.status.success(), code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

async fn loaded(cluster: &TempCluster, source: &str) -> i64 {
    loaded_in(cluster, "postgres", source).await
}

async fn loaded_in(cluster: &TempCluster, database: &str, source: &str) -> i64 {
    let client =
        connect(&format!("host={} port={} user=postgres dbname={database}", cluster.socket_dir(), cluster.port)).await;
    client
        .query_one("SELECT count(*) FROM source_files WHERE source = $1 AND state = 'loaded'", &[&source])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test]
async fn every_sslmode_checks_what_libpq_checks() -> TestResult {
    let pki = pki();
    let cluster = tokio::task::spawn_blocking(move || {
        let c = tls_cluster(&pki);
        (c, pki)
    })
    .await?;
    let (cluster, pki) = cluster;
    let files = tempfile::tempdir()?;
    let ca = write(files.path(), "ca.pem", &pki.ca);
    let other_ca = write(files.path(), "other.pem", &pki.other_ca);
    let port = cluster.port;
    let url = |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    // Checked and made out to the host: loads.
    let run = run_once(&url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), "full");
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(loaded(&cluster, "full").await, 2);

    // The same in the key/value form, with the values quoted.
    let kv =
        format!("host=localhost port={port} user=postgres dbname=postgres sslmode = 'verify-full' sslrootcert='{ca}'");
    let run = run_once(&kv, "kv");
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(loaded(&cluster, "kv").await, 2);

    // The certificate names localhost, not 127.0.0.1: refused under
    // verify-full, with the reason, at once (not retried forever).
    let run = run_once(&url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), "wrong-name");
    assert!(!run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("TLS") && run.stderr.contains("not valid for name"), "{}", run.stderr);
    assert_eq!(run.stderr.matches("waiting").count(), 0, "a certificate error is not retried: {}", run.stderr);

    // verify-ca checks the chain only: the same host is fine.
    let run = run_once(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), "ca");
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(loaded(&cluster, "ca").await, 2);

    // A CA that did not sign the server's certificate: refused, even under verify-ca.
    for mode in ["verify-ca", "verify-full"] {
        let run = run_once(&url("localhost", &format!("sslmode={mode}&sslrootcert={other_ca}")), "other");
        assert!(!run.ok && run.stderr.contains("UnknownIssuer"), "{mode}: {}", run.stderr);
    }

    // require and prefer encrypt without checking: load.
    for mode in ["require", "prefer"] {
        let run = run_once(&url("127.0.0.1", &format!("sslmode={mode}")), mode);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert_eq!(loaded(&cluster, mode).await, 2, "{mode}");
    }

    // disable: the server refuses a plain connection; said, not retried.
    let run = run_once(&url("127.0.0.1", "sslmode=disable"), "plain");
    assert!(!run.ok && run.stderr.contains("no encryption"), "{}", run.stderr);

    // Settings that cannot work are told at start, before any connection (exit 2).
    let run = run_once(&url("localhost", "sslmode=verify-full"), "no-root");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("needs sslrootcert"), "{}", run.stderr);
    let run = run_once(&url("localhost", "sslmode=sometimes"), "bogus");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("not one of"), "{}", run.stderr);
    let run = run_once(&url("localhost", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"), "missing");
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("/nonexistent/ca.pem"), "{}", run.stderr);
    Ok(())
}

#[tokio::test]
async fn passwords_and_client_certificates_over_tls() -> TestResult {
    let pki = pki();
    let (cluster, pki) = tokio::task::spawn_blocking(move || (tls_cluster(&pki), pki)).await?;
    let files = tempfile::tempdir()?;
    let ca = write(files.path(), "ca.pem", &pki.ca);
    let cert = write(files.path(), "client.pem", &pki.client_cert);
    let key = write(files.path(), "client.key", &pki.client_key);
    let admin =
        connect(&format!("host={} port={} user=postgres dbname=postgres", cluster.socket_dir(), cluster.port)).await;
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN PASSWORD 's3cret'; CREATE ROLE certuser LOGIN; \
             GRANT ALL ON SCHEMA public TO app",
        )
        .await?;
    admin.batch_execute("CREATE DATABASE certdb OWNER certuser").await?;
    let port = cluster.port;
    let tls = format!("sslmode=verify-full&sslrootcert={ca}");

    // The right password loads.
    let run = run_once(&format!("postgres://app:s3cret@localhost:{port}/postgres?{tls}"), "app");
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(loaded(&cluster, "app").await, 2);
    assert!(!run.stderr.contains("s3cret"), "the password never shows: {}", run.stderr);

    // A wrong one: a clear message, a non-zero exit at once, never the password.
    let run = run_once(&format!("postgres://app:wr0ng@localhost:{port}/postgres?{tls}"), "wrong");
    assert!(!run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("password authentication failed"), "{}", run.stderr);
    assert!(!run.stderr.contains("wr0ng"), "{}", run.stderr);
    assert_eq!(run.stderr.matches("waiting").count(), 0, "{}", run.stderr);

    // A client certificate made out to certuser logs in as certuser; the
    // settings can come from libpq's environment variables too.
    let dir = tempfile::tempdir()?;
    let (data, cp) = (dir.path().join("data"), dir.path().join("cp"));
    generate(&data, Settings { seed: 78, min_events: 20, max_events: 40, ..Settings::default() }, 2);
    let url = format!("postgres://certuser@localhost:{port}/certdb?sslcert={cert}&sslkey={key}");
    let env = [("HOME", "/nonexistent"), ("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let out = streamer_bin(&data, &cp, &url, &["--once", "--source-id", "cert"], &env).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(loaded_in(&cluster, "certdb", "cert").await, 2);

    // Without the certificate, certuser is refused.
    let run = run_once(&format!("postgres://certuser@localhost:{port}/certdb?{tls}"), "nocert");
    assert!(!run.ok && run.stderr.contains("certificate"), "{}", run.stderr);
    Ok(())
}

#[tokio::test]
async fn a_self_signed_v1_certificate_is_encrypted_to_under_prefer_and_require() -> TestResult {
    // X.509 v1, as Citus and `openssl x509 -req` without extensions make them:
    // webpki cannot read one, OpenSSL (so libpq) can; prefer and require check nothing of it.
    let (cluster, dir) = tokio::task::spawn_blocking(|| -> TestResult<(TempCluster, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let (key, csr, crt) = (dir.path().join("k.pem"), dir.path().join("r.csr"), dir.path().join("c.pem"));
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "openssl {args:?} (Debian's openssl package)");
        };
        let p = |p: &std::path::Path| p.display().to_string();
        run(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=v1",
        ]);
        run(&["x509", "-req", "-in", &p(&csr), "-signkey", &p(&key), "-out", &p(&crt), "-days", "30"]);
        let cluster = TempCluster::init();
        let cert = cluster.private_file("server.crt", &std::fs::read_to_string(&crt)?);
        let key = cluster.private_file("server.key", &std::fs::read_to_string(&key)?);
        cluster.configure(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
            cert.display(),
            key.display()
        ));
        cluster.hba("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 0.0.0.0/0 reject\n");
        cluster.up();
        Ok((cluster, dir))
    })
    .await??;
    let version = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.path().join("c.pem"))
        .output()?;
    assert!(String::from_utf8_lossy(&version.stdout).contains("Version: 1 (0x0)"), "a v1 certificate");
    for mode in ["prefer", "require"] {
        let run = run_once(&format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}", cluster.port), mode);
        assert!(run.ok, "{mode}: {}", run.stderr);
        assert_eq!(loaded(&cluster, mode).await, 2, "{mode}");
    }
    Ok(())
}
