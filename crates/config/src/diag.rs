//! Diagnostics for configuration files: `file:line:column: error: message` plus a `help:` line,
//! gathered so that one `parstat check` reports every problem at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in one file, at a position when the position is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Path as shown to the user: relative to the project folder.
    pub file: PathBuf,
    /// 1-based line and column (in characters); `None` when the whole file is meant.
    pub position: Option<(usize, usize)>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                line,
                col,
                sev,
                self.message
            )?,
            None => write!(f, "{}: {}: {}", self.file.display(), sev, self.message)?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// The text of one configuration file, kept to turn byte spans into line and column.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: String) -> Self {
        Source {
            path: path.into(),
            text,
        }
    }

    /// 1-based line and column (counted in characters, as editors show them) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

/// Every diagnostic of a run of `check`, in the order found, sorted for display.
#[derive(Default, Debug)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// An error at a byte span of a source file.
    pub fn error_at(
        &mut self,
        src: &Source,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.at(Severity::Error, src, span, message, help)
    }

    pub fn warning_at(
        &mut self,
        src: &Source,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.at(Severity::Warning, src, span, message, help)
    }

    fn at(
        &mut self,
        severity: Severity,
        src: &Source,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: src.path.clone(),
            position: Some(src.line_col(span.start)),
            message: message.into(),
            help,
        });
    }

    /// An error about a whole file (missing, unreadable).
    pub fn error_file(&mut self, file: &Path, message: impl Into<String>, help: Option<String>) {
        self.items.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
            help,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// Sorted by file and position so the output reads like a compiler's.
    pub fn sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort_by(|a, b| {
            (&a.file, a.position, a.severity).cmp(&(&b.file, b.position, b.severity))
        });
        self.items.dedup();
        self.items
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" or, failing a close match, the list of valid choices.
pub fn suggest(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if candidates.is_empty() => "none are defined".to_string(),
        None => format!(
            "one of {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let src = Source::new("x.toml", "a = 1\ntên = \"Hà Tĩnh\" # x\n".to_string());
        let off = src.text.find('#').unwrap();
        assert_eq!(src.line_col(off), (2, 17));
        assert_eq!(src.line_col(0), (1, 1));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(closest("shedule", ["schedule", "query"]), Some("schedule"));
        assert_eq!(closest("zzz", ["schedule", "query"]), None);
        assert_eq!(suggest("zzz", &["a", "b"]), "one of `a`, `b`");
    }
}
