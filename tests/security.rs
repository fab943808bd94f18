//! Least privilege: report SQL, checks, tests and `parstat query` can only query; nothing
//! they run reads or writes a file outside the warehouse.

use crate::util::*;

/// A report SQL file that would write `target` if it ran.
fn add_writing_sql(p: &std::path::Path, target: &std::path::Path) {
    std::fs::write(
        p.join("sql/par/evil.sql"),
        format!(
            "COPY (SELECT 'x' AS x) TO '{}' STORED AS CSV\n",
            target.display()
        ),
    )
    .unwrap();
    edit(
        p,
        "pipelines/monthly_par.toml",
        "\"sql/par/late_procedures.sql\",",
        "\"sql/par/late_procedures.sql\",\n    \"sql/par/evil.sql\",",
    );
}

#[test]
fn report_sql_that_writes_a_file_is_refused_by_check_and_never_runs() {
    let p = project_copy();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("outside.csv");
    add_writing_sql(p.path(), &target);
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("sql/par/evil.sql") && err.contains("only queries (SELECT, WITH, VALUES)"),
        "{err}"
    );
    // The report's unit tests run its SQL in memory: the COPY is refused there too.
    let o = run(p.path(), &["test", "--unit"]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        !target.exists(),
        "the report's SQL wrote {}",
        target.display()
    );
}

#[test]
fn a_check_that_creates_a_table_is_refused() {
    let p = project_copy();
    edit(
        p.path(),
        "pipelines/monthly_par.toml",
        "[[checks]]\nname = \"to_process_identity\"",
        "[[checks]]\nname = \"reads_a_file\"\nmessage = \"x\"\nsql = \"CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/hostname'\"\n\n[[checks]]\nname = \"to_process_identity\"",
    );
    let o = parstat(p.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("check `reads_a_file`") && err.contains("only queries"),
        "{err}"
    );
}

#[test]
fn the_analysts_query_cannot_read_or_write_files() {
    let p = project_copy();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("copied.csv");
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        target.display()
    );
    for sql in [
        copy.as_str(),
        "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/hostname'",
        "SET datafusion.execution.target_partitions = 1",
    ] {
        let o = run(p.path(), &["query", sql]);
        // A refused statement is a usage error, like any SQL error of `query`.
        assert_eq!(o.status.code(), Some(2), "{sql}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("only queries (SELECT, WITH, VALUES)")
                && stderr(&o).contains("-o FILE"),
            "{sql}: {}",
            stderr(&o)
        );
    }
    assert!(!target.exists());
    // A query still runs, and `-o` writes its result where the analyst asks.
    let out = outside.path().join("result.csv");
    ok(run(
        p.path(),
        &["query", "SELECT 1 AS x", "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read_to_string(&out).unwrap().contains('1'));
}
