//! The deliver stage: one message per recipient, built as standard MIME (lettre), kept within
//! the size budget, and sent once: each delivery is claimed in the warehouse's ledger with a
//! create-if-absent write before it goes to the outbox folder or the SMTP server.

pub mod ledger;
pub mod message;

use std::path::PathBuf;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::settings::{MailSettings, Security, Transport};
use crate::config::Project;
use crate::render::Email;
use ledger::{Claim, Ledger, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("mail settings: {0}")]
    Config(String),
    #[error("building the message for {to}: {message}; nothing was sent or claimed")]
    Build { to: String, message: String },
    #[error("another sender is delivering to {recipients} now (its claim has no outcome yet); this run is not done until a later run finds those sent. Run it again in a few minutes")]
    InProgress { recipients: String },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Guard(#[from] crate::warehouse::lease::GuardError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {total} deliveries failed permanently: {first}")]
    Failed {
        failed: usize,
        total: usize,
        first: String,
    },
}

/// What happened to each recipient.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub recipient: String,
    pub outcome: Outcome,
    pub message_id: String,
    /// The `.eml` file, for the outbox transport.
    pub file: Option<PathBuf>,
}

pub struct DeliverOptions {
    /// Send again on purpose, recording it.
    pub resend: bool,
    /// The daemon's lease, asked before each claim and send.
    pub guard: crate::warehouse::lease::Guard,
}

/// Attempts per message on temporary SMTP failures, with exponential backoff.
const ATTEMPTS: u32 = 5;

/// Delivers `email` for `report`/`period` to every recipient of the job (to, then cc), each
/// at most once unless `resend`.
pub async fn deliver(
    project: &Project,
    report: &str,
    period: &str,
    recipients: &[String],
    email: &Email,
    opts: &DeliverOptions,
) -> Result<Vec<Delivered>, DeliverError> {
    let mail = &project.settings.mail;
    let ledger = Ledger::open(&project.root, &project.settings.warehouse_url)?;
    let transport = Sender::new(project, mail)?;
    let fitted = message::fit(email, mail.max_size_bytes, &format!("{report}/{period}"));
    let built = build_all(mail, report, period, recipients, &fitted)?;
    // A recipient another sender is delivering to right now is waited for (its claim
    // settles as sent, or failed and then ours), for about as long as one attempt may take.
    let wait =
        std::time::Duration::from_secs(mail.smtp.as_ref().map_or(30, |s| s.timeout_secs + 30));
    let deadline = std::time::Instant::now() + wait;
    let mut run = Run {
        ledger,
        transport,
        report,
        period,
        guard: &opts.guard,
        out: Vec::new(),
        failures: Vec::new(),
    };
    let in_progress = run.all(built, opts.resend, deadline).await?;
    if !run.failures.is_empty() {
        alert_operators(project, &run.transport, report, period, &run.failures).await;
        return Err(DeliverError::Failed {
            failed: run.failures.len(),
            total: recipients.len(),
            first: run.failures[0].clone(),
        });
    }
    if !in_progress.is_empty() {
        return Err(DeliverError::InProgress {
            recipients: in_progress.join(", "),
        });
    }
    Ok(run.out)
}

/// A message ready to claim and send: its recipient, Message-ID and the message.
type Built<'a> = (&'a String, String, lettre::Message);

/// Every recipient's message. All are built before any is claimed: a recipient whose
/// message cannot be built must not leave a claim that a later run would take for a
/// delivery.
fn build_all<'a>(
    mail: &MailSettings,
    report: &str,
    period: &str,
    recipients: &'a [String],
    fitted: &Email,
) -> Result<Vec<Built<'a>>, DeliverError> {
    let mut built = Vec::with_capacity(recipients.len());
    for to in recipients {
        let message_id = message::message_id(report, period, to);
        let m = message::build(&mail.from, to, &message_id, fitted).map_err(|message| {
            DeliverError::Build {
                to: to.clone(),
                message,
            }
        })?;
        built.push((to, message_id, m));
    }
    Ok(built)
}

/// One delivery of a report's period: where it claims and sends, and what became of each
/// recipient so far.
struct Run<'a> {
    ledger: Ledger,
    transport: Sender,
    report: &'a str,
    period: &'a str,
    guard: &'a crate::warehouse::lease::Guard,
    out: Vec<Delivered>,
    /// `recipient: error` of each permanent failure.
    failures: Vec<String>,
}

impl<'a> Run<'a> {
    /// Claims and sends every message, going back until `deadline` to those another sender
    /// was delivering; the recipients still in its hands then, recorded as in progress.
    async fn all(
        &mut self,
        built: Vec<Built<'a>>,
        mut resend: bool,
        deadline: std::time::Instant,
    ) -> Result<Vec<String>, DeliverError> {
        let (report, period) = (self.report, self.period);
        let mut pending = built;
        let in_progress = loop {
            let mut waiting = Vec::new();
            for b in pending {
                waiting.extend(self.one(b, resend).await?);
            }
            if waiting.is_empty() || std::time::Instant::now() >= deadline {
                break waiting;
            }
            tracing::info!(
                report,
                period,
                recipients = waiting.len(),
                "another sender is delivering; waiting for its outcome"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            pending = waiting;
            // A resend that met another sender's claim takes that sender's outcome as its own.
            resend = false;
        };
        Ok(in_progress
            .into_iter()
            .map(|(to, message_id, _)| {
                tracing::warn!(report, period, recipient = %to, "another sender is still delivering it; not counted as delivered");
                self.out.push(Delivered {
                    recipient: to.clone(),
                    outcome: Outcome::InProgress,
                    message_id,
                    file: None,
                });
                to.clone()
            })
            .collect())
    }

    /// Claims and sends one message, recording what became of it; the message back when
    /// another sender holds its claim.
    async fn one(
        &mut self,
        (to, message_id, built): Built<'a>,
        resend: bool,
    ) -> Result<Option<Built<'a>>, DeliverError> {
        let (report, period) = (self.report, self.period);
        // A daemon that lost its lease claims and sends nothing more.
        self.guard.check(&format!("sending to {to}")).await?;
        let claim = self
            .ledger
            .claim(report, period, to, &message_id, resend)
            .await?;
        let token = match claim {
            Claim::Mine(token) => token,
            Claim::Sent => {
                tracing::info!(report, period, recipient = %to, "already delivered; not sent again");
                self.out.push(Delivered {
                    recipient: to.clone(),
                    outcome: Outcome::AlreadyDelivered,
                    message_id,
                    file: None,
                });
                return Ok(None);
            }
            Claim::InProgress => return Ok(Some((to, message_id, built))),
        };
        match self.transport.send(report, period, to, &built).await {
            Ok(file) => {
                self.ledger.settle(&token, Outcome::Sent, None).await?;
                self.out.push(Delivered {
                    recipient: to.clone(),
                    outcome: Outcome::Sent,
                    message_id,
                    file,
                });
            }
            Err(e) => {
                tracing::error!(report, period, recipient = %to, error = %e, "delivery failed permanently");
                self.ledger
                    .settle(&token, Outcome::Failed, Some(e.as_str()))
                    .await?;
                self.failures.push(format!("{to}: {e}"));
                self.out.push(Delivered {
                    recipient: to.clone(),
                    outcome: Outcome::Failed,
                    message_id,
                    file: None,
                });
            }
        }
        Ok(None)
    }
}

/// Tells the operators about permanent failures; a failure to tell them is logged.
async fn alert_operators(
    project: &Project,
    transport: &Sender,
    report: &str,
    period: &str,
    failures: &[String],
) {
    let text = format!(
        "parstat không gửi được báo cáo `{report}` kỳ {period} tới {} người nhận:\n\n{}\n\nLedger: {}\n",
        failures.len(),
        failures.join("\n"),
        project.settings.warehouse_url
    );
    let subject = format!("[parstat] Gửi báo cáo thất bại: {report} {period}");
    send_alert(project, transport, &subject, &text).await;
}

async fn send_alert(project: &Project, transport: &Sender, subject: &str, text: &str) {
    let mail = &project.settings.mail;
    for op in &mail.operators {
        match message::alert(&mail.from, op, subject, text) {
            Ok(m) => {
                // In the outbox, each alert keeps its own folder, named by its time.
                let at = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
                if let Err(e) = transport.send("_alerts", &at, op, &m).await {
                    tracing::error!(operator = %op, error = %e, "could not alert the operator");
                }
            }
            Err(e) => tracing::error!(operator = %op, error = %e, "could not build the alert"),
        }
    }
}

/// Emails the operators (`[mail] operators`) through the configured transport; failures to
/// do so are logged, since the caller is already reporting a failure.
pub async fn alert(project: &Project, subject: &str, text: &str) {
    match Sender::new(project, &project.settings.mail) {
        Ok(t) => send_alert(project, &t, subject, text).await,
        Err(e) => tracing::error!(error = %e, "could not alert the operators"),
    }
}

/// The configured transport.
enum Sender {
    Outbox(PathBuf),
    Smtp(Smtp),
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// The longest one attempt may take: lettre bounds only the TCP connect, and a server
    /// that accepts and never answers would otherwise hold the run forever.
    timeout: Duration,
    /// `host:port`, for the errors.
    server: String,
    /// Set once the server has not answered within the timeout, or could not be reached at
    /// all: the run's other messages (and the operators' alert) fail at once instead of
    /// waiting that long each.
    hung: std::sync::OnceLock<String>,
}

impl Smtp {
    /// Records that the server did not answer in time; the error for this message.
    fn timed_out(&self) -> String {
        let reason = format!(
            "the SMTP server {} did not answer within {} s (`[mail.smtp] timeout_secs`)",
            self.server,
            self.timeout.as_secs()
        );
        let _ = self.hung.set(reason.clone());
        format!("{reason}; not sent, or sent and not confirmed: check the server, or raise `timeout_secs` for a slow one")
    }
}

/// What went wrong in a TLS handshake with the SMTP server, if that is what failed.
fn tls_problem(e: &lettre::transport::smtp::Error) -> Option<String> {
    crate::extract::tls::explain(e, "set `[mail.smtp] ca_file` to the CA file that signed it")
}

/// The CA certificates of `[mail.smtp] ca_file`, trusted besides the public roots.
fn ca_certificate(path: &std::path::Path) -> Result<Certificate, DeliverError> {
    let bad = |why: String| {
        DeliverError::Config(format!("`[mail.smtp] ca_file` {}: {why}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))
}

impl Sender {
    fn new(project: &Project, mail: &MailSettings) -> Result<Sender, DeliverError> {
        match mail.transport {
            Transport::Outbox => Ok(Sender::Outbox(project.root.join(&mail.outbox))),
            Transport::Smtp => {
                let smtp = mail.smtp.as_ref().ok_or_else(|| {
                    DeliverError::Config("transport = \"smtp\" needs [mail.smtp]".into())
                })?;
                let host = smtp
                    .host
                    .resolve()
                    .map_err(|e| DeliverError::Config(e.to_string()))?;
                let host = host.expose().to_string();
                let timeout = Duration::from_secs(smtp.timeout_secs);
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                    .port(smtp.port)
                    .timeout(Some(timeout));
                let ca = smtp
                    .ca_file
                    .as_ref()
                    .map(|f| ca_certificate(&project.root.join(f)))
                    .transpose()?;
                let tls = || {
                    let mut p = TlsParameters::builder(host.clone());
                    if let Some(ca) = &ca {
                        p = p.add_root_certificate(ca.clone());
                    }
                    p.build()
                        .map_err(|e| DeliverError::Config(format!("TLS for {host}: {e}")))
                };
                b = match smtp.security {
                    Security::None => b.tls(Tls::None),
                    Security::StartTls => b.tls(Tls::Required(tls()?)),
                    Security::Tls => b.tls(Tls::Wrapper(tls()?)),
                };
                if let (Some(u), Some(p)) = (&smtp.username, &smtp.password) {
                    let u = u
                        .resolve()
                        .map_err(|e| DeliverError::Config(e.to_string()))?;
                    let p = p
                        .resolve()
                        .map_err(|e| DeliverError::Config(e.to_string()))?;
                    b = b.credentials(Credentials::new(
                        u.expose().to_string(),
                        p.expose().to_string(),
                    ));
                }
                Ok(Sender::Smtp(Smtp {
                    transport: b.build(),
                    timeout,
                    server: format!("{host}:{}", smtp.port),
                    hung: std::sync::OnceLock::new(),
                }))
            }
        }
    }

    /// Sends one message; temporary SMTP failures are retried with backoff. The error text
    /// never holds credentials (lettre does not put them in its errors).
    async fn send(
        &self,
        report: &str,
        period: &str,
        to: &str,
        m: &lettre::Message,
    ) -> Result<Option<PathBuf>, String> {
        match self {
            Sender::Outbox(dir) => {
                let dir = dir.join(report).join(period);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let path = dir.join(format!("{}.eml", message::file_safe(to)));
                // Written whole then renamed: a reader never sees half a message.
                let tmp = path.with_extension("eml.partial");
                std::fs::write(&tmp, m.formatted())
                    .map_err(|e| format!("{}: {e}", tmp.display()))?;
                std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Some(path))
            }
            Sender::Smtp(smtp) => {
                if let Some(reason) = smtp.hung.get() {
                    return Err(format!("not tried: {reason} earlier in this run"));
                }
                let mut delay = Duration::from_millis(500);
                let mut last = String::new();
                let mut last_was_reply = false;
                for attempt in 1..=ATTEMPTS {
                    match tokio::time::timeout(smtp.timeout, smtp.transport.send(m.clone())).await {
                        Ok(Ok(_)) => return Ok(None),
                        Ok(Err(e)) if e.is_permanent() => return Err(format!("refused: {e}")),
                        // A certificate that did not verify will not by the next attempt.
                        Ok(Err(e)) if tls_problem(&e).is_some() => {
                            let why = tls_problem(&e).unwrap_or_default();
                            return Err(format!("the SMTP server {}: {why}", smtp.server));
                        }
                        Ok(Err(e)) if !e.is_timeout() => {
                            last = e.to_string();
                            last_was_reply = e.is_transient();
                            if attempt < ATTEMPTS {
                                tracing::warn!(recipient = %to, attempt, error = %last, "temporary SMTP failure; retrying");
                                tokio::time::sleep(delay).await;
                                delay *= 2;
                            }
                        }
                        // Ours or lettre's (on connect). Not retried: each attempt would
                        // cost the whole timeout again.
                        _ => return Err(smtp.timed_out()),
                    }
                }
                let reason = format!("{last} (after {ATTEMPTS} attempts)");
                // No SMTP reply at all (refused, reset, unreachable): the run's other
                // messages would only wait through the same attempts.
                if !last_was_reply {
                    let _ = smtp.hung.set(format!(
                        "the SMTP server {} could not be reached: {reason}",
                        smtp.server
                    ));
                }
                Err(reason)
            }
        }
    }
}
