//! Freshness: whether each dataset a report needs was extracted recently enough for its
//! period, as the dataset's schema states (`freshness`): after the period ended, within an
//! age, or not at all.

use chrono::{DateTime, Utc};

use crate::config::schema::Freshness;
use crate::config::Project;
use crate::query::Period;
use crate::warehouse::runs::{RunRecord, Status};

/// A needed dataset that is not fresh enough.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    pub dataset: String,
    /// The extract pipeline that produces it.
    pub producer: String,
    pub need: Freshness,
    /// Its last successful extract (UTC microseconds), if any.
    pub last: Option<i64>,
    /// Why the extract run for it just now failed, if one was run.
    pub extract_error: Option<String>,
}

/// The datasets of `needs` that are stale for `period` at `now`. A dataset no pipeline
/// produces (loaded by other means) is not judged.
pub fn stale(
    project: &Project,
    history: &[RunRecord],
    needs: &[String],
    period: Period,
    now: DateTime<Utc>,
) -> Vec<Stale> {
    let (_, end) = period.bounds(project.settings.timezone);
    needs
        .iter()
        .filter_map(|dataset| {
            let producer = project.producer(dataset)?;
            let need = project
                .schemas
                .get(dataset)
                .map_or(Freshness::PeriodEnd, |s| s.freshness);
            let last = history
                .iter()
                .filter(|r| r.job == producer.name && r.status == Status::Succeeded)
                .map(|r| r.started_at)
                .max();
            let since = match need {
                Freshness::Any => return None,
                // A period still running (a current-month report) needs data from now on.
                Freshness::PeriodEnd => end.min(now),
                Freshness::Within(age) => now - age,
            };
            let fresh = last.is_some_and(|t| t >= since.timestamp_micros());
            (!fresh).then(|| Stale {
                dataset: dataset.clone(),
                producer: producer.name.clone(),
                need,
                last,
                extract_error: None,
            })
        })
        .collect()
}

/// `rating (needs: extracted within 8 days; last extract 2026-11-23 03:00 UTC; its extract
/// failed: ...)`, for each, joined.
pub fn describe(stale: &[Stale]) -> String {
    stale
        .iter()
        .map(|s| {
            let last = s
                .last
                .and_then(DateTime::from_timestamp_micros)
                .map(|t| format!("last extract {}", t.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_else(|| "never extracted".into());
            let mut out = format!("{} (needs: {}; {last}", s.dataset, s.need);
            if let Some(e) = &s.extract_error {
                out.push_str(&format!("; extracting it now failed: {e}"));
            }
            out.push(')');
            out
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipeline::PeriodRule;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn extracted(job: &str, when: &str, status: Status) -> RunRecord {
        RunRecord {
            run_id: format!("{job}-{when}"),
            job: job.into(),
            kind: "extract".into(),
            period: String::new(),
            status,
            started_at: at(when).timestamp_micros(),
            finished_at: at(when).timestamp_micros(),
            rows: 0,
            deliveries: 0,
            error: String::new(),
            detail: String::new(),
        }
    }

    /// The shipped project: November 2026's PAR report, due Thursday 3 December at 07:00,
    /// when the ratings were last extracted on Monday 30 November.
    #[test]
    fn the_shipped_needs_of_the_november_report() {
        let project = Project::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let needs: Vec<String> = ["dossier", "satisfaction_vote", "rating"]
            .map(String::from)
            .to_vec();
        let november = Period::new(2026, 11, PeriodRule::Calendar);
        let due = at("2026-12-03T07:00:00+07:00");
        let mut history = vec![
            extracted("rating", "2026-11-30T03:00:00+07:00", Status::Succeeded),
            extracted("dossier", "2026-12-03T01:30:00+07:00", Status::Succeeded),
            extracted(
                "satisfaction_vote",
                "2026-12-03T01:40:00+07:00",
                Status::Failed,
            ),
            extracted(
                "satisfaction_vote",
                "2026-11-30T23:59:00+07:00",
                Status::Succeeded,
            ),
        ];
        let stale_names = |h: &[RunRecord], now| -> Vec<String> {
            stale(&project, h, &needs, november, now)
                .into_iter()
                .map(|s| s.dataset)
                .collect()
        };
        // Votes extracted only before the month ended (the later run failed) are stale; the
        // ratings, three days old, are not.
        assert_eq!(stale_names(&history, due), vec!["satisfaction_vote"]);
        history.push(extracted(
            "satisfaction_vote",
            "2026-12-01T00:00:00+07:00",
            Status::Succeeded,
        ));
        assert!(stale_names(&history, due).is_empty());
        // Nine days after the ratings' extract they are stale, whatever the period.
        assert_eq!(
            stale_names(&history, at("2026-12-09T03:00:01+07:00")),
            vec!["rating"]
        );
        // A dataset never extracted is stale.
        assert_eq!(stale_names(&[], due), needs);
    }

    fn stale_of(dataset: &str, last: Option<i64>, error: Option<&str>) -> Stale {
        Stale {
            dataset: dataset.into(),
            producer: dataset.into(),
            need: Freshness::Within(chrono::Duration::days(8)),
            last,
            extract_error: error.map(String::from),
        }
    }

    #[test]
    fn the_description_names_the_dataset_its_need_and_the_cause() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T03:00:00Z")
            .unwrap()
            .timestamp_micros();
        let text = describe(&[
            stale_of("rating", Some(t), Some("connection refused")),
            stale_of("dossier", None, None),
        ]);
        assert_eq!(
            text,
            "rating (needs: extracted within 8 days; last extract 2026-11-23 03:00 UTC; extracting it now failed: connection refused), dossier (needs: extracted within 8 days; never extracted)"
        );
    }
}
