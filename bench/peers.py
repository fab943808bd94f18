"""Peers of bench/extract_pg.sh: DuckDB (postgres extension from the PyPI wheel) copying the
query's result to zstd Parquet, or ConnectorX reading it into Arrow. Usage:
peers.py duckdb|connectorx SQL_FILE OUT_DIR"""
import os
import sys

import duckdb_ext

which, sql_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
sql = open(sql_file, encoding="utf-8").read()
sql = "\n".join(l for l in sql.splitlines() if not l.startswith("--"))
sql = sql.replace("$watermark", "'1900-01-01 00:00:00'::timestamp")
dsn = "postgresql://postgres@127.0.0.1:5432/test"
if which == "duckdb":
    import duckdb

    # duckdb_ext is a namespace package: the extension ships inside its folder.
    ext = os.path.join(list(duckdb_ext.__path__)[0], "extensions", "v1.4.4", "linux_amd64", "postgres_scanner.duckdb_extension")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true", "threads": "2"})
    con.execute(f"LOAD '{ext}'")
    con.execute("ATTACH 'host=127.0.0.1 port=5432 user=postgres dbname=test' AS pg (TYPE postgres, READ_ONLY)")
    q = sql.replace("'", "''")
    con.execute(f"COPY (SELECT * FROM postgres_query('pg', '{q}')) TO '{out}/duckdb.parquet' (FORMAT parquet, COMPRESSION zstd)")
    print(con.execute(f"SELECT count(*) FROM '{out}/duckdb.parquet'").fetchone()[0])
else:
    import connectorx as cx

    t = cx.read_sql(dsn, sql, return_type="arrow")
    print(t.num_rows)
