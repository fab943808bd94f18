//! MIME messages: multipart/alternative (text and HTML) inside multipart/related (the charts
//! as inline images) inside multipart/mixed (the attachments), with RFC 2047 subjects and
//! RFC 2231 file names from lettre; a Message-ID derived from report, period and recipient;
//! and the size budget, kept by zipping or leaving out the attachments, never the summary.

use std::io::Write;

use lettre::message::header::ContentType;
use lettre::message::{Attachment as MimeAttachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;
use sha2::{Digest, Sha256};

use crate::render::{Attachment, Email};

/// `<sha256(report|period|recipient)@parstat>`: the same message keeps the same id across
/// reruns, so mail clients see a repeat as the same message.
pub fn message_id(report: &str, period: &str, recipient: &str) -> String {
    let h = Sha256::digest(format!(
        "{report}|{period}|{}",
        recipient.trim().to_lowercase()
    ));
    format!("<{}.{report}.{period}@parstat>", hex::encode(&h[..16]))
}

/// A recipient address as a file name.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Approximate size on the wire: base64 grows binary parts by 4/3.
pub fn size(email: &Email) -> u64 {
    let b64 = |n: usize| (n as u64).div_ceil(3) * 4;
    let mut s = (email.html.len() + email.text.len() + 4096) as u64;
    s += email.inline.iter().map(|i| b64(i.png.len())).sum::<u64>();
    s += email
        .attachments
        .iter()
        .map(|a| b64(a.bytes.len()))
        .sum::<u64>();
    s
}

/// The email within `budget` bytes: as is; else its attachments in one zip; else without
/// attachments and with a note naming where the data is. The summary, tables and charts stay.
pub fn fit(email: &Email, budget: u64, what: &str) -> Email {
    if size(email) <= budget || email.attachments.is_empty() {
        return email.clone();
    }
    let zipped = zip_all(&email.attachments, what);
    if let Ok(z) = zipped {
        let mut e = email.clone();
        e.attachments = vec![z];
        if size(&e) <= budget {
            return note(
                e,
                "Các tệp đính kèm được nén trong một tệp .zip để vừa dung lượng thư.",
            );
        }
    }
    let mut e = email.clone();
    let names: Vec<String> = e.attachments.iter().map(|a| a.name.clone()).collect();
    e.attachments.clear();
    note(
        e,
        &format!(
            "Các tệp đính kèm ({}) vượt quá dung lượng cho phép của thư nên không được gửi kèm; số liệu của báo cáo {what} được lưu trong kho dữ liệu, các bảng published_*.",
            names.join(", ")
        ),
    )
}

fn note(mut e: Email, text: &str) -> Email {
    let p = format!(
        "<p style=\"font-family:Arial,sans-serif;font-size:13px;color:#7a4b00;background:#fff4e0;padding:8px\">{}</p>",
        minijinja::HtmlEscape(text)
    );
    match e.html.rfind("</body>") {
        Some(i) => e.html.insert_str(i, &p),
        None => e.html.push_str(&p),
    }
    e.text.push_str(&format!("\n\n{text}\n"));
    e
}

fn zip_all(files: &[Attachment], what: &str) -> Result<Attachment, String> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for f in files {
        w.start_file(f.name.as_str(), opts)
            .map_err(|e| e.to_string())?;
        w.write_all(&f.bytes).map_err(|e| e.to_string())?;
    }
    let bytes = w.finish().map_err(|e| e.to_string())?.into_inner();
    Ok(Attachment {
        name: format!("{}.zip", what.replace('/', " ")),
        content_type: "application/zip".into(),
        bytes,
    })
}

fn content_type(s: &str) -> Result<ContentType, String> {
    ContentType::parse(s).map_err(|e| format!("content type `{s}`: {e}"))
}

/// `Name <addr>` or `addr`. The display name may hold commas and diacritics, as the
/// province's names do; lettre's own parser wants such a name quoted.
pub fn mailbox(s: &str) -> Result<Mailbox, String> {
    let s = s.trim();
    match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => {
            let name = s[..i].trim().trim_matches('"').trim();
            let addr = s[i + 1..s.len() - 1]
                .trim()
                .parse()
                .map_err(|e| format!("`{s}`: {e}"))?;
            Ok(Mailbox::new(
                (!name.is_empty()).then(|| name.to_string()),
                addr,
            ))
        }
        _ => s.parse().map_err(|e| format!("`{s}`: {e}")),
    }
}

/// The message for one recipient.
pub fn build(from: &str, to: &str, message_id: &str, e: &Email) -> Result<Message, String> {
    let from = mailbox(from).map_err(|x| format!("from {x}"))?;
    let to_box = mailbox(to).map_err(|x| format!("recipient {x}"))?;
    let mut related = MultiPart::related().multipart(MultiPart::alternative_plain_html(
        e.text.clone(),
        e.html.clone(),
    ));
    for i in &e.inline {
        related = related.singlepart(
            MimeAttachment::new_inline(i.cid.clone())
                .body(i.png.clone(), content_type("image/png")?),
        );
    }
    let mut mixed = MultiPart::mixed().multipart(related);
    for a in &e.attachments {
        mixed = mixed.singlepart(
            MimeAttachment::new(a.name.clone())
                .body(a.bytes.clone(), content_type(&a.content_type)?),
        );
    }
    Message::builder()
        .raw_header(from_header(&from))
        .to(to_box)
        .subject(e.subject.clone())
        .message_id(Some(message_id.to_string()))
        .multipart(mixed)
        .map_err(|x| x.to_string())
}

/// A plain-text alert for the operators.
pub fn alert(from: &str, to: &str, subject: &str, text: &str) -> Result<Message, String> {
    let from = mailbox(from).map_err(|x| format!("from {x}"))?;
    let to = mailbox(to).map_err(|x| format!("operator {x}"))?;
    Message::builder()
        .raw_header(from_header(&from))
        .to(to)
        .subject(subject)
        .singlepart(SinglePart::plain(text.to_string()))
        .map_err(|x| x.to_string())
}

/// The `From` header with its display name encoded word by word. lettre cuts encoded words
/// at a byte count, inside words ("thôn" + "g minh"), which Python's mail parser, among others,
/// shows with a space there. Here plain ASCII words stay plain and each run of other words is
/// one encoded word between them, so no reader has to join two encoded words.
fn from_header(from: &Mailbox) -> lettre::message::header::HeaderValue {
    use lettre::message::header::{HeaderName, HeaderValue};
    let name = from.name.as_deref().unwrap_or("").trim();
    let addr = format!("<{}>", from.email);
    let mut tokens = phrase_tokens(name);
    tokens.push(addr);
    HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str("From"),
        from.to_string(),
        tokens.join("\r\n "),
    )
}

/// A display name as header tokens: words of plain ASCII as they are, each run of other words
/// as one RFC 2047 encoded word (split at words only when a run passes 75 characters).
fn phrase_tokens(text: &str) -> Vec<String> {
    use base64::Engine as _;
    const MAX: usize = 75 - "=?utf-8?b??=".len();
    let plain = |w: &str| {
        w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
    };
    let encode = |run: &str| {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(run)
        )
    };
    let fits = |run: &str| run.len().div_ceil(3) * 4 <= MAX;
    let mut out = Vec::new();
    let mut run = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if plain(word) {
            if !run.is_empty() {
                out.push(encode(&std::mem::take(&mut run)));
            }
            out.push(word.to_string());
            continue;
        }
        let grown = if run.is_empty() {
            word.to_string()
        } else {
            format!("{run} {word}")
        };
        if fits(&grown) || run.is_empty() {
            run = grown;
        } else {
            // Two encoded words in a row: the space goes inside the first.
            run.push(' ');
            out.push(encode(&std::mem::replace(&mut run, word.to_string())));
        }
    }
    if !run.is_empty() {
        out.push(encode(&run));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(attachment: usize) -> Email {
        Email {
            subject: "Báo cáo tháng 10/2026".into(),
            html: "<html><body><p>Tổng số</p></body></html>".into(),
            text: "Tổng số".into(),
            inline: vec![],
            attachments: vec![Attachment {
                name: "Báo cáo tháng 10-2026.xlsx".into(),
                content_type: "application/octet-stream".into(),
                bytes: vec![b'a'; attachment],
            }],
        }
    }

    /// Decodes a header as RFC 2047 says: white space between two encoded words is dropped.
    fn decode(header: &str) -> String {
        use base64::Engine as _;
        let mut out = String::new();
        let mut last_encoded = false;
        for w in header.split_whitespace() {
            match w
                .strip_prefix("=?utf-8?b?")
                .and_then(|w| w.strip_suffix("?="))
            {
                Some(body) => {
                    if !last_encoded && !out.is_empty() {
                        out.push(' ');
                    }
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap();
                    out.push_str(&String::from_utf8(bytes).unwrap());
                    last_encoded = true;
                }
                None => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(w);
                    last_encoded = false;
                }
            }
        }
        out
    }

    #[test]
    fn the_from_name_is_encoded_in_whole_words() {
        let name = "Trung tâm Giám sát, điều hành thông minh tỉnh Hà Tĩnh, Ủy ban nhân dân";
        let from = mailbox(&format!("{name} <ioc@example.gov.vn>")).unwrap();
        let m = build(
            &format!("{name} <ioc@example.gov.vn>"),
            "a@b.vn",
            "<x@y>",
            &email(1),
        )
        .unwrap();
        let raw = String::from_utf8_lossy(&m.formatted()).to_string();
        let header: String = raw
            .split("\r\n")
            .skip_while(|l| !l.starts_with("From: "))
            .take_while(|l| l.starts_with("From: ") || l.starts_with(' '))
            .collect::<Vec<_>>()
            .join(" ");
        let value = header.strip_prefix("From: ").unwrap();
        assert_eq!(decode(value), format!("{name} <ioc@example.gov.vn>"));
        let words: Vec<&str> = value.split_whitespace().collect();
        for (i, w) in words
            .iter()
            .enumerate()
            .filter(|(_, w)| w.starts_with("=?"))
        {
            assert!(w.len() <= 75, "{w}");
            let text = decode(w);
            let next_encoded = words.get(i + 1).is_some_and(|n| n.starts_with("=?"));
            // Whole words only; two encoded words in a row only when one run is too long.
            assert!(
                name.contains(&format!("{} ", text.trim_end())) || name.ends_with(&text),
                "an encoded word ends inside a word: {text:?}"
            );
            assert!(!next_encoded || text.ends_with(' '), "{text:?}");
        }
        // The envelope still comes from it.
        assert_eq!(
            m.envelope().from().map(|a| a.to_string()),
            Some(from.email.to_string())
        );
    }

    #[test]
    fn message_ids_are_stable_per_recipient() {
        let a = message_id("monthly_par", "2026-10", "Chu-Tich@example.gov.vn");
        assert_eq!(
            a,
            message_id("monthly_par", "2026-10", "chu-tich@example.gov.vn")
        );
        assert_ne!(
            a,
            message_id("monthly_par", "2026-10", "other@example.gov.vn")
        );
        assert_ne!(
            a,
            message_id("monthly_par", "2026-09", "chu-tich@example.gov.vn")
        );
        assert!(a.starts_with('<') && a.ends_with("@parstat>"));
    }

    #[test]
    fn oversized_attachments_are_zipped_then_left_out_with_a_note() {
        let e = email(300_000);
        assert_eq!(fit(&e, 10_000_000, "r").attachments.len(), 1);
        // Highly compressible: the zip fits.
        let z = fit(&e, 100_000, "monthly_par/2026-10");
        assert_eq!(z.attachments.len(), 1);
        assert!(z.attachments[0].name.ends_with(".zip"));
        assert!(z.html.contains(".zip"));
        // A budget below even the zip: no attachments, a note, the summary kept.
        let n = fit(&e, 4_300, "monthly_par/2026-10");
        assert!(n.attachments.is_empty());
        assert!(n.html.contains("Tổng số") && n.html.contains("published_"));
        assert!(n.text.contains("không được gửi kèm"));
    }

    #[test]
    fn builds_a_standard_message_with_encoded_vietnamese() {
        let m = build(
            "Trung tâm Giám sát, điều hành thông minh <ioc@example.gov.vn>",
            "chu-tich@example.gov.vn",
            "<x@parstat>",
            &email(10),
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Subject: =?utf-8?"), "{text}");
        assert!(text.contains("Message-ID: <x@parstat>"), "{text}");
        assert!(text.contains("multipart/alternative"));
        assert!(
            !text.contains("Báo cáo"),
            "no raw UTF-8 in the headers or base64 parts"
        );
    }
}
