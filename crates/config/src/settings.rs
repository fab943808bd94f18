//! `parstat.toml`: project name and time zone, the warehouse, mail and the named connections.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use toml::Spanned;

use super::diag::{suggest, Diagnostics, Source};
use super::env::{self, EnvError};
use super::toml_file::{self, fields_of};

#[derive(Deserialize)]
struct RawSettings {
    project: Option<Spanned<RawProject>>,
    warehouse: Option<RawWarehouse>,
    mail: Option<RawMail>,
    scheduler: Option<RawScheduler>,
    engine: Option<RawEngine>,
    #[serde(default)]
    connections: BTreeMap<String, Spanned<RawConnection>>,
}

#[derive(Deserialize)]
struct RawScheduler {
    lease_seconds: Option<Spanned<u64>>,
    grace_seconds: Option<Spanned<u64>>,
    retry_minutes: Option<Spanned<u64>>,
    retry_hours: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
struct RawEngine {
    kind: Spanned<String>,
    scheduler: Option<Spanned<String>>,
    query_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
struct RawProject {
    name: Spanned<String>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawWarehouse {
    url: Spanned<String>,
}

#[derive(Deserialize)]
struct RawMail {
    transport: Option<Spanned<String>>,
    outbox: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    #[serde(default)]
    operators: Vec<Spanned<String>>,
    max_size_mb: Option<Spanned<f64>>,
    smtp: Option<Spanned<RawSmtp>>,
}

#[derive(Deserialize)]
struct RawSmtp {
    host: Spanned<String>,
    port: Option<Spanned<u16>>,
    security: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    timeout_secs: Option<Spanned<u64>>,
    ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawConnection {
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    page_size: Option<Spanned<u32>>,
    timeout_secs: Option<Spanned<u64>>,
    connect_timeout_secs: Option<Spanned<u64>>,
    max_pages: Option<Spanned<u64>>,
    max_response_mib: Option<Spanned<u64>>,
}

/// A configuration value that may hold `${NAME}`: resolved when used, so that an unused
/// connection needs no variables and an error names the variable and where it was written.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvValue {
    pub raw: String,
    pub file: PathBuf,
    pub position: (usize, usize),
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The raw text is either a literal that is not secret or `${NAME}`: safe to show.
        write!(f, "{:?}", self.raw)
    }
}

impl EnvValue {
    fn new(src: &Source, v: &Spanned<String>) -> Self {
        EnvValue {
            raw: v.get_ref().clone(),
            file: src.path.clone(),
            position: src.line_col(v.span().start),
        }
    }

    /// The value with its `${NAME}` references replaced from the environment.
    pub fn resolve(&self) -> Result<Secret, ConfigValueError> {
        env::interpolate(&self.raw)
            .map(Secret)
            .map_err(|error| ConfigValueError {
                file: self.file.clone(),
                position: self.position,
                error,
            })
    }
}

/// A failure to resolve a value, with the place it was written.
#[derive(Debug, thiserror::Error)]
#[error("{}:{}:{}: {error}", file.display(), position.0, position.1)]
pub struct ConfigValueError {
    pub file: PathBuf,
    pub position: (usize, usize),
    pub error: EnvError,
}

/// A resolved value that may be a secret: its `Debug` never shows it, so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub timezone: chrono_tz::Tz,
    pub warehouse_url: String,
    pub mail: MailSettings,
    pub scheduler: SchedulerSettings,
    pub engine: Engine,
    pub connections: BTreeMap<String, Connection>,
}

/// `[engine]`: where report SQL, checks, data tests and `parstat query` execute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process (DataFusion).
    #[default]
    Local,
    /// On a Ballista cluster, through its scheduler at `df://host:port`; a query not done
    /// within `query_timeout_secs` is abandoned as failed (a cluster can lose track of a job).
    Ballista {
        scheduler: String,
        query_timeout_secs: u64,
    },
}

/// `[scheduler]`: how `parstat serve` holds its lease and retries what failed.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    /// A scheduler that has not renewed its lease for this long is presumed dead.
    pub lease_seconds: u64,
    /// On SIGTERM/SIGINT, how long the running job may take to finish.
    pub grace_seconds: u64,
    /// A report that failed (after its immediate retries) is tried again this often...
    pub retry_minutes: u64,
    /// ...until this long after its first failure.
    pub retry_hours: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            lease_seconds: 60,
            grace_seconds: 300,
            retry_minutes: 60,
            retry_hours: 72,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Outbox,
    Smtp,
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    pub transport: Transport,
    pub outbox: PathBuf,
    pub from: String,
    pub operators: Vec<String>,
    pub max_size_bytes: u64,
    pub smtp: Option<SmtpSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: EnvValue,
    pub port: u16,
    pub security: Security,
    pub username: Option<EnvValue>,
    pub password: Option<EnvValue>,
    pub timeout_secs: u64,
    /// A PEM file of CA certificates trusted for the server's certificate, besides the
    /// public roots (a private CA's); relative to the project folder.
    pub ca_file: Option<PathBuf>,
    /// Where `ca_file` is written, for `check`'s diagnostics.
    pub(crate) ca_file_span: Option<std::ops::Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    Postgres,
    Mysql,
    File,
    Http,
}

pub const CONNECTION_KINDS: &[&str] = &["postgres", "mysql", "file", "http"];

#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub kind: ConnectionKind,
    /// Database URL (postgres, mysql) or endpoint (http).
    pub url: Option<EnvValue>,
    /// Folder that file sources' globs are relative to (file); defaults to the project folder.
    pub root: Option<EnvValue>,
    /// Bearer token (http), always from the environment.
    pub token: Option<EnvValue>,
    pub page_size: u32,
    /// How long the peer may stay silent before the run fails: for an API the longest one
    /// request may take, whole response included (60 s); for a database, between rows of a
    /// query's result (300 s: a large sort may take a while before its first row).
    pub timeout_secs: u64,
    /// How long connecting may take (10 s by default).
    pub connect_timeout_secs: u64,
    /// Pages read at most in one run (http); reaching it fails the run, so that a server
    /// that never ends its paging cannot keep a run going forever.
    pub max_pages: u64,
    /// The largest response body read (http), in MiB.
    pub max_response_mib: u64,
    /// Where the connection is defined, for diagnostics about its use.
    pub position: (usize, usize),
    /// Every `${NAME}` value of the connection with its span, checked when the connection is used.
    pub(crate) env_values: Vec<(EnvValue, std::ops::Range<usize>)>,
}

pub const DEFAULT_MAIL_MAX_MB: f64 = 10.0;
/// `[mail.smtp] timeout_secs`: the longest one message's delivery attempt may take.
pub const DEFAULT_SMTP_TIMEOUT_SECS: u64 = 60;
/// Defaults of an http connection's bounds.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_HTTP_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_DATABASE_TIMEOUT_SECS: u64 = 300;
/// How long one query may run on a cluster: an hour, for a national month.
pub const DEFAULT_QUERY_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_PAGES: u64 = 100_000;
pub const DEFAULT_MAX_RESPONSE_MIB: u64 = 64;

/// Every key a `parstat.toml` may hold, for suggestions.
fn known_keys() -> Vec<&'static str> {
    [
        fields_of::<RawSettings>(),
        fields_of::<RawProject>(),
        fields_of::<RawWarehouse>(),
        fields_of::<RawMail>(),
        fields_of::<RawScheduler>(),
        fields_of::<RawEngine>(),
        fields_of::<RawSmtp>(),
        fields_of::<RawConnection>(),
    ]
    .concat()
}

/// The files the settings name, which must exist before anything runs: `[mail.smtp] ca_file`
/// must hold a PEM certificate (a missing one would only fail the first send).
pub fn check_files(
    root: &std::path::Path,
    settings: &Settings,
    src: &Source,
    diags: &mut Diagnostics,
) {
    let Some(smtp) = &settings.mail.smtp else {
        return;
    };
    let (Some(file), Some(span)) = (&smtp.ca_file, &smtp.ca_file_span) else {
        return;
    };
    let path = root.join(file);
    let problem = match std::fs::read(&path) {
        Err(e) => Some(format!("`ca_file` {}: {e}", path.display())),
        Ok(pem) if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => Some(
            format!("`ca_file` {} holds no PEM certificate", path.display()),
        ),
        Ok(_) => None,
    };
    if let Some(message) = problem {
        diags.error_at(
            src,
            span.clone(),
            message,
            Some("give the PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the SMTP server's certificate, relative to the project folder".into()),
        );
    }
}

/// Parses and validates `parstat.toml`; every problem goes to `diags`.
pub fn load(src: &Source, diags: &mut Diagnostics) -> Option<Settings> {
    let raw: RawSettings = toml_file::parse(src, &known_keys(), diags)?;
    let before = diags.error_count();
    let (name, timezone) = project(src, raw.project.as_ref(), diags);
    let warehouse_url = warehouse_url(src, raw.warehouse.as_ref(), diags);
    let mail = load_mail(src, raw.mail.as_ref(), diags);
    let mut connections = BTreeMap::new();
    for (cname, c) in &raw.connections {
        if let Some(conn) = load_connection(src, cname, c, diags) {
            connections.insert(cname.clone(), conn);
        }
    }
    let scheduler = scheduler(src, raw.scheduler.as_ref(), diags);
    let engine = engine(src, raw.engine.as_ref(), diags);

    (diags.error_count() == before).then_some(Settings {
        name,
        timezone,
        warehouse_url,
        mail,
        scheduler,
        engine,
        connections,
    })
}

/// `[project]`: a name that is not empty, and the time zone.
fn project(
    src: &Source,
    raw: Option<&Spanned<RawProject>>,
    diags: &mut Diagnostics,
) -> (String, chrono_tz::Tz) {
    let Some(p) = raw else {
        diags.error_at(
            src,
            0..0,
            "missing `[project]` table",
            Some(
                "add `[project]` with `name = \"...\"` and `timezone = \"Asia/Ho_Chi_Minh\"`"
                    .into(),
            ),
        );
        return (String::new(), chrono_tz::Asia::Ho_Chi_Minh);
    };
    let p = p.get_ref();
    let tz = timezone(src, p.timezone.as_ref(), diags);
    if p.name.get_ref().trim().is_empty() {
        diags.error_at(src, p.name.span(), "project name is empty", None);
    }
    (p.name.get_ref().clone(), tz)
}

/// `timezone`: an IANA name; `Asia/Ho_Chi_Minh` when not written, and after an error so
/// that checking goes on.
fn timezone(src: &Source, tz: Option<&Spanned<String>>, diags: &mut Diagnostics) -> chrono_tz::Tz {
    let Some(tz) = tz else {
        return chrono_tz::Asia::Ho_Chi_Minh;
    };
    match tz.get_ref().parse::<chrono_tz::Tz>() {
        Ok(t) => t,
        Err(_) => {
            diags.error_at(
                src,
                tz.span(),
                format!("unknown time zone `{}`", tz.get_ref()),
                Some("use an IANA name such as `Asia/Ho_Chi_Minh`".into()),
            );
            chrono_tz::Asia::Ho_Chi_Minh
        }
    }
}

/// `[warehouse] url`: a folder, `file://` or `s3://`; the `warehouse` folder when not written.
fn warehouse_url(src: &Source, raw: Option<&RawWarehouse>, diags: &mut Diagnostics) -> String {
    let Some(w) = raw else {
        return "warehouse".to_string();
    };
    let url = w.url.get_ref();
    let scheme_ok = !url.contains("://") || url.starts_with("file://") || url.starts_with("s3://");
    if !scheme_ok {
        diags.error_at(
            src,
            w.url.span(),
            format!("unsupported warehouse url `{url}`"),
            Some("use a folder, `file:///path` or `s3://bucket/prefix`".into()),
        );
    }
    check_env_syntax(src, &w.url, diags);
    url.clone()
}

/// `[scheduler]`: each value written replaces its default; all but `retry_hours` (0: no
/// later retries) must be at least 1.
fn scheduler(
    src: &Source,
    raw: Option<&RawScheduler>,
    diags: &mut Diagnostics,
) -> SchedulerSettings {
    let mut scheduler = SchedulerSettings::default();
    let Some(r) = raw else {
        return scheduler;
    };
    for (v, slot, what) in [
        (
            &r.lease_seconds,
            &mut scheduler.lease_seconds,
            "lease_seconds",
        ),
        (
            &r.grace_seconds,
            &mut scheduler.grace_seconds,
            "grace_seconds",
        ),
        (
            &r.retry_minutes,
            &mut scheduler.retry_minutes,
            "retry_minutes",
        ),
        (&r.retry_hours, &mut scheduler.retry_hours, "retry_hours"),
    ] {
        if let Some(v) = v {
            if *v.get_ref() == 0 && what != "retry_hours" {
                diags.error_at(src, v.span(), format!("`{what}` must be at least 1"), None);
            }
            *slot = *v.get_ref();
        }
    }
    scheduler
}

/// `[engine]`: `kind = "local"` (the default) or `"ballista"` with `scheduler =
/// "df://host:port"`.
fn engine(src: &Source, raw: Option<&RawEngine>, diags: &mut Diagnostics) -> Engine {
    let Some(r) = raw else {
        return Engine::Local;
    };
    match r.kind.get_ref().as_str() {
        "local" => {
            let spans = [
                r.scheduler.as_ref().map(|s| ("scheduler", s.span())),
                r.query_timeout_secs
                    .as_ref()
                    .map(|s| ("query_timeout_secs", s.span())),
            ];
            for (key, span) in spans.into_iter().flatten() {
                diags.error_at(
                    src,
                    span,
                    format!("`{key}` is for `kind = \"ballista\"`"),
                    Some("remove it, or set `kind = \"ballista\"`".into()),
                );
            }
            Engine::Local
        }
        "ballista" => {
            let Some(s) = &r.scheduler else {
                diags.error_at(
                    src,
                    r.kind.span(),
                    "`kind = \"ballista\"` needs the scheduler's address",
                    Some("add `scheduler = \"df://HOST:50050\"`".into()),
                );
                return Engine::Local;
            };
            if let Err(problem) = check_scheduler_url(s.get_ref()) {
                diags.error_at(
                    src,
                    s.span(),
                    format!("scheduler address `{}`: {problem}", s.get_ref()),
                    Some("write it as `df://HOST:PORT`, for example `df://10.0.0.5:50050`".into()),
                );
            }
            if !cfg!(feature = "cluster") {
                diags.error_at(
                    src,
                    r.kind.span(),
                    "this parstat was built without Ballista",
                    Some("build it with `cargo build --release --features cluster`".into()),
                );
            }
            let query_timeout_secs = match &r.query_timeout_secs {
                Some(t) if *t.get_ref() == 0 => {
                    diags.error_at(
                        src,
                        t.span(),
                        "`query_timeout_secs` must be at least 1",
                        None,
                    );
                    0
                }
                Some(t) => *t.get_ref(),
                None => DEFAULT_QUERY_TIMEOUT_SECS,
            };
            Engine::Ballista {
                scheduler: s.get_ref().clone(),
                query_timeout_secs,
            }
        }
        other => {
            diags.error_at(
                src,
                r.kind.span(),
                format!("unknown engine `{other}`"),
                Some(suggest(other, &["local", "ballista"])),
            );
            Engine::Local
        }
    }
}

/// A Ballista scheduler's address: `df://HOST:PORT`.
pub fn check_scheduler_url(s: &str) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if url.scheme() != "df" {
        return Err(format!("the scheme is `{}`, not `df`", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if url.port().is_none() {
        return Err("no port".into());
    }
    Ok(())
}

/// `[mail]`: the transport, the sender and the operators, the size budget, and
/// `[mail.smtp]`, which the `smtp` transport needs.
fn load_mail(src: &Source, raw: Option<&RawMail>, diags: &mut Diagnostics) -> MailSettings {
    let mut mail = MailSettings {
        transport: Transport::Outbox,
        outbox: PathBuf::from("outbox"),
        from: "parstat <parstat@localhost>".into(),
        operators: Vec::new(),
        max_size_bytes: (DEFAULT_MAIL_MAX_MB * 1e6) as u64,
        smtp: None,
    };
    let Some(raw) = raw else { return mail };
    if let Some(t) = &raw.transport {
        mail.transport = transport(src, t, diags);
    }
    if let Some(o) = &raw.outbox {
        mail.outbox = PathBuf::from(o.get_ref());
    }
    if let Some(f) = &raw.from {
        if let Some(a) = resolve_address(src, f, diags) {
            mail.from = a;
        }
    }
    for op in &raw.operators {
        if let Some(a) = resolve_address(src, op, diags) {
            mail.operators.push(a);
        }
    }
    if let Some(m) = &raw.max_size_mb {
        if let Some(bytes) = max_size_bytes(src, m, diags) {
            mail.max_size_bytes = bytes;
        }
    }
    match &raw.smtp {
        Some(s) => {
            let needed = mail.transport == Transport::Smtp;
            mail.smtp = Some(smtp(src, s.get_ref(), needed, diags));
        }
        None if mail.transport == Transport::Smtp => {
            diags.error_at(
                src,
                raw.transport.as_ref().map(|t| t.span()).unwrap_or(0..0),
                "mail transport is `smtp` but there is no `[mail.smtp]` table",
                Some("add `[mail.smtp]` with `host`, `port` and `security`".into()),
            );
        }
        None => {}
    }
    mail
}

/// `[mail] transport`: `outbox` or `smtp`; `outbox` after an error, so that checking goes on.
fn transport(src: &Source, t: &Spanned<String>, diags: &mut Diagnostics) -> Transport {
    match t.get_ref().as_str() {
        "outbox" => Transport::Outbox,
        "smtp" => Transport::Smtp,
        other => {
            diags.error_at(
                src,
                t.span(),
                format!("unknown mail transport `{other}`"),
                Some(suggest(other, &["outbox", "smtp"])),
            );
            Transport::Outbox
        }
    }
}

/// `[mail] max_size_mb` in bytes; `None`, with the error, when it is not a positive number.
fn max_size_bytes(src: &Source, m: &Spanned<f64>, diags: &mut Diagnostics) -> Option<u64> {
    if m.get_ref().is_nan() || *m.get_ref() <= 0.0 {
        diags.error_at(
            src,
            m.span(),
            "max_size_mb must be a positive number of megabytes",
            Some(format!("the default is {DEFAULT_MAIL_MAX_MB}")),
        );
        return None;
    }
    Some((m.get_ref() * 1e6) as u64)
}

/// `[mail.smtp]`: the server, how it is reached, and credentials from the environment
/// (whose variables must be set when `needed`, the transport being `smtp`).
fn smtp(src: &Source, s: &RawSmtp, needed: bool, diags: &mut Diagnostics) -> SmtpSettings {
    let security = security(src, s.security.as_ref(), diags);
    if let Some(p) = &s.password {
        if !env::is_single_reference(p.get_ref()) {
            diags.error_at(
                src,
                p.span(),
                "the SMTP password is written in the file",
                Some(
                    "secrets come from the environment: `password = \"${PARSTAT_SMTP_PASSWORD}\"`"
                        .into(),
                ),
            );
        }
    }
    for v in [Some(&s.host), s.username.as_ref(), s.password.as_ref()]
        .into_iter()
        .flatten()
    {
        check_env_value(src, v, needed, diags);
    }
    check_clear_credentials(src, s, security, diags);
    SmtpSettings {
        host: EnvValue::new(src, &s.host),
        port: s
            .port
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or(match security {
                Security::Tls => 465,
                Security::StartTls => 587,
                Security::None => 25,
            }),
        security,
        username: s.username.as_ref().map(|v| EnvValue::new(src, v)),
        password: s.password.as_ref().map(|v| EnvValue::new(src, v)),
        timeout_secs: at_least_one(src, "timeout_secs", s.timeout_secs.as_ref(), diags)
            .unwrap_or(DEFAULT_SMTP_TIMEOUT_SECS),
        ca_file: s.ca_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        ca_file_span: s.ca_file.as_ref().map(|f| f.span()),
    }
}

/// `[mail.smtp] security`: `none`, `starttls` (when not written) or `tls`.
fn security(src: &Source, v: Option<&Spanned<String>>, diags: &mut Diagnostics) -> Security {
    match v.map(|v| (v.get_ref().as_str(), v.span())) {
        // Encrypted unless said otherwise: credentials and citizens' figures cross
        // the network.
        None | Some(("starttls", _)) => Security::StartTls,
        Some(("none", _)) => Security::None,
        Some(("tls", _)) => Security::Tls,
        Some((other, span)) => {
            diags.error_at(
                src,
                span,
                format!("unknown smtp security `{other}`"),
                Some(suggest(other, &["none", "starttls", "tls"])),
            );
            Security::None
        }
    }
}

/// A username or password sent without encryption: an error unless the server is this
/// machine.
fn check_clear_credentials(src: &Source, s: &RawSmtp, security: Security, diags: &mut Diagnostics) {
    // A password sent in clear can be read by anyone on the path; only a server on
    // this machine (a local relay) may take one without encryption.
    if security != Security::None || (s.username.is_none() && s.password.is_none()) {
        return;
    }
    let host = env::interpolate(s.host.get_ref()).unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        let at = s
            .security
            .as_ref()
            .map(|v| v.span())
            .unwrap_or_else(|| s.host.span());
        diags.error_at(
            src,
            at,
            format!("`security = \"none\"` would send the SMTP username and password to `{host}` in clear"),
            Some("use `security = \"starttls\"` (port 587) or `\"tls\"` (port 465); `none` only for a relay on this machine".into()),
        );
    }
}

/// An address as written (`${NAME}` resolved from the environment), checked as the mailer
/// will parse it: `name@domain` or `Display Name <name@domain>`. `None`, with the error at
/// the value, when a variable is unset or the address is not one.
pub(crate) fn resolve_address(
    src: &Source,
    v: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<String> {
    let before = diags.error_count();
    check_env_value(src, v, true, diags);
    if diags.error_count() > before {
        return None;
    }
    let s = env::interpolate(v.get_ref()).ok()?;
    let s = s.trim();
    let addr = match (s.rfind('<'), s.ends_with('>')) {
        (Some(a), true) => &s[a + 1..s.len() - 1],
        _ => s,
    };
    if let Err(e) = addr.trim().parse::<lettre::Address>() {
        let shown = if env::has_reference(v.get_ref()) {
            format!("`{s}` (from `{}`)", v.get_ref().trim())
        } else {
            format!("`{s}`")
        };
        diags.error_at(
            src,
            v.span(),
            format!("{shown} is not an email address: {e}"),
            Some("write `name@domain` or `Display Name <name@domain>`".into()),
        );
        return None;
    }
    Some(s.to_string())
}

/// Syntax of `${...}` is checked everywhere; whether the variable is set only where needed.
fn check_env_syntax(src: &Source, v: &Spanned<String>, diags: &mut Diagnostics) {
    check_env_value(src, v, false, diags)
}

fn check_env_value(src: &Source, v: &Spanned<String>, needed: bool, diags: &mut Diagnostics) {
    match env::interpolate(v.get_ref()) {
        Ok(_) => {}
        Err(EnvError::Unset { .. }) if !needed => {}
        Err(e) => {
            let offset = match &e {
                EnvError::Unset { offset, .. } | EnvError::Malformed { offset } => *offset,
            };
            // +1 for the opening quote of a basic string.
            let at = v.span().start + 1 + offset;
            let help = match &e {
                EnvError::Unset { name, .. } => {
                    format!("set it before running parstat: `export {name}=...`")
                }
                EnvError::Malformed { .. } => "write `${NAME}`, or `$${` for a literal `${`".into(),
            };
            diags.error_at(src, at..at, e.to_string(), Some(help));
        }
    }
}

/// A count or a number of seconds that must not be 0 (a page of no rows, a timeout that
/// fires at once): reported at the value; `None` when absent or 0.
fn at_least_one<T: Copy + Default + PartialEq>(
    src: &Source,
    key: &str,
    v: Option<&Spanned<T>>,
    diags: &mut Diagnostics,
) -> Option<T> {
    let v = v?;
    if *v.get_ref() == T::default() {
        diags.error_at(
            src,
            v.span(),
            format!("`{key}` must be at least 1"),
            Some(format!(
                "set `{key}` to a positive number, or remove it for the default"
            )),
        );
        return None;
    }
    Some(*v.get_ref())
}

/// Reports unset variables of a connection that a pipeline uses.
pub(crate) fn check_connection_env(conn: &Connection, src: &Source, diags: &mut Diagnostics) {
    for (value, span) in &conn.env_values {
        if let Err(e) = value.resolve() {
            let offset = match &e.error {
                EnvError::Unset { offset, .. } | EnvError::Malformed { offset } => *offset,
            };
            let at = span.start + 1 + offset;
            let help = match &e.error {
                EnvError::Unset { name, .. } => format!(
                    "connection `{}` is used by a pipeline; set it: `export {name}=...`",
                    conn.name
                ),
                EnvError::Malformed { .. } => "write `${NAME}`".into(),
            };
            diags.error_at(src, at..at, e.error.to_string(), Some(help));
        }
    }
}

/// One `[connections.NAME]` table: a known kind, the keys that kind takes, secrets from the
/// environment, and bounds of at least 1.
fn load_connection(
    src: &Source,
    name: &str,
    c: &Spanned<RawConnection>,
    diags: &mut Diagnostics,
) -> Option<Connection> {
    let raw = c.get_ref();
    let kind = connection_kind(src, name, &raw.kind, diags)?;
    let mut env_values = Vec::new();
    for v in [&raw.url, &raw.root, &raw.token].into_iter().flatten() {
        check_env_syntax(src, v, diags);
        env_values.push((EnvValue::new(src, v), v.span()));
    }
    check_url(src, name, kind, raw, diags);
    check_token(src, name, raw.token.as_ref(), diags);
    check_keys_apply(src, name, kind, raw, diags);
    check_timeouts(src, name, raw, diags);
    Some(Connection {
        name: name.to_string(),
        kind,
        url: raw.url.as_ref().map(|v| EnvValue::new(src, v)),
        root: raw.root.as_ref().map(|v| EnvValue::new(src, v)),
        token: raw.token.as_ref().map(|v| EnvValue::new(src, v)),
        page_size: at_least_one(src, "page_size", raw.page_size.as_ref(), diags)
            .unwrap_or(DEFAULT_PAGE_SIZE),
        timeout_secs: at_least_one(src, "timeout_secs", raw.timeout_secs.as_ref(), diags)
            .unwrap_or(match kind {
                ConnectionKind::Postgres | ConnectionKind::Mysql => DEFAULT_DATABASE_TIMEOUT_SECS,
                _ => DEFAULT_HTTP_TIMEOUT_SECS,
            }),
        connect_timeout_secs: at_least_one(
            src,
            "connect_timeout_secs",
            raw.connect_timeout_secs.as_ref(),
            diags,
        )
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
        max_pages: at_least_one(src, "max_pages", raw.max_pages.as_ref(), diags)
            .unwrap_or(DEFAULT_MAX_PAGES),
        max_response_mib: at_least_one(
            src,
            "max_response_mib",
            raw.max_response_mib.as_ref(),
            diags,
        )
        .unwrap_or(DEFAULT_MAX_RESPONSE_MIB),
        position: src.line_col(c.span().start),
        env_values,
    })
}

/// A connection's `kind`, one of `CONNECTION_KINDS`; `None`, with the error, when unknown.
fn connection_kind(
    src: &Source,
    name: &str,
    kind: &Spanned<String>,
    diags: &mut Diagnostics,
) -> Option<ConnectionKind> {
    match kind.get_ref().as_str() {
        "postgres" => Some(ConnectionKind::Postgres),
        "mysql" => Some(ConnectionKind::Mysql),
        "file" => Some(ConnectionKind::File),
        "http" => Some(ConnectionKind::Http),
        other => {
            diags.error_at(
                src,
                kind.span(),
                format!("unknown connection kind `{other}` for connection `{name}`"),
                Some(suggest(other, CONNECTION_KINDS)),
            );
            None
        }
    }
}

/// A connection's `url`: present for the kinds that reach a server, with no password
/// written in it, and (when written out) of the kind's scheme.
fn check_url(
    src: &Source,
    name: &str,
    kind: ConnectionKind,
    raw: &RawConnection,
    diags: &mut Diagnostics,
) {
    let needs_url = matches!(
        kind,
        ConnectionKind::Postgres | ConnectionKind::Mysql | ConnectionKind::Http
    );
    if needs_url && raw.url.is_none() {
        diags.error_at(
            src,
            raw.kind.span(),
            format!(
                "connection `{name}` of kind `{}` needs a `url`",
                raw.kind.get_ref()
            ),
            Some("for example `url = \"${MOTCUA_DATABASE_URL}\"`".into()),
        );
    }
    let Some(url) = &raw.url else {
        return;
    };
    let u = url.get_ref();
    // A URL written in the file must not carry a password: `user:pass@`.
    let literal_password = !env::has_reference(u)
        && u.split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    if literal_password {
        diags.error_at(
            src,
            url.span(),
            format!("connection `{name}` has a password written in its url"),
            Some("secrets come from the environment: `url = \"${MOTCUA_DATABASE_URL}\"`".into()),
        );
    }
    let expected = match kind {
        ConnectionKind::Postgres => &["postgres://", "postgresql://"][..],
        ConnectionKind::Mysql => &["mysql://", "mariadb://"][..],
        ConnectionKind::Http => &["http://", "https://"][..],
        ConnectionKind::File => &[][..],
    };
    if !env::has_reference(u) && !expected.is_empty() && !expected.iter().any(|p| u.starts_with(p))
    {
        diags.error_at(
            src,
            url.span(),
            format!(
                "connection `{name}`: url `{u}` does not start with {}",
                expected.join(" or ")
            ),
            None,
        );
    }
}

/// A connection's `token`: a secret, so only ever `${NAME}`, never written in the file.
fn check_token(src: &Source, name: &str, token: Option<&Spanned<String>>, diags: &mut Diagnostics) {
    if let Some(t) = token {
        if !env::is_single_reference(t.get_ref()) {
            diags.error_at(
                src,
                t.span(),
                format!("connection `{name}` has its token written in the file"),
                Some("secrets come from the environment: `token = \"${MOTCUA_API_TOKEN}\"`".into()),
            );
        }
    }
}

/// The keys only some kinds take (`root` for a file, `token` and the paging bounds for
/// http, `url` and the timeouts for a server): reported at `kind` when written for another.
fn check_keys_apply(
    src: &Source,
    name: &str,
    kind: ConnectionKind,
    raw: &RawConnection,
    diags: &mut Diagnostics,
) {
    for (key, present, allowed) in [
        ("root", raw.root.is_some(), kind == ConnectionKind::File),
        ("token", raw.token.is_some(), kind == ConnectionKind::Http),
        (
            "page_size",
            raw.page_size.is_some(),
            kind == ConnectionKind::Http,
        ),
        (
            "max_pages",
            raw.max_pages.is_some(),
            kind == ConnectionKind::Http,
        ),
        (
            "max_response_mib",
            raw.max_response_mib.is_some(),
            kind == ConnectionKind::Http,
        ),
        ("url", raw.url.is_some(), kind != ConnectionKind::File),
        (
            "timeout_secs",
            raw.timeout_secs.is_some(),
            kind != ConnectionKind::File,
        ),
        (
            "connect_timeout_secs",
            raw.connect_timeout_secs.is_some(),
            kind != ConnectionKind::File,
        ),
    ] {
        if present && !allowed {
            diags.error_at(
                src,
                raw.kind.span(),
                format!(
                    "`{key}` does not apply to a `{}` connection (`{name}`)",
                    raw.kind.get_ref()
                ),
                Some(format!("remove `{key}`")),
            );
        }
    }
}

/// A connection's timeouts: a number of seconds, at least 1.
fn check_timeouts(src: &Source, name: &str, raw: &RawConnection, diags: &mut Diagnostics) {
    for (key, v) in [
        ("timeout_secs", &raw.timeout_secs),
        ("connect_timeout_secs", &raw.connect_timeout_secs),
    ] {
        if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
            diags.error_at(
                src,
                v.span(),
                format!("connection `{name}`: `{key}` must be at least 1"),
                Some("a number of seconds, for example 30".into()),
            );
        }
    }
}
