//! `${NAME}` in configuration values: read from the environment when the value is used,
//! so that secrets live only in the environment and an unset variable is named in the error.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// `${NAME}` where NAME is not set; `offset` is the byte offset of `$` in the value.
    Unset { name: String, offset: usize },
    /// `${` without a closing `}` or with an invalid name.
    Malformed { offset: usize },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::Unset { name, .. } => write!(f, "environment variable `{name}` is not set"),
            EnvError::Malformed { .. } => {
                write!(f, "malformed `${{NAME}}`: expected a name of letters, digits and `_` closed by `}}`")
            }
        }
    }
}

/// Whether the value references the environment at all.
pub fn has_reference(raw: &str) -> bool {
    raw.replace("$${", "").contains("${")
}

/// Whether the whole value is exactly one `${NAME}` reference: how secrets must be written.
pub fn is_single_reference(raw: &str) -> bool {
    let t = raw.trim();
    t.starts_with("${") && t.ends_with('}') && t[2..t.len() - 1].chars().all(is_name_char)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Replaces every `${NAME}` by the variable's value; `$${` stands for a literal `${`.
pub fn interpolate_with(
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, EnvError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
            offset += i + 3;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or(EnvError::Malformed { offset: offset + i })?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(is_name_char) {
                return Err(EnvError::Malformed { offset: offset + i });
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(EnvError::Unset {
                        name: name.to_string(),
                        offset: offset + i,
                    })
                }
            }
            rest = &body[end + 1..];
            offset += i + 2 + end + 1;
        } else {
            out.push('$');
            rest = &after[1..];
            offset += i + 1;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolation from the process environment.
pub fn interpolate(raw: &str) -> Result<String, EnvError> {
    interpolate_with(raw, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "db.local".to_string())
    }

    #[test]
    fn replaces_references_and_keeps_escapes() {
        assert_eq!(
            interpolate_with("pg://${HOST}:5432/$${X} $watermark", env).unwrap(),
            "pg://db.local:5432/${X} $watermark"
        );
    }

    #[test]
    fn names_the_unset_variable_and_its_offset() {
        assert_eq!(
            interpolate_with("a ${NOPE} b", env),
            Err(EnvError::Unset {
                name: "NOPE".into(),
                offset: 2
            })
        );
    }

    #[test]
    fn rejects_malformed_references() {
        assert!(matches!(
            interpolate_with("${HOST", env),
            Err(EnvError::Malformed { offset: 0 })
        ));
        assert!(matches!(
            interpolate_with("x${A-B}", env),
            Err(EnvError::Malformed { offset: 1 })
        ));
    }

    #[test]
    fn recognises_secret_references() {
        assert!(is_single_reference("${PARSTAT_SMTP_PASSWORD}"));
        assert!(!is_single_reference("hunter2"));
        assert!(!is_single_reference("x${A}"));
        assert!(has_reference("x${A}"));
        assert!(!has_reference("$${A}"));
    }
}
