//! `parstat test`: the data tests declared in `schemas/` over the warehouse, and the report
//! unit tests beside the SQL over small tables in memory; one outcome per test or expectation.

pub mod data;
pub mod unit;

use std::path::PathBuf;

use crate::config::diag::Diagnostics;
use crate::config::Project;
use crate::query::{self, Period, QueryError};
use crate::warehouse::Warehouse;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// A failing test of severity `warn`.
    Warn,
    Fail,
}

/// The outcome of one data test, or of one expectation of a unit test.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// What was tested: `dataset: test` or `report file #n: table`.
    pub label: String,
    /// `file:line` of the test.
    pub origin: PathBuf,
    pub status: Status,
    /// Why it failed: counts, first offending rows, differences.
    pub detail: String,
}

/// Which tests to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub data: bool,
    pub unit: bool,
    /// Only tests whose label or file contains one of these (all when empty).
    pub filters: Vec<String>,
}

impl Selection {
    fn wants(&self, label: &str, origin: &str) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| label.contains(f.as_str()) || origin.contains(f.as_str()))
    }
}

/// Loads the unit tests, reporting malformed files as diagnostics (a configuration error).
pub fn load_unit_tests(project: &Project) -> (Vec<unit::UnitTest>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let tests = unit::load(project, &mut diags);
    (tests, diags)
}

/// Runs the selected tests. `period` binds `$period` and the other parameters for data tests
/// that use them.
pub async fn run(
    project: &Project,
    units: &[unit::UnitTest],
    selection: &Selection,
    period: &Period,
    mut on_outcome: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, QueryError> {
    let mut out = Vec::new();
    if selection.data {
        let wh = Warehouse::new(&project.root, &project.settings.warehouse_url)?;
        let (ctx, inputs) = query::session(project, &wh).await?;
        let params = query::params(period, project.settings.timezone);
        let wanted = |label: &str| selection.wants(label, "");
        for o in data::run(&ctx, &inputs, &project.schemas, &params, &wanted).await {
            on_outcome(&o);
            out.push(o);
        }
    }
    if selection.unit {
        for t in units {
            let file = t.file.display().to_string();
            if !selection.wants(&t.report, &file) {
                continue;
            }
            for o in unit::run(project, t).await {
                on_outcome(&o);
                out.push(o);
            }
        }
    }
    Ok(out)
}
