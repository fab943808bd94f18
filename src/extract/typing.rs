//! Typing of a source's rows: each row's cells typed into the dataset's columns, checked
//! against the schema's row rules and the clock, and the rows that fail kept aside, with
//! their reasons and without personal data, for the quarantine.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Duration};
use chrono_tz::Tz;
use std::collections::BTreeMap;

use super::cell::Cell;
use super::convert::{RowPlan, Scratch};
use super::pii::Hasher;
use super::rules::Rules;
use super::{ExtractError, Position, RawRow};
use crate::config::pipeline::ExtractJob;
use crate::config::schema::{Personal, Schema};
use crate::warehouse::quarantine::Rejected;

/// The required dataset columns the source does not provide, as an error message.
pub(crate) fn missing_required(schema: &Schema, names: &[String]) -> Option<String> {
    let missing: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| !c.nullable && !names.contains(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    let unexpected: Vec<&str> = names
        .iter()
        .filter(|n| schema.column(n).is_none())
        .map(|s| s.as_str())
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut m = format!(
        "the source's columns do not match dataset `{}`",
        schema.name
    );
    if !missing.is_empty() {
        m.push_str(&format!("; missing: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        m.push_str(&format!("; unexpected: {}", unexpected.join(", ")));
    }
    m.push_str(
        ". Name the query's columns as the dataset's (`SELECT ma_ho_so AS dossier_code, ...`)",
    );
    Some(m)
}

/// What types a source's rows: the plan for its columns, their names, and what the quarantine
/// needs to write a rejected row without personal data.
pub(crate) struct Typing {
    plan: RowPlan,
    rules: Rules,
    names: Vec<String>,
    personal: BTreeMap<String, Personal>,
    schema: Schema,
    tz: chrono_tz::Tz,
    /// How far past now a watermark time may be (`future_tolerance_minutes`).
    future_tolerance: Duration,
}

impl Typing {
    /// The typing of a source whose columns are `names`, or why they do not fit the dataset.
    pub(crate) fn new(
        schema: &Schema,
        job: &ExtractJob,
        names: Vec<String>,
        tz: Tz,
        hasher: Option<Hasher>,
    ) -> Result<Typing, ExtractError> {
        if let Some(missing) = missing_required(schema, &names) {
            return Err(ExtractError::Source(missing));
        }
        let plan = RowPlan::new(schema, job, &names, tz, hasher);
        Ok(Typing {
            rules: Rules::plan(schema, &plan.schema)?,
            plan,
            names,
            personal: schema
                .columns
                .iter()
                .filter_map(|c| c.personal.map(|p| (c.name.clone(), p)))
                .collect(),
            schema: schema.clone(),
            tz,
            future_tolerance: Duration::minutes(job.future_tolerance_minutes),
        })
    }

    /// The typed batches' schema.
    pub(crate) fn arrow_schema(&self) -> SchemaRef {
        self.plan.schema.clone()
    }

    /// Types and validates rows: the valid ones as a batch, the rest with their reasons.
    pub(crate) fn validate(
        &self,
        rows: Vec<RawRow>,
    ) -> Result<(RecordBatch, Vec<Rejected>), ExtractError> {
        let (batch, mut rejected, kept_rows) = self.type_rows(rows)?;
        let why = self.row_checks(&batch)?;
        if why.is_empty() {
            return Ok((batch, rejected));
        }
        let mut keep = vec![true; batch.num_rows()];
        for &i in why.keys() {
            keep[i] = false;
        }
        for (i, reasons) in why {
            let (position, cells) = &kept_rows[i];
            rejected.push(Rejected {
                position: position.to_string(),
                row_json: self
                    .plan
                    .safe_json(&self.names, cells, &self.personal, false)
                    .to_string(),
                reasons,
            });
        }
        let mask = arrow::array::BooleanArray::from(keep);
        let batch = arrow::compute::filter_record_batch(&batch, &mask)?;
        Ok((batch, rejected))
    }

    /// Rows typed into a batch, the unreadable or mistyped ones rejected with their reasons,
    /// and the cells of the typed ones (a later check may still reject them).
    #[allow(clippy::type_complexity)]
    fn type_rows(
        &self,
        rows: Vec<RawRow>,
    ) -> Result<(RecordBatch, Vec<Rejected>, Vec<(Position, Vec<Cell>)>), ExtractError> {
        let Typing {
            plan,
            names,
            personal,
            ..
        } = self;
        let mut builders = plan.builders(rows.len());
        let mut scratch = Scratch::default();
        let mut rejected = Vec::new();
        let mut kept_rows: Vec<(Position, Vec<Cell>)> = Vec::with_capacity(rows.len());
        for r in rows {
            if r.misshapen {
                rejected.push(Rejected {
                    row_json: plan.safe_json(names, &r.cells, personal, true).to_string(),
                    position: r.position.to_string(),
                    reasons: r.errors,
                });
                continue;
            }
            let mut reasons = r.errors;
            if reasons.is_empty() {
                if let Err(e) = plan.append_row(&r.cells, &mut builders, &mut scratch) {
                    reasons = e;
                }
            } else if let Err(e) = plan.type_row(&r.cells, &mut Vec::new()) {
                // Unreadable already: typed only to list every reason.
                reasons.extend(e);
            }
            if reasons.is_empty() {
                kept_rows.push((r.position, r.cells));
            } else {
                rejected.push(Rejected {
                    row_json: plan.safe_json(names, &r.cells, personal, false).to_string(),
                    position: r.position.to_string(),
                    reasons,
                });
            }
        }
        let batch = plan.finish(&mut builders)?;
        Ok((batch, rejected, kept_rows))
    }

    /// Why rows of a typed batch fail, by row: the schema's row rules, and watermark times
    /// from the future (they would pin the watermark there and hide every row updated until
    /// then: such rows wait in the quarantine instead).
    fn row_checks(
        &self,
        batch: &RecordBatch,
    ) -> Result<BTreeMap<usize, Vec<String>>, ExtractError> {
        let schema = &self.schema;
        let failures = self.rules.evaluate(batch)?;
        let mut why: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (rule, rows) in schema.rules.iter().zip(&failures) {
            for &i in rows {
                why.entry(i)
                    .or_default()
                    .push(format!("rule {}: {}", rule.name, rule.message));
            }
        }
        let Some(column) = schema.watermark.as_deref() else {
            return Ok(why);
        };
        let limit = (crate::clock::now() + self.future_tolerance).timestamp_micros();
        let times = batch.column_by_name(column).and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
        });
        for (i, t) in times.iter().flat_map(|a| a.iter()).enumerate() {
            let Some(t) = t.filter(|&t| t > limit) else {
                continue;
            };
            let shown = DateTime::from_timestamp_micros(t)
                .map(|t| {
                    t.with_timezone(&self.tz)
                        .format("%Y-%m-%d %H:%M:%S")
                        .to_string()
                })
                .unwrap_or_else(|| t.to_string());
            why.entry(i).or_default().push(format!(
                "{column}: {shown} is in the future (later than now plus {} minutes, `future_tolerance_minutes`); correct the source's clock or value",
                self.future_tolerance.num_minutes()
            ));
        }
        Ok(why)
    }
}
