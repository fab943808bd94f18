//! The warehouse: one Delta Lake table per dataset (and the quarantine) under the
//! `[warehouse] url`, a local folder by default or `s3://` through the same code; writes that
//! carry their watermark in the same atomic commit as their data.

mod batches;
pub mod lease;
pub mod local_reads;
mod log;
mod new_keys;
pub mod published;
pub mod quarantine;
pub mod runs;
pub mod s3;
mod store;
mod write;

pub use batches::{cast_batch, dedup, delta_schema, sort_batch, to_delta};
pub use log::{app_version, checkpoint_skipped, commit_properties, followed, vacuum};
pub use new_keys::NewKeys;
pub use store::{object_store_at, register, Warehouse};
pub use write::{write, write_with, writer_properties, WriteMode};

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("warehouse url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("table `{table}`: {source}")]
    Delta {
        table: String,
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("table `{table}`: {message}")]
    Data { table: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::write::partition_filter;
    use super::*;
    use arrow::array::{Array, RecordBatch};
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Schema as ArrowSchema};
    use arrow::datatypes::{Field, TimeUnit};
    use deltalake::kernel::transaction::CommitProperties;
    use std::path::Path;
    use std::sync::Arc;

    /// (finished, code, tag) rows as a batch; `tag` tells rows with equal keys apart.
    fn batch(rows: &[(Option<i64>, &str, i64)]) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new(
                "finished",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("code", DataType::Utf8, false),
            Field::new("tag", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The values of the Int64 column `name` of `b` (the warehouse's tests tell rows apart by one).
    pub(super) fn int64s(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    /// The names of the files in `dir` that end with `suffix`, sorted.
    fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        v.sort();
        v
    }

    fn tags(b: &RecordBatch) -> Vec<i64> {
        int64s(b, "tag")
    }

    #[test]
    fn sorting_puts_nulls_last_breaks_ties_by_the_next_column_and_keeps_equal_rows_in_order() {
        let rows = [
            (None, "b", 0),
            (Some(20), "a", 1),
            (Some(10), "z", 2),
            (None, "a", 3),
            (Some(10), "c", 4),
            (Some(20), "a", 5),
            (None, "a", 6),
            (Some(-5), "q", 7),
        ];
        let by = ["finished".to_string(), "code".to_string()];
        // The time first (NULLs last), then the code, then the reading order.
        assert_eq!(
            tags(&sort_batch(&batch(&rows), &by).unwrap()),
            [7, 4, 2, 1, 5, 3, 6, 0]
        );
        // A text first column takes the general path, with the same rules.
        let by = ["code".to_string(), "finished".to_string()];
        assert_eq!(
            tags(&sort_batch(&batch(&rows), &by).unwrap()),
            [1, 5, 3, 6, 0, 4, 7, 2]
        );
    }

    /// The files a load writes: LZ4 for ordinary columns; the key without a dictionary; a
    /// digest without dictionary, compression or statistics.
    #[tokio::test]
    async fn dataset_files_carry_the_parquet_settings_of_each_kind_of_column() {
        use deltalake::parquet::basic::{Compression, Encoding};
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let table = wh.open("t").await.unwrap();
        let rows: Vec<(Option<i64>, String, i64)> = (0..1_000)
            .map(|i| (Some(i % 7), format!("{i:064x}"), i % 3))
            .collect();
        let rows: Vec<(Option<i64>, &str, i64)> =
            rows.iter().map(|r| (r.0, r.1.as_str(), r.2)).collect();
        let props = writer_properties(&["tag".to_string()], &["code".to_string()]);
        write_with(
            table,
            "t",
            batch(&rows),
            None,
            WriteMode::Append,
            CommitProperties::default(),
            Some(props),
        )
        .await
        .unwrap();
        let footer = |table: &str| {
            let file = std::fs::read_dir(dir.path().join("warehouse").join(table))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "parquet"))
                .expect("a Parquet file");
            let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
            reader.metadata().clone()
        };
        let meta = footer("t");
        let rg = meta.row_group(0);
        let col = |name: &str| {
            (0..rg.num_columns())
                .map(|i| rg.column(i))
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        assert_eq!(col("finished").compression(), Compression::LZ4_RAW);
        assert_eq!(col("tag").compression(), Compression::LZ4_RAW);
        let dictionary = |name: &str| {
            col(name)
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY)
        };
        assert!(
            dictionary("finished"),
            "seven repeated values keep their dictionary"
        );
        assert!(!dictionary("tag"));
        assert!(!dictionary("code"));
        assert_eq!(col("code").compression(), Compression::UNCOMPRESSED);
        assert!(col("code").statistics().is_none());
        assert!(col("finished").statistics().is_some());

        // 20,000 distinct times: the dictionary stops at 64 KiB (8,192 values), not at the
        // 160,000 bytes of all of them.
        let rows: Vec<(Option<i64>, &str, i64)> = (0..20_000).map(|i| (Some(i), "c", 0)).collect();
        write_with(
            wh.open("u").await.unwrap(),
            "u",
            batch(&rows),
            None,
            WriteMode::Append,
            CommitProperties::default(),
            Some(writer_properties(&[], &[])),
        )
        .await
        .unwrap();
        let meta = footer("u");
        let finished = meta.row_group(0).column(0);
        assert_eq!(finished.column_path().string(), "finished");
        let dictionary = finished.data_page_offset() - finished.dictionary_page_offset().unwrap();
        assert!(dictionary < 70_000, "{dictionary} bytes of dictionary");
    }

    #[tokio::test]
    async fn vacuum_deletes_replaced_files_once_their_retention_has_passed() {
        #[derive(Debug)]
        struct Later(i64);
        impl deltalake::operations::vacuum::Clock for Later {
            fn current_timestamp_millis(&self) -> i64 {
                chrono::Utc::now().timestamp_millis() + self.0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let files = || names_ending(&dir.path().join("warehouse/t"), ".parquet").len();
        let mut table = wh.open("t").await.unwrap();
        for tag in [1, 2] {
            table = write(
                table,
                "t",
                batch(&[(Some(1), "a", tag), (Some(2), "b", tag)]),
                None,
                WriteMode::Replace,
                CommitProperties::default(),
            )
            .await
            .unwrap();
        }
        assert_eq!(files(), 2, "the replaced file is still on disk");
        // Within the retention period (7 days by default) nothing goes, and nothing commits.
        let version = table.version();
        assert_eq!(vacuum(&table, None, "test").await.unwrap(), 0);
        let day = 24 * 3600 * 1000;
        assert_eq!(
            vacuum(&table, Some(Arc::new(Later(6 * day))), "test")
                .await
                .unwrap(),
            0
        );
        assert_eq!(files(), 2);
        assert_eq!(wh.open("t").await.unwrap().version(), version);
        // Past it, the replaced file goes; the table reads the same.
        assert_eq!(
            vacuum(&table, Some(Arc::new(Later(8 * day))), "test")
                .await
                .unwrap(),
            1
        );
        assert_eq!(files(), 1);
        let table = wh.open("t").await.unwrap();
        assert!(
            table.version() > version,
            "vacuum records itself in the log"
        );
        let ctx = datafusion::prelude::SessionContext::new();
        register(&ctx, &table, "t").await.unwrap();
        let out = ctx
            .sql("SELECT SUM(tag) AS s FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(int64s(&out[0], "s"), [4]);
    }

    /// Commits that another follows write no checkpoint; the one they skipped is written when
    /// the run is done, and a run's last commit writes its own on the interval.
    #[tokio::test]
    async fn a_run_writes_the_checkpoint_its_followed_commits_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let log = dir.path().join("warehouse/t/_delta_log");
        let checkpoints = || names_ending(&log, ".checkpoint.parquet");
        let rows = batch(&[(Some(1), "a", 1)]);
        // Version 0, with a checkpoint every 2 commits (delta-rs checkpoints v when v + 1 is
        // a multiple of 2); then a run of followed commits, versions 1 to 4.
        let mut table = wh
            .open("t")
            .await
            .unwrap()
            .write(vec![rows.clone()])
            .with_configuration([("delta.checkpointInterval", Some("2"))])
            .with_commit_properties(followed(CommitProperties::default()))
            .await
            .unwrap();
        for _ in 1..=4 {
            table = write(
                table,
                "t",
                rows.clone(),
                None,
                WriteMode::Append,
                followed(CommitProperties::default()),
            )
            .await
            .unwrap();
        }
        assert_eq!(table.version(), Some(4));
        assert!(checkpoints().is_empty(), "{:?}", checkpoints());
        assert!(checkpoint_skipped(&table, Some(0)).await.unwrap());
        assert_eq!(checkpoints(), ["00000000000000000004.checkpoint.parquet"]);
        // A run whose only commit (version 5) is due writes its own; nothing was skipped.
        let table = write(
            table,
            "t",
            rows.clone(),
            None,
            WriteMode::Append,
            CommitProperties::default(),
        )
        .await
        .unwrap();
        assert!(!checkpoint_skipped(&table, Some(4)).await.unwrap());
        assert_eq!(
            checkpoints(),
            [
                "00000000000000000004.checkpoint.parquet",
                "00000000000000000005.checkpoint.parquet"
            ]
        );
        // A run of one commit that is not due (version 6) skips nothing either.
        let table = write(
            table,
            "t",
            rows,
            None,
            WriteMode::Append,
            followed(CommitProperties::default()),
        )
        .await
        .unwrap();
        assert!(!checkpoint_skipped(&table, Some(5)).await.unwrap());
        assert_eq!(checkpoints().len(), 2);
    }

    /// (code, part, v) rows, `part` the partition column.
    fn parted(rows: &[(&str, Option<&str>, i64)]) -> RecordBatch {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("part", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// The latest commit's operation and metrics, as the Delta log holds them.
    fn last_commit(dir: &Path) -> serde_json::Value {
        let log = dir.join("_delta_log");
        let last = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .max()
            .unwrap();
        std::fs::read_to_string(last)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find_map(|v| v.get("commitInfo").cloned())
            .unwrap()
    }

    // Long: one commit per partition sets up what the merge's reads are checked against.
    #[tokio::test]
    async fn a_merge_reads_only_the_partitions_where_its_keys_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path(), "warehouse").unwrap();
        let path = dir.path().join("warehouse").join("t");
        let mut table = wh.open("t").await.unwrap();
        // One file per partition: A, B, C and the null partition.
        for rows in [
            vec![("a1", Some("A"), 1), ("a2", Some("A"), 2)],
            vec![("b1", Some("B"), 3)],
            vec![("c1", Some("C"), 4), ("c2", Some("C"), 5)],
            vec![("n1", None, 6)],
        ] {
            table = write(
                table,
                "t",
                parted(&rows),
                Some("part"),
                WriteMode::Append,
                CommitProperties::default(),
            )
            .await
            .unwrap();
        }
        let key = ["code".to_string()];
        let merge = || WriteMode::Merge {
            key: &key,
            order: None,
        };
        // a1 moves from A to B, c1 and n1 change, z1 is new: B holds none of these keys.
        let table = write(
            table,
            "t",
            parted(&[
                ("a1", Some("B"), 10),
                ("c1", Some("C"), 11),
                ("n1", None, 12),
                ("z1", Some("D"), 13),
            ]),
            Some("part"),
            merge(),
            CommitProperties::default(),
        )
        .await
        .unwrap();
        let commit = last_commit(&path);
        assert_eq!(commit["operation"], "MERGE");
        let metrics = &commit["operationMetrics"];
        assert_eq!(metrics["num_target_files_scanned"], 3, "{metrics}");
        assert_eq!(metrics["num_target_rows_updated"], 3, "{metrics}");
        assert_eq!(metrics["num_target_rows_inserted"], 1, "{metrics}");
        // Every key once, with the incoming values.
        let ctx = datafusion::prelude::SessionContext::new();
        register(&ctx, &table, "t").await.unwrap();
        let rows = ctx
            .sql("SELECT code, COALESCE(part, '-') AS part, v FROM t ORDER BY code")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        let got: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("code"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            got,
            [
                "| a1 | B | 10 |",
                "| a2 | A | 2 |",
                "| b1 | B | 3 |",
                "| c1 | C | 11 |",
                "| c2 | C | 5 |",
                "| n1 | - | 12 |",
                "| z1 | D | 13 |",
            ]
        );
        // Keys none of which is stored: an insert, no merge.
        write(
            table,
            "t",
            parted(&[("y1", Some("A"), 20)]),
            Some("part"),
            merge(),
            CommitProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(last_commit(&path)["operation"], "WRITE");
    }

    #[test]
    fn partition_filters_quote_text_and_match_nulls_apart() {
        use datafusion::scalar::ScalarValue;
        let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
        assert_eq!(
            partition_filter(
                "m",
                &[
                    text("2026-10"),
                    ScalarValue::Dictionary(Box::new(DataType::UInt16), Box::new(text("it's"))),
                    ScalarValue::Utf8(None),
                ]
            ),
            "t.m IN ('2026-10', 'it''s') OR t.m IS NULL"
        );
        assert_eq!(
            partition_filter("year", &[ScalarValue::Int16(Some(2019))]),
            "t.year IN (2019)"
        );
    }
}
