//! The Delta log's upkeep: what a table's transactions record (watermarks, loaded files), the
//! properties of a commit, checkpoints a run skipped, and vacuuming replaced files.

use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::DeltaTable;
use std::sync::Arc;

use super::WarehouseError;

/// The version of an application transaction recorded in the table (our watermarks and
/// loaded-file marks), `None` for a new table or an unknown id.
pub async fn app_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>, WarehouseError> {
    if table.version().is_none() {
        return Ok(None);
    }
    let state = table.snapshot().map_err(|source| WarehouseError::Delta {
        table: app_id.to_string(),
        source: Box::new(source),
    })?;
    state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(|source| WarehouseError::Delta {
            table: app_id.to_string(),
            source: Box::new(source),
        })
}

/// Commit properties: run metadata plus application transactions (watermark, loaded files).
pub fn commit_properties(
    metadata: Vec<(String, serde_json::Value)>,
    txns: Vec<(String, i64)>,
) -> CommitProperties {
    CommitProperties::default()
        .with_metadata(metadata)
        .with_application_transactions(
            txns.into_iter()
                .map(|(id, v)| Transaction::new(id, v))
                .collect(),
        )
}

/// The properties of a commit that another of the same run follows: no checkpoint. delta-rs
/// writes one every 100 commits (`delta.checkpointInterval`), and each commit a process makes
/// after that grows its memory, so a long first load would pass 1 GiB. The run writes the
/// checkpoint it skipped once it is done ([`checkpoint_skipped`]).
pub fn followed(props: CommitProperties) -> CommitProperties {
    props.with_create_checkpoint(false)
}

/// Writes a checkpoint of `table` when a run that committed the versions after `before` (all
/// of them, for `None`) skipped one that delta-rs would have written (see [`followed`]); the
/// run's last commit writes its own on the usual interval. True when one was written.
pub async fn checkpoint_skipped(
    table: &DeltaTable,
    before: Option<u64>,
) -> Result<bool, WarehouseError> {
    use deltalake::table::config::TablePropertiesExt as _;
    let err = |source: deltalake::DeltaTableError| WarehouseError::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    };
    let Some(last) = table.version() else {
        return Ok(false);
    };
    let every = table
        .snapshot()
        .map_err(err)?
        .table_config()
        .checkpoint_interval()
        .get();
    // delta-rs checkpoints version v when v + 1 is a multiple of the interval; the versions
    // this run committed before its last are before+1 ..= last-1.
    let first = before.map_or(0, |b| b + 1);
    let due = |v: u64| (v + 1).is_multiple_of(every);
    let skipped = last > first && (last / every) > (first / every);
    if !skipped || due(last) {
        return Ok(false);
    }
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .map_err(err)?;
    Ok(true)
}

/// Deletes the files that the table's commits replaced longer ago than its retention period
/// (`delta.deletedFileRetentionDuration`, 7 days by default), and returns how many. Every
/// merge rewrites the files it touches and a replace rewrites them all; without this the
/// replaced files would stay forever and fill the disk. Only files the log names as removed are
/// deleted (delta-rs's lite mode: no listing of the table's folder), and a version of the
/// last 7 days can still be read. `clock` replaces the system clock (tests).
pub async fn vacuum(
    table: &DeltaTable,
    clock: Option<Arc<dyn deltalake::operations::vacuum::Clock>>,
    run_id: &str,
) -> Result<usize, WarehouseError> {
    let mut vacuum = table
        .clone()
        .vacuum()
        .with_mode(deltalake::operations::vacuum::VacuumMode::Lite)
        .with_commit_properties(commit_properties(
            vec![("parstat.run_id".into(), run_id.into())],
            vec![],
        ));
    if let Some(c) = clock {
        vacuum = vacuum.with_clock(c);
    }
    let (_, metrics) = vacuum.await.map_err(|source| WarehouseError::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    })?;
    Ok(metrics.files_deleted.len())
}
