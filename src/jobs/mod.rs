//! The one place that chains the stages into jobs: a report job runs query → checks →
//! publish (or preview files). Extract jobs chain source → validate → warehouse in `extract`.

pub mod report;
