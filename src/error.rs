//! Errors as people read them: an error and each of its causes once, for the command line,
//! the run history and the operators' alerts.

use std::error::Error;

/// `e` and its causes, joined by `: `. A cause whose text its parent already shows (many
/// errors end with their cause's message) is not repeated.
pub fn report(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The text of `e` and of each of its causes, outermost first.
pub fn causes(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Shows its cause, as most of parstat's errors do.
        #[error("table `t`: {source}")]
        Shows {
            #[source]
            source: std::io::Error,
        },
        /// Keeps its cause for the reader of the chain.
        #[error("reading the run history")]
        Keeps {
            #[source]
            source: std::io::Error,
        },
    }

    #[test]
    fn each_cause_is_read_once() {
        let shows = Outer::Shows {
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(report(&shows), "table `t`: disk gone");
        let keeps = Outer::Keeps {
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(report(&keeps), "reading the run history: disk gone");
        assert_eq!(causes(&keeps), ["reading the run history", "disk gone"]);
        let sql = crate::query::QueryError::Sql {
            file: "sql/a.sql".into(),
            source: Box::new(datafusion::error::DataFusionError::Plan(
                "No field named x".into(),
            )),
        };
        assert_eq!(
            report(&sql),
            "sql/a.sql: error: Error during planning: No field named x"
        );
        let through_anyhow = anyhow::Error::from(sql);
        assert_eq!(
            report(through_anyhow.as_ref()),
            "sql/a.sql: error: Error during planning: No field named x"
        );
    }
}
