//! Encryption on the wire (issue 21): PostgreSQL and MariaDB sessions encrypted and verified
//! as the URL's `sslmode` / `ssl-mode` says, and mail over STARTTLS and implicit TLS, against
//! the local servers with the test CA's certificates (scripts/tls_setup.sh makes them and
//! switches TLS on in both databases).

use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use parstat::extract::tls::{connect_mysql, connect_postgres};

use crate::deliver::{claims, count_to, messages, smtp};
use crate::extract::{db_query, demo};
use crate::report::demo_project;
use crate::util::*;

/// A file of the test certificates' folder.
fn cert(name: &str) -> String {
    let dir = PathBuf::from(
        std::env::var("PARSTAT_TLS_DIR").unwrap_or_else(|_| "/var/lib/parstat-tls".into()),
    );
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/tls_setup.sh (scripts/test.sh does)",
        p.display()
    );
    p.display().to_string()
}

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";

/// Whether the server sees the session made by parstat's connector as encrypted.
async fn pg_ssl(url: &str) -> bool {
    let (client, conn) = connect_postgres(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The cipher of the session made by parstat's connector, as the server sees it ("" in clear).
async fn my_cipher(url: &str) -> String {
    let mut c = connect_mysql(url).await.unwrap_or_else(|e| panic!("{e}"));
    let row: Option<(String, String)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    row.unwrap().1
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sessions_are_encrypted_and_verified_as_sslmode_says() {
    let ca = cert("ca.pem");
    assert!(!pg_ssl(&format!("{PG}?sslmode=disable")).await);
    for q in [
        // libpq's default, `prefer`: encrypted when the server offers it.
        String::new(),
        "?sslmode=require".into(),
        format!("?sslmode=verify-ca&sslrootcert={ca}"),
        format!("?sslmode=verify-full&sslrootcert={ca}"),
    ] {
        assert!(pg_ssl(&format!("{PG}{q}")).await, "{q}: not encrypted");
    }
    // A name the certificate does not hold: the chain alone is enough for verify-ca only.
    let other_name = format!(
        "postgres://postgres@wrong-name.invalid:5432/test?hostaddr=127.0.0.1&sslrootcert={ca}"
    );
    assert!(pg_ssl(&format!("{other_name}&sslmode=verify-ca")).await);
    let e = connect_postgres(&format!("{other_name}&sslmode=verify-full"))
        .await
        .err()
        .expect("verify-full checks the name");
    assert!(
        e.contains("wrong-name.invalid:5432")
            && e.contains("sslmode=verify-full")
            && e.contains("not issued for this host name"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refuses_a_certificate_of_another_ca_with_a_clear_error() {
    let other = cert("other-ca.pem");
    for mode in ["verify-ca", "verify-full", "require"] {
        let url = format!(
            "postgres://postgres:never-shown-pw@127.0.0.1:5432/test?sslmode={mode}&sslrootcert={other}"
        );
        let e = connect_postgres(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode} with another CA connected"));
        assert!(
            e.contains("PostgreSQL at 127.0.0.1:5432")
                && e.contains(&format!("sslmode={mode}"))
                && e.contains("certificate not trusted")
                && e.contains("set sslrootcert= to the CA file"),
            "{e}"
        );
        assert!(!e.contains("never-shown-pw"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_sessions_are_encrypted_and_verified_as_ssl_mode_says() {
    let ca = cert("ca.pem");
    assert_eq!(my_cipher(&format!("{MY}?ssl-mode=DISABLED")).await, "");
    for q in [
        "?ssl-mode=REQUIRED".to_string(),
        format!("?ssl-mode=VERIFY_CA&ssl-ca={ca}"),
        format!("?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
    ] {
        let cipher = my_cipher(&format!("{MY}{q}")).await;
        assert!(!cipher.is_empty(), "{q}: not encrypted");
    }
    let other = cert("other-ca.pem");
    for mode in ["VERIFY_CA", "VERIFY_IDENTITY"] {
        let url = format!(
            "mysql://root:never-shown-pw@127.0.0.1:3306/test?ssl-mode={mode}&ssl-ca={other}"
        );
        let e = connect_mysql(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode} with another CA connected"));
        assert!(
            e.contains("MariaDB/MySQL at 127.0.0.1:3306")
                && e.contains(&format!("ssl-mode={mode}"))
                && e.contains("certificate not trusted")
                && e.contains("set ssl-ca= to the CA file"),
            "{e}"
        );
        assert!(!e.contains("never-shown-pw"), "{e}");
    }
}

/// The demo loads both databases, and the extract reads them back, over verified TLS; with a
/// CA that did not sign the servers' certificates, the extract stops before reading a row.
#[tokio::test(flavor = "multi_thread")]
async fn extracts_read_postgres_and_mariadb_over_verified_tls() {
    let schema = format!("parstat_tls_{}", std::process::id());
    let mut root = connect_mysql(MY).await.unwrap();
    root.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {schema} CHARACTER SET utf8mb4"
    ))
    .await
    .unwrap();
    let ca = cert("ca.pem");
    let pg = format!("{PG}?sslmode=verify-full&sslrootcert={ca}");
    let my = format!("mysql://root@127.0.0.1:3306/{schema}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}");
    let files = project_copy();
    let (fp, s2, pg2, my2) = (
        files.path().to_path_buf(),
        schema.clone(),
        pg.clone(),
        my.clone(),
    );
    tokio::task::spawn_blocking(move || {
        demo(
            &fp,
            &[
                "--dossiers",
                "300",
                "--postgres",
                &pg2,
                "--pg-schema",
                &s2,
                "--mysql",
                &my2,
            ],
        )
    })
    .await
    .unwrap();
    let other = cert("other-ca.pem");
    for (kind, url, mysql) in [
        ("postgres", pg.as_str(), false),
        ("mysql", my.as_str(), true),
    ] {
        let p = project_copy();
        std::fs::remove_file(p.path().join("pipelines/dossier.toml")).unwrap();
        edit(
            p.path(),
            "parstat.toml",
            "[connections.exports]",
            &format!("[connections.motcua]\nkind = \"{kind}\"\nurl = \"${{MOTCUA_URL}}\"\n\n[connections.exports]"),
        );
        let q = db_query(mysql).replace("SCHEMA_", &schema);
        std::fs::write(
            p.path().join("pipelines/dossier.toml"),
            format!("kind = \"extract\"\ndataset = \"dossier\"\nconnection = \"motcua\"\nmode = \"merge\"\nquery = \"\"\"\n{q}\n\"\"\"\n"),
        )
        .unwrap();
        // Another CA: refused, naming the server and the mode, never the password.
        let (bad, server, mode) = if mysql {
            (
                format!("mysql://root:never-shown-pw@127.0.0.1:3306/{schema}?ssl-mode=VERIFY_IDENTITY&ssl-ca={other}"),
                "MariaDB/MySQL at 127.0.0.1:3306",
                "ssl-mode=VERIFY_IDENTITY",
            )
        } else {
            (
                format!("postgres://postgres:never-shown-pw@127.0.0.1:5432/test?sslmode=verify-full&sslrootcert={other}"),
                "PostgreSQL at 127.0.0.1:5432",
                "sslmode=verify-full",
            )
        };
        let o = run_with(
            p.path(),
            &["extract", "dossier"],
            &[("MOTCUA_URL", bad.as_str())],
        );
        assert_ne!(o.status.code(), Some(0), "{kind}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains(server) && err.contains(mode) && err.contains("certificate not trusted"),
            "{kind}: {err}"
        );
        assert!(!err.contains("never-shown-pw") && !stdout(&o).contains("never-shown-pw"));
        assert_eq!(
            delta_commits(&p.path().join("warehouse/dossier/_delta_log")),
            0,
            "{kind}: nothing stored"
        );
        let out = ok(run_with(
            p.path(),
            &["extract", "dossier"],
            &[("MOTCUA_URL", url)],
        ));
        assert!(out.contains("300 read, 300 written"), "{kind}: {out}");
    }
    let (client, conn) = connect_postgres(PG).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    root.query_drop(format!("DROP DATABASE {schema}"))
        .await
        .unwrap();
}

/// Points the project's mail at the TLS server on `port` with `security`, trusting the test CA
/// through `[mail.smtp] ca_file`; the login comes from the environment ([`SMTP_ENV`]).
fn use_smtp_tls(project: &Path, port: u16, security: &str) {
    let p = project.join("parstat.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("ca_file") {
            continue;
        }
        if line.starts_with("transport") {
            out.push_str("transport = \"smtp\"\n");
        } else if line.starts_with("port") {
            out.push_str(&format!("port = {port}\n"));
        } else if line.starts_with("security") {
            out.push_str(&format!(
                "security = \"{security}\"\nca_file = \"{}\"\n",
                cert("ca.pem")
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&p, out).unwrap();
}

const SMTP_ENV: [(&str, &str); 3] = [
    ("PARSTAT_SMTP_USER", "ioc-sender"),
    ("PARSTAT_SMTP_PASSWORD", "smtp-pw-never-shown"),
    ("PARSTAT_PII_KEY", KEY),
];

/// The server's arguments: TLS of `kind` with `cert` and the login of [`SMTP_ENV`].
fn tls_args(kind: &'static str, cert_name: &str) -> Vec<String> {
    let auth = format!("{}:{}", SMTP_ENV[0].1, SMTP_ENV[1].1);
    vec![
        "--tls".into(),
        kind.into(),
        "--cert".into(),
        cert(&format!("{cert_name}.pem")),
        "--key".into(),
        cert(&format!("{cert_name}.key")),
        "--auth".into(),
        auth,
    ]
}

#[test]
fn mail_goes_over_starttls_and_implicit_tls_with_the_login() {
    let p = demo_project();
    let mbox = p.path().join("mail.mbox");
    let subject = "thu hút đầu tư";
    for (security, kind, sent_before) in [("starttls", "starttls", 0), ("tls", "implicit", 1)] {
        let args = tls_args(kind, "server");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The server refuses mail before STARTTLS (or speaks only TLS) and without the login.
        let server = smtp(&mbox, &args);
        use_smtp_tls(p.path(), server.port, security);
        let mut report = vec!["report", "monthly_investment", "--period", "2021-10"];
        if sent_before > 0 {
            report.push("--resend");
        }
        let out = ok(run_with(p.path(), &report, &SMTP_ENV));
        assert!(
            out.contains("chu-tich@example.gov.vn: sent"),
            "{security}: {out}"
        );
        let msgs = messages(&server.mbox, None);
        assert_eq!(
            count_to(&msgs, "chu-tich@example.gov.vn", subject),
            sent_before + 1,
            "{security}"
        );
        assert_eq!(
            count_to(&msgs, "so-tai-chinh@example.gov.vn", subject),
            sent_before + 1,
            "{security}"
        );
    }
}

#[test]
fn a_server_certificate_that_does_not_verify_is_refused_and_nothing_is_sent() {
    let p = demo_project();
    let mbox = p.path().join("mail.mbox");
    for (security, kind) in [("starttls", "starttls"), ("tls", "implicit")] {
        // Signed by a CA that `ca_file` does not name (nor do the public roots).
        let args = tls_args(kind, "other-server");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = smtp(&mbox, &args);
        use_smtp_tls(p.path(), server.port, security);
        let o = run_with(
            p.path(),
            &["report", "monthly_investment", "--period", "2021-10"],
            &SMTP_ENV,
        );
        assert_ne!(o.status.code(), Some(0), "{security}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("the SMTP server 127.0.0.1:{}", server.port))
                && err.contains("did not verify")
                && err.contains("[mail.smtp] ca_file"),
            "{security}: {err}"
        );
        assert!(
            !err.contains("smtp-pw-never-shown") && !stdout(&o).contains("smtp-pw-never-shown")
        );
        assert!(messages(&server.mbox, None).is_empty(), "{security}");
    }
    // Every claim settled as failed: none is taken for a delivery by a later run.
    let claimed = claims(p.path());
    assert!(!claimed.is_empty(), "the deliveries were attempted");
    for c in &claimed {
        let outcome = c.with_file_name(
            c.file_name()
                .unwrap()
                .to_string_lossy()
                .replace("claim-", "outcome-"),
        );
        let o: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&outcome).unwrap()).unwrap();
        assert_eq!(o["outcome"], "failed", "{}", outcome.display());
    }
}
