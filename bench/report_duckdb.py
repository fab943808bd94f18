"""DuckDB running a report's SQL files over the same Parquet files parstat reads.

Usage: report_duckdb.py PROJECT REPORT PERIOD  (calendar periods)
Reads pipelines/REPORT.toml for the SQL list, the active files of each Delta table (through the
`deltalake` package, so files a merge replaced are not read twice), binds the same parameters by
name, defines local_date/local_month as macros in Asia/Ho_Chi_Minh, and runs the files in order,
each result a table the next can read (DataFusion's `last_value` aggregate is spelled `last`, as
DuckDB names it). Prints the seconds spent on the SQL (not the set-up), and
each file's seconds on standard error."""
import datetime as dt
import pathlib
import re
import sys
import time
import tomllib

import duckdb
from deltalake import DeltaTable

project, report, period = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
tz = dt.timezone(dt.timedelta(hours=7))
year, month = map(int, period.split("-"))


def month_start(y, m):
    return dt.datetime(y + (m - 1) // 12, (m - 1) % 12 + 1, 1, tzinfo=tz)


t0, t1 = month_start(year, month), month_start(year, month + 1)
prev = month_start(year, month - 1)
trend = month_start(year, month - 11)
params = {
    "period": period,
    "period_rule": "calendar",
    "period_start": t0,
    "period_end": t1,
    "period_start_date": t0.date(),
    "period_end_date": t1.date(),
    "period_start_month": period,
    "period_year": year,
    "year_start": dt.datetime(year, 1, 1, tzinfo=tz),
    "year_start_date": dt.date(year, 1, 1),
    "prev_period": prev.strftime("%Y-%m"),
    "trend_from": trend.strftime("%Y-%m"),
}

con = duckdb.connect(config={"threads": "2"})
con.execute("SET TimeZone = 'Asia/Ho_Chi_Minh'")
con.execute("CREATE MACRO local_date(ts) AS CAST(timezone('Asia/Ho_Chi_Minh', ts) AS DATE)")
con.execute("CREATE MACRO local_month(ts) AS strftime(timezone('Asia/Ho_Chi_Minh', ts), '%Y-%m')")
warehouse = project / "warehouse"
for table in sorted(p for p in warehouse.iterdir() if (p / "_delta_log").is_dir()):
    files = DeltaTable(str(table)).file_uris()
    if not files:
        continue
    listing = ", ".join("'" + f.replace("file://", "") + "'" for f in files)
    # Partition values are text (`2026-09`), except the rating's year, as parstat reads them.
    types = ", hive_types = {'year': SMALLINT}" if table.name == "rating" else ""
    con.execute(
        f"CREATE VIEW {table.name} AS SELECT * FROM read_parquet([{listing}], hive_partitioning = true, hive_types_autocast = false{types})"
    )
for seed in sorted((project / "sql" / "seeds").glob("*.csv")):
    con.execute(f"CREATE VIEW {seed.stem} AS SELECT * FROM read_csv('{seed}', all_varchar = true)")

spec = tomllib.loads((project / "pipelines" / f"{report}.toml").read_text())
elapsed = 0.0
for file in spec["sql"]:
    name = pathlib.Path(file).stem
    # DuckDB names DataFusion's ordered aggregate `last_value(x ORDER BY k)` `last`.
    sql = re.sub(r"\blast_value\(", "last(", (project / file).read_text())
    used = {k: v for k, v in params.items() if re.search(r"\$" + k + r"\b", sql)}
    start = time.perf_counter()
    con.execute(f"CREATE TEMP TABLE {name} AS {sql}", used)
    took = time.perf_counter() - start
    elapsed += took
    print(f"{name} {took:.3f}", file=sys.stderr)
    if not con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [f"published_{name}"]
    ).fetchone()[0]:
        con.execute(
            f"CREATE TEMP TABLE published_{name} AS SELECT CAST(NULL AS VARCHAR) AS period, "
            f"CAST(NULL AS VARCHAR) AS period_rule, * FROM {name} LIMIT 0"
        )
rows = con.execute("SELECT count(*) FROM dossier_monthly").fetchone()[0] if report == "monthly_par" else 0
print(f"{elapsed:.3f} {rows}")
