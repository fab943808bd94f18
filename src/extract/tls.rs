//! TLS to PostgreSQL and MariaDB/MySQL (rustls), used by the extractors and the demo loader.
//! The connection URL says what is required, as its own clients read it: libpq's `sslmode`
//! (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) with `sslrootcert=FILE`, and
//! MariaDB's `ssl-mode` (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`)
//! with `ssl-ca=FILE`. Errors name the server, the mode and the cause, never the URL itself
//! (it may hold the password).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// What a connection requires of TLS, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Never encrypted.
    Disable,
    /// Encrypted if the server offers it, nothing verified (libpq's default).
    Prefer,
    /// Encrypted, nothing verified (the chain, with a root file given).
    Require,
    /// Encrypted, the certificate's chain verified against the root certificates.
    VerifyCa,
    /// Encrypted, the chain and the host name verified.
    VerifyFull,
}

impl Mode {
    fn postgres_name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    fn mysql_name(self) -> &'static str {
        match self {
            Mode::Disable => "DISABLED",
            Mode::Prefer => "PREFERRED",
            Mode::Require => "REQUIRED",
            Mode::VerifyCa => "VERIFY_CA",
            Mode::VerifyFull => "VERIFY_IDENTITY",
        }
    }
}

/// The crypto provider of every TLS connection made here. mysql_async builds its own rustls
/// configuration from the process default, which rustls cannot choose by itself when (as
/// here, through other crates) both of its providers are compiled in: installed once.
fn provider() -> Arc<CryptoProvider> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificates of a PEM file given as `param=FILE`.
fn read_roots(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {param}={}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param}={} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{param}={} holds no certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The root certificates to verify against: the file's, or else the system's.
fn root_store(param: &str, file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs = match file {
        Some(f) => read_roots(param, f)?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    for c in certs {
        store
            .add(c)
            .map_err(|e| format!("{param}: a certificate is not usable as a root: {e}"))?;
    }
    Ok(store)
}

/// Verifies what the mode asks: the chain (against `roots`) and, for `VerifyFull`, the name;
/// for `Prefer`/`Require` without roots, only that the server holds its certificate's key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn new(mode: Mode, roots: Option<RootCertStore>) -> Result<Verifier, String> {
        let provider = provider();
        let chain = match roots {
            Some(r) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(r), provider.clone())
                    .build()
                    .map_err(|e| format!("the root certificates: {e}"))?,
            ),
            None => None,
        };
        Ok(Verifier {
            chain,
            check_name: mode == Mode::VerifyFull,
            provider,
        })
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // verify-ca: the chain is what counts, not the name it was issued for.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The reason of a failed TLS handshake anywhere in `e`'s chain, in words that say what to
/// change; `trust_hint` tells how to trust the CA (`set sslrootcert= to ...`). `None` when
/// the failure was not TLS's.
pub(crate) fn explain(e: &(dyn std::error::Error + 'static), trust_hint: &str) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // io::Error hides its inner error from `source()`: look inside it too.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(r) = err.downcast_ref::<rustls::Error>().or(inner) {
            return Some(match r {
                rustls::Error::InvalidCertificate(c) => match c {
                    CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                        "certificate not trusted: the server's certificate did not verify against the trusted CAs ({r}); {trust_hint}"
                    ),
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => format!(
                        "the server's certificate is not issued for this host name ({r}); connect by a name the certificate holds"
                    ),
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        format!("the server's certificate has expired ({r})")
                    }
                    _ => format!("the server's certificate did not verify: {r}"),
                },
                other => format!("TLS handshake failed: {other}"),
            });
        }
        cur = err.source();
    }
    None
}

// ------------------------------------------------------------------------------------------
// PostgreSQL

/// Takes the query parameters whose (decoded) key `wanted` names out of `url`; the rest of
/// the URL stays as written, byte for byte, since each driver decodes its own parameters its
/// own way (tokio-postgres does not read `+` as a space). Taken keys and values are decoded.
fn take_query(url: &str, wanted: impl Fn(&str) -> bool) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = decode(k);
        if wanted(&key) {
            taken.push((key, decode(v)));
        } else {
            kept.push(part);
        }
    }
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (out, taken)
}

/// `sslmode` and `sslrootcert` taken out of a libpq URL or key=value string (tokio-postgres
/// knows neither `verify-ca`/`verify-full` nor `sslrootcert`); the rest, as written.
fn take_pg_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (rest, taken) = take_query(url, |k| k == "sslmode" || k == "sslrootcert");
        for (k, v) in taken {
            if k == "sslmode" {
                mode = Some(v);
            } else {
                root = Some(v);
            }
        }
        (rest, mode, root)
    } else {
        // key=value form: the two keys are whole words of it.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
                Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
                _ => kept.push(word),
            }
        }
        (kept.join(" "), mode, root)
    }
}

/// A PostgreSQL connection's settings and its TLS.
pub struct Postgres {
    pub config: tokio_postgres::Config,
    pub mode: Mode,
    pub tls: PgTls,
    /// `host:port`, for messages.
    pub server: String,
}

/// Reads `url` (libpq URL or key=value string) and prepares its TLS.
pub fn postgres(url: &str) -> Result<Postgres, String> {
    let (rest, mode, root) = take_pg_params(url);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("invalid PostgreSQL url: {e}"))?;
    let server = pg_server(&config);
    let mode = match mode.as_deref() {
        None | Some("prefer") => Mode::Prefer,
        Some("disable") => Mode::Disable,
        // libpq's `allow` tries without first: never encrypting is what it amounts to here.
        Some("allow") => Mode::Disable,
        Some("require") => Mode::Require,
        Some("verify-ca") => Mode::VerifyCa,
        Some("verify-full") => Mode::VerifyFull,
        Some(other) => {
            return Err(format!(
                "PostgreSQL at {server}: unknown sslmode `{other}` (one of disable, prefer, require, verify-ca, verify-full)"
            ))
        }
    };
    let root = root.map(PathBuf::from);
    let at = |e: String| {
        format!(
            "PostgreSQL at {server} (sslmode={}): {e}",
            mode.postgres_name()
        )
    };
    // As libpq: `require` with a root file verifies the chain.
    let roots = match mode {
        Mode::Disable | Mode::Prefer => None,
        Mode::Require => root
            .as_deref()
            .map(|r| root_store("sslrootcert", Some(r)))
            .transpose()
            .map_err(at)?,
        Mode::VerifyCa | Mode::VerifyFull => {
            Some(root_store("sslrootcert", root.as_deref()).map_err(at)?)
        }
    };
    let verifier = Verifier::new(mode, roots).map_err(at)?;
    let tls_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| at(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.ssl_mode(match mode {
        Mode::Disable => tokio_postgres::config::SslMode::Disable,
        Mode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Postgres {
        config,
        mode,
        tls: PgTls(Arc::new(tls_config)),
        server,
    })
}

fn pg_server(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

pub type PgConnection = tokio_postgres::Connection<Socket, PgTlsStream>;

impl Postgres {
    /// Connects; the error names the server, the mode and the cause.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, PgConnection), String> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.error(&e))
    }

    fn error(&self, e: &tokio_postgres::Error) -> String {
        let why =
            explain(e, "set sslrootcert= to the CA file that signed it").unwrap_or_else(|| {
                // tokio-postgres's Display leaves out the cause (refused, reset): keep it.
                match std::error::Error::source(e) {
                    Some(s) => format!("{e}: {s}"),
                    None => e.to_string(),
                }
            });
        format!(
            "PostgreSQL at {} (sslmode={}): {why}",
            self.server,
            self.mode.postgres_name()
        )
    }
}

/// Connects to PostgreSQL as `url` says (see the module's documentation).
pub async fn connect_postgres(url: &str) -> Result<(tokio_postgres::Client, PgConnection), String> {
    postgres(url)?.connect().await
}

/// tokio-postgres's TLS through rustls.
#[derive(Clone)]
pub struct PgTls(Arc<rustls::ClientConfig>);

pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name: ServerName::try_from(domain)?.to_owned(),
        })
    }
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(|s| PgTlsStream(Box::new(s)))
        })
    }
}

/// An encrypted PostgreSQL stream.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: the certificate is verified by the mode instead.
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------------------------------
// MariaDB/MySQL

/// A MariaDB/MySQL connection's options with their TLS.
pub struct Mysql {
    pub opts: mysql_async::Opts,
    pub mode: Mode,
    /// `host:port`, for messages.
    pub server: String,
}

/// Reads `url` (`mysql://user:password@host:port/db?ssl-mode=...&ssl-ca=FILE`).
pub fn mysql(url: &str) -> Result<Mysql, String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid MariaDB/MySQL url: {e}"))?;
    let server = format!(
        "{}:{}",
        u.host_str().unwrap_or("localhost"),
        u.port().unwrap_or(3306)
    );
    let (rest, mode, ca) = take_mysql_params(url, &server)?;
    let mode = mysql_mode(mode.as_deref(), &server)?;
    let opts = mysql_async::Opts::from_url(&rest)
        .map_err(|e| format!("invalid MariaDB/MySQL url: {e}"))?;
    let ssl = mysql_ssl(mode, ca.as_deref(), &server)?;
    let mut b = mysql_async::OptsBuilder::from_opts(opts);
    if ssl.is_some() {
        // The session stays on its encrypted TCP connection: mysql_async would otherwise
        // move a local server's session to its Unix socket, where it cannot start TLS.
        b = b.prefer_socket(false);
    }
    let b = b.ssl_opts(ssl);
    Ok(Mysql {
        opts: b.into(),
        mode,
        server,
    })
}

/// Takes `ssl-mode` and `ssl-ca` out of a MariaDB/MySQL URL, refusing mysql_async's own switches.
fn take_mysql_params(
    url: &str,
    server: &str,
) -> Result<(String, Option<String>, Option<PathBuf>), String> {
    // MariaDB's client options are spelt with `-` and `_` alike.
    let norm = |k: &str| k.replace('_', "-").to_ascii_lowercase();
    let ours = [
        "ssl-mode",
        "ssl-ca",
        "require-ssl",
        "verify-ca",
        "verify-identity",
        "built-in-roots",
    ];
    let (rest, taken) = take_query(url, |k| ours.contains(&norm(k).as_str()));
    let (mut mode, mut ca) = (None, None);
    for (k, v) in taken {
        match norm(&k).as_str() {
            "ssl-mode" => mode = Some(v),
            "ssl-ca" => ca = Some(PathBuf::from(v)),
            // mysql_async's own switches would contradict the mode: one way to say it.
            _ => {
                return Err(format!(
                    "MariaDB/MySQL at {server}: `{k}` is not read here; say `ssl-mode=` (DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY) and `ssl-ca=FILE`"
                ))
            }
        }
    }
    Ok((rest, mode, ca))
}

/// The mode an `ssl-mode` value names (any case; PREFERRED when absent).
fn mysql_mode(mode: Option<&str>, server: &str) -> Result<Mode, String> {
    Ok(match mode.map(str::to_ascii_uppercase).as_deref() {
        None | Some("PREFERRED") => Mode::Prefer,
        Some("DISABLED") => Mode::Disable,
        Some("REQUIRED") => Mode::Require,
        Some("VERIFY_CA") => Mode::VerifyCa,
        Some("VERIFY_IDENTITY") => Mode::VerifyFull,
        Some(other) => {
            return Err(format!(
                "MariaDB/MySQL at {server}: unknown ssl-mode `{other}` (one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY)"
            ))
        }
    })
}

/// mysql_async's TLS options for `mode` and the CA file, if any (none when disabled).
fn mysql_ssl(
    mode: Mode,
    ca: Option<&Path>,
    server: &str,
) -> Result<Option<mysql_async::SslOpts>, String> {
    let at = |e: String| {
        format!(
            "MariaDB/MySQL at {server} (ssl-mode={}): {e}",
            mode.mysql_name()
        )
    };
    // As for PostgreSQL's `require`: a CA file given means the chain is verified.
    let verify = mode >= Mode::VerifyCa || (mode == Mode::Require && ca.is_some());
    Ok(match mode {
        Mode::Disable => None,
        _ => {
            provider();
            let mut ssl = mysql_async::SslOpts::default();
            if verify {
                if let Some(ca) = ca {
                    // Read here for a clear error; mysql_async takes each certificate as DER.
                    let certs = read_roots("ssl-ca", ca).map_err(at)?;
                    ssl = ssl
                        .with_root_certs(certs.into_iter().map(|c| c.to_vec().into()).collect())
                        .with_disable_built_in_roots(true);
                }
                ssl = ssl.with_danger_skip_domain_validation(mode != Mode::VerifyFull);
            } else {
                ssl = ssl.with_danger_accept_invalid_certs(true);
            }
            Some(ssl)
        }
    })
}

impl Mysql {
    /// Connects; the error names the server, the mode and the cause.
    pub async fn connect(&self) -> Result<mysql_async::Conn, String> {
        match mysql_async::Conn::new(self.opts.clone()).await {
            Ok(c) => Ok(c),
            // PREFERRED: a server without TLS is spoken to in clear.
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if self.mode == Mode::Prefer => {
                let opts = mysql_async::OptsBuilder::from_opts(self.opts.clone())
                    .ssl_opts(None::<mysql_async::SslOpts>);
                mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| self.error(&e))
            }
            Err(e) => Err(self.error(&e)),
        }
    }

    fn error(&self, e: &mysql_async::Error) -> String {
        let why = match e {
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
                "the server does not offer TLS (its ssl_cert and ssl_key are not set)".to_string()
            }
            _ => explain(e, "set ssl-ca= to the CA file that signed it")
                .unwrap_or_else(|| e.to_string()),
        };
        format!(
            "MariaDB/MySQL at {} (ssl-mode={}): {why}",
            self.server,
            self.mode.mysql_name()
        )
    }
}

/// Connects to MariaDB/MySQL as `url` says (see the module's documentation).
pub async fn connect_mysql(url: &str) -> Result<mysql_async::Conn, String> {
    mysql(url)?.connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_of_the_url() {
        let (rest, mode, root) = take_pg_params(
            "postgres://u:secret@db.example:5433/x?sslmode=verify-full&sslrootcert=/etc/ca.pem&options=-c%20a%3Db",
        );
        // The other parameters as written: tokio-postgres decodes them its own way.
        assert_eq!(
            rest,
            "postgres://u:secret@db.example:5433/x?options=-c%20a%3Db"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, _) = take_pg_params("host=db user=u sslmode=require dbname=x");
        assert_eq!(rest, "host=db user=u dbname=x");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn errors_name_the_server_and_mode_never_the_password() {
        let e = postgres("postgres://u:hunter2@db.example:5433/x?sslmode=verify-everything")
            .err()
            .unwrap();
        assert!(
            e.contains("db.example:5433") && e.contains("verify-everything"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = postgres(
            "postgres://u:hunter2@db.example/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        )
        .err()
        .unwrap();
        assert!(
            e.contains("sslmode=verify-ca")
                && e.contains("cannot read sslrootcert=/nonexistent/ca.pem"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = mysql(
            "mysql://root:hunter2@db.example/x?ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem",
        )
        .err()
        .unwrap();
        assert!(
            e.contains("db.example:3306")
                && e.contains("ssl-mode=VERIFY_IDENTITY")
                && e.contains("ssl-ca"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn mariadb_modes_become_mysql_async_options() {
        let m = mysql("mysql://root@127.0.0.1/x").unwrap();
        assert_eq!(m.mode, Mode::Prefer);
        assert!(m.opts.ssl_opts().is_some());
        let m = mysql("mysql://root@127.0.0.1/x?ssl-mode=DISABLED").unwrap();
        assert!(m.opts.ssl_opts().is_none());
        let m = mysql("mysql://root@127.0.0.1/x?ssl-mode=REQUIRED").unwrap();
        assert!(!m.opts.prefer_socket(), "TLS stays on the TCP connection");
        assert!(m.opts.ssl_opts().unwrap().accept_invalid_certs());
        let m = mysql("mysql://root@127.0.0.1/x?ssl_mode=verify_identity").unwrap();
        let ssl = m.opts.ssl_opts().unwrap();
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        let e = mysql("mysql://root@127.0.0.1/x?require_ssl=true")
            .err()
            .unwrap();
        assert!(e.contains("ssl-mode="), "{e}");
    }
}
