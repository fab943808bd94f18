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
        .from(from)
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
        .from(from)
        .to(to)
        .subject(subject)
        .singlepart(SinglePart::plain(text.to_string()))
        .map_err(|x| x.to_string())
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
