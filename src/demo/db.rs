//! The demo's one-stop-shop database: the same dossiers and votes as the files, in a schema of
//! the system's own (Vietnamese table and column names), loaded into PostgreSQL by COPY or into
//! MariaDB/MySQL by multi-row inserts, streaming so that memory stays bounded.

use chrono::NaiveDateTime;
use futures_util::SinkExt;
use mysql_async::prelude::Queryable;
use mysql_async::Value as V;

use super::dossier::{BadKind, Catalogue, Dossier};
use super::{DemoError, DemoOptions};

/// Tables are replaced whole on every load: the demo database belongs to the demo.
const TABLES: &[&str] = &[
    "danh_gia_hai_long",
    "ho_so",
    "thu_tuc",
    "linh_vuc",
    "don_vi",
];

fn pg_ddl(schema: &str) -> String {
    let mut s = format!("CREATE SCHEMA IF NOT EXISTS {schema};\n");
    for t in TABLES {
        s.push_str(&format!("DROP TABLE IF EXISTS {schema}.{t};\n"));
    }
    s.push_str(&format!(
        "CREATE TABLE {schema}.don_vi (ma_don_vi text PRIMARY KEY, ten_don_vi text NOT NULL, cap_don_vi text NOT NULL, ma_dia_ban text, hieu_luc_tu date, hieu_luc_den date);
CREATE TABLE {schema}.linh_vuc (ma_linh_vuc text PRIMARY KEY, ten_linh_vuc text NOT NULL);
CREATE TABLE {schema}.thu_tuc (ma_thu_tuc text PRIMARY KEY, ten_thu_tuc text NOT NULL, ma_linh_vuc text NOT NULL REFERENCES {schema}.linh_vuc, muc_do smallint NOT NULL, so_ngay_giai_quyet smallint, le_phi bigint NOT NULL);
CREATE TABLE {schema}.ho_so (
  ma_ho_so text PRIMARY KEY, ma_thu_tuc text NOT NULL, ma_don_vi text NOT NULL,
  kenh_thuc_hien smallint NOT NULL, loai_doi_tuong smallint NOT NULL,
  chu_ho_so text, so_giay_to text, so_dien_thoai text, dia_chi text,
  trang_thai smallint NOT NULL,
  ngay_nop timestamp, ngay_tiep_nhan timestamp, ngay_hen_tra timestamp,
  ngay_ket_thuc_xu_ly timestamp, ngay_tra timestamp,
  so_lan_bo_sung smallint NOT NULL, tong_phi bigint NOT NULL,
  thanh_toan_truc_tuyen smallint NOT NULL, co_thanh_phan_so_hoa boolean NOT NULL,
  xac_thuc_vneid boolean NOT NULL, ngay_cap_nhat timestamp NOT NULL);
CREATE TABLE {schema}.danh_gia_hai_long (ma_ho_so text NOT NULL, thoi_gian timestamp NOT NULL, muc_do smallint NOT NULL, PRIMARY KEY (ma_ho_so, thoi_gian));
"
    ));
    s
}

fn mysql_ddl() -> Vec<String> {
    let mut v: Vec<String> = TABLES
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS {t}"))
        .collect();
    v.push("CREATE TABLE don_vi (ma_don_vi VARCHAR(40) PRIMARY KEY, ten_don_vi VARCHAR(255) NOT NULL, cap_don_vi VARCHAR(10) NOT NULL, ma_dia_ban VARCHAR(10), hieu_luc_tu DATE, hieu_luc_den DATE) CHARACTER SET utf8mb4".into());
    v.push("CREATE TABLE linh_vuc (ma_linh_vuc VARCHAR(20) PRIMARY KEY, ten_linh_vuc VARCHAR(255) NOT NULL) CHARACTER SET utf8mb4".into());
    v.push("CREATE TABLE thu_tuc (ma_thu_tuc VARCHAR(40) PRIMARY KEY, ten_thu_tuc VARCHAR(500) NOT NULL, ma_linh_vuc VARCHAR(20) NOT NULL, muc_do TINYINT NOT NULL, so_ngay_giai_quyet SMALLINT, le_phi BIGINT NOT NULL) CHARACTER SET utf8mb4".into());
    v.push(
        "CREATE TABLE ho_so (ma_ho_so VARCHAR(60) PRIMARY KEY, ma_thu_tuc VARCHAR(40) NOT NULL, ma_don_vi VARCHAR(40) NOT NULL,
  kenh_thuc_hien TINYINT NOT NULL, loai_doi_tuong TINYINT NOT NULL,
  chu_ho_so VARCHAR(255), so_giay_to VARCHAR(20), so_dien_thoai VARCHAR(20), dia_chi VARCHAR(500),
  trang_thai TINYINT NOT NULL, ngay_nop DATETIME, ngay_tiep_nhan DATETIME, ngay_hen_tra DATETIME,
  ngay_ket_thuc_xu_ly DATETIME, ngay_tra DATETIME, so_lan_bo_sung TINYINT NOT NULL, tong_phi BIGINT NOT NULL,
  thanh_toan_truc_tuyen TINYINT NOT NULL, co_thanh_phan_so_hoa BOOLEAN NOT NULL, xac_thuc_vneid BOOLEAN NOT NULL,
  ngay_cap_nhat DATETIME NOT NULL, KEY (ngay_cap_nhat)) CHARACTER SET utf8mb4"
            .into(),
    );
    v.push("CREATE TABLE danh_gia_hai_long (ma_ho_so VARCHAR(60) NOT NULL, thoi_gian DATETIME NOT NULL, muc_do TINYINT NOT NULL, PRIMARY KEY (ma_ho_so, thoi_gian)) CHARACTER SET utf8mb4".into());
    v
}

/// The applicant name as the database holds it: broken encoding shows as replacement
/// characters in a UTF-8 database, so such rows carry a damaged name instead.
fn stored_name(d: &Dossier) -> std::borrow::Cow<'_, str> {
    if d.bad == Some(BadKind::BrokenEncoding) {
        String::from_utf8_lossy(b"Nguy\xe1n V\xe3n")
            .into_owned()
            .into()
    } else {
        d.applicant.name.as_str().into()
    }
}

fn ts(t: Option<NaiveDateTime>) -> Option<String> {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// COPY text format: escape backslash, tab, newline and carriage return; `\N` is NULL.
fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

fn copy_line(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        copy_field(out, *f);
    }
    out.push('\n');
}

fn db_err(target: &str) -> impl Fn(String) -> DemoError + '_ {
    move |message| DemoError::Database {
        target: target.to_string(),
        message,
    }
}

/// Loads the demo's dossiers and votes into PostgreSQL schema `schema`; returns rows loaded.
pub async fn load_postgres(
    url: &str,
    schema: &str,
    opts: &DemoOptions,
) -> Result<(u64, u64), DemoError> {
    let err = db_err("PostgreSQL");
    let (client, conn) = crate::extract::tls::connect_postgres(url)
        .await
        .map_err(&err)?;
    let conn_task = tokio::spawn(conn);
    pg_create_tables(&client, schema, opts).await?;
    let cat = Catalogue::new();
    pg_copy_catalogue(&client, schema, &cat)
        .await
        .map_err(&err)?;
    let (rows, vote_rows, votes) = pg_copy_dossiers(&client, schema, &cat, opts)
        .await
        .map_err(&err)?;
    pg_copy(
        &client,
        &format!("COPY {schema}.danh_gia_hai_long FROM STDIN"),
        votes,
    )
    .await
    .map_err(&err)?;
    client
        .batch_execute(&format!(
            "CREATE INDEX ON {schema}.ho_so (ngay_cap_nhat); ANALYZE {schema}.ho_so;"
        ))
        .await
        .map_err(|e| err(e.to_string()))?;
    drop(client);
    let _ = conn_task.await;
    Ok((rows, vote_rows))
}

/// Replaces the demo's tables in `schema`, refusing tables the demo did not create.
async fn pg_create_tables(
    client: &tokio_postgres::Client,
    schema: &str,
    opts: &DemoOptions,
) -> Result<(), DemoError> {
    let err = db_err("PostgreSQL");
    // Tables of these names that the demo did not create may be a real one-stop-shop
    // system's: never dropped without --force.
    let names: Vec<String> = TABLES
        .iter()
        .chain(&[super::MARKER])
        .map(|t| t.to_string())
        .collect();
    let found: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name = ANY($2) ORDER BY 1",
            &[&schema, &names],
        )
        .await
        .map_err(|e| err(e.to_string()))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let marked = found.iter().any(|t| t == super::MARKER);
    let present: Vec<&str> = TABLES
        .iter()
        .copied()
        .filter(|t| found.iter().any(|x| x == t))
        .collect();
    if !present.is_empty() && !marked && !opts.force {
        return Err(DemoError::NotOurs {
            target: format!("PostgreSQL schema `{schema}`"),
            tables: present.join(", "),
        });
    }
    client
        .batch_execute(&format!(
            "{}CREATE TABLE IF NOT EXISTS {schema}.{} (created_at timestamptz DEFAULT now());",
            pg_ddl(schema),
            super::MARKER
        ))
        .await
        .map_err(|e| err(e.to_string()))
}

/// Agencies, fields and procedures.
async fn pg_copy_catalogue(
    client: &tokio_postgres::Client,
    schema: &str,
    cat: &Catalogue,
) -> Result<(), String> {
    let mut buf = String::new();
    for a in &cat.agencies {
        let from = a.from.map(|d| d.to_string());
        let until = a.until.map(|d| d.to_string());
        copy_line(
            &mut buf,
            &[
                Some(&a.code),
                Some(&a.name),
                Some(a.level.source_code()),
                a.area_code.as_deref(),
                from.as_deref(),
                until.as_deref(),
            ],
        );
    }
    let sql = format!("COPY {schema}.don_vi FROM STDIN");
    pg_copy(client, &sql, std::mem::take(&mut buf)).await?;
    for (c, n) in cat.fields() {
        copy_line(&mut buf, &[Some(c), Some(n)]);
    }
    let sql = format!("COPY {schema}.linh_vuc FROM STDIN");
    pg_copy(client, &sql, std::mem::take(&mut buf)).await?;
    for p in &cat.procedures {
        let days = p.days.map(|d| d.to_string());
        copy_line(
            &mut buf,
            &[
                Some(&p.code),
                Some(p.name),
                Some(p.field_code),
                Some(&p.service_level.to_string()),
                days.as_deref(),
                Some(&p.fee_vnd.to_string()),
            ],
        );
    }
    pg_copy(client, &format!("COPY {schema}.thu_tuc FROM STDIN"), buf).await
}

/// Streams the dossiers into `ho_so`; returns the dossier and vote counts and the votes' COPY
/// text, loaded after the dossiers.
async fn pg_copy_dossiers(
    client: &tokio_postgres::Client,
    schema: &str,
    cat: &Catalogue,
    opts: &DemoOptions,
) -> Result<(u64, u64, String), String> {
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {schema}.ho_so FROM STDIN"))
        .await
        .map_err(|e| e.to_string())?;
    futures_util::pin_mut!(sink);
    let mut buf = String::new();
    let mut votes = String::new();
    let (mut rows, mut vote_rows) = (0u64, 0u64);
    for d in opts.dossier_gen(cat) {
        pg_dossier_line(&mut buf, cat, &d);
        rows += 1;
        if let Some((at, level)) = d.vote {
            copy_line(
                &mut votes,
                &[
                    Some(&d.code),
                    ts(Some(at)).as_deref(),
                    Some(&level.to_string()),
                ],
            );
            vote_rows += 1;
        }
        if buf.len() > 1 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if !buf.is_empty() {
        sink.send(bytes::Bytes::from(buf))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.as_mut().finish().await.map_err(|e| e.to_string())?;
    Ok((rows, vote_rows, votes))
}

fn pg_dossier_line(buf: &mut String, cat: &Catalogue, d: &Dossier) {
    let name = stored_name(d);
    let s = |v: &dyn ToString| v.to_string();
    copy_line(
        buf,
        &[
            Some(&d.code),
            Some(&cat.procedures[d.procedure].code),
            Some(&cat.agencies[d.agency].code),
            Some(&s(&d.channel)),
            Some(&s(&d.applicant_type)),
            Some(&name),
            Some(&d.applicant.id),
            Some(&d.applicant.phone),
            Some(&d.applicant.address),
            Some(&s(&d.status)),
            ts(d.submitted_at).as_deref(),
            ts(d.received_at).as_deref(),
            ts(d.due_at).as_deref(),
            ts(d.finished_at).as_deref(),
            ts(d.returned_at).as_deref(),
            Some(&s(&d.supplements.len())),
            Some(&s(&d.fee_vnd)),
            Some(&s(&d.paid_online)),
            Some(if d.digitized { "t" } else { "f" }),
            Some(if d.vneid_verified { "t" } else { "f" }),
            ts(Some(d.updated_at)).as_deref(),
        ],
    );
}

async fn pg_copy(client: &tokio_postgres::Client, sql: &str, data: String) -> Result<(), String> {
    let sink = client
        .copy_in::<_, bytes::Bytes>(sql)
        .await
        .map_err(|e| e.to_string())?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data))
        .await
        .map_err(|e| e.to_string())?;
    sink.as_mut().finish().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Loads the demo's dossiers and votes into the MariaDB/MySQL database of `url`.
pub async fn load_mysql(url: &str, opts: &DemoOptions) -> Result<(u64, u64), DemoError> {
    let err = db_err("MariaDB/MySQL");
    let mut conn = crate::extract::tls::connect_mysql(url)
        .await
        .map_err(&err)?;
    mysql_create_tables(&mut conn, opts).await?;
    let cat = Catalogue::new();
    mysql_insert_catalogue(&mut conn, &cat)
        .await
        .map_err(&err)?;
    let (mut rows, mut vote_rows) = (0u64, 0u64);
    let mut batch: Vec<Vec<V>> = Vec::with_capacity(1000);
    let mut votes: Vec<Vec<V>> = Vec::new();
    for d in opts.dossier_gen(&cat) {
        batch.push(mysql_dossier_row(&cat, &d));
        rows += 1;
        if let Some((at, level)) = d.vote {
            votes.push(vec![V::from(&d.code), opt_s(ts(Some(at))), V::from(level)]);
            vote_rows += 1;
        }
        if batch.len() == 1000 {
            insert_rows(&mut conn, "ho_so", 21, std::mem::take(&mut batch))
                .await
                .map_err(&err)?;
        }
        if votes.len() == 2000 {
            let full = std::mem::take(&mut votes);
            insert_rows(&mut conn, "danh_gia_hai_long", 3, full)
                .await
                .map_err(&err)?;
        }
    }
    insert_rows(&mut conn, "ho_so", 21, batch)
        .await
        .map_err(&err)?;
    insert_rows(&mut conn, "danh_gia_hai_long", 3, votes)
        .await
        .map_err(&err)?;
    conn.disconnect().await.map_err(|e| err(e.to_string()))?;
    Ok((rows, vote_rows))
}

/// Replaces the demo's tables, refusing tables the demo did not create.
async fn mysql_create_tables(
    conn: &mut mysql_async::Conn,
    opts: &DemoOptions,
) -> Result<(), DemoError> {
    let err = db_err("MariaDB/MySQL");
    // As for PostgreSQL: tables the demo did not create are never dropped without --force.
    let tables: Vec<String> = conn
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
        .await
        .map_err(|e| err(e.to_string()))?;
    let present: Vec<&str> = TABLES
        .iter()
        .copied()
        .filter(|t| tables.iter().any(|x| x == t))
        .collect();
    if !present.is_empty() && !tables.iter().any(|x| x == super::MARKER) && !opts.force {
        return Err(DemoError::NotOurs {
            target: "the MariaDB/MySQL database".into(),
            tables: present.join(", "),
        });
    }
    for stmt in mysql_ddl() {
        conn.query_drop(stmt)
            .await
            .map_err(|e| err(e.to_string()))?;
    }
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {} (created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
        super::MARKER
    ))
    .await
    .map_err(|e| err(e.to_string()))
}

fn opt_s(v: Option<String>) -> V {
    v.map(V::from).unwrap_or(V::NULL)
}

/// Agencies, fields and procedures.
async fn mysql_insert_catalogue(
    conn: &mut mysql_async::Conn,
    cat: &Catalogue,
) -> Result<(), String> {
    let agencies: Vec<Vec<V>> = cat
        .agencies
        .iter()
        .map(|a| {
            vec![
                V::from(&a.code),
                V::from(&a.name),
                V::from(a.level.source_code()),
                opt_s(a.area_code.clone()),
                opt_s(a.from.map(|d| d.to_string())),
                opt_s(a.until.map(|d| d.to_string())),
            ]
        })
        .collect();
    insert_rows(conn, "don_vi", 6, agencies).await?;
    let fields = cat
        .fields()
        .into_iter()
        .map(|(c, n)| vec![V::from(c), V::from(n)])
        .collect();
    insert_rows(conn, "linh_vuc", 2, fields).await?;
    let procs = cat
        .procedures
        .iter()
        .map(|p| {
            vec![
                V::from(&p.code),
                V::from(p.name),
                V::from(p.field_code),
                V::from(p.service_level),
                p.days.map(V::from).unwrap_or(V::NULL),
                V::from(p.fee_vnd),
            ]
        })
        .collect();
    insert_rows(conn, "thu_tuc", 6, procs).await
}

fn mysql_dossier_row(cat: &Catalogue, d: &Dossier) -> Vec<V> {
    let name = stored_name(d);
    vec![
        V::from(&d.code),
        V::from(&cat.procedures[d.procedure].code),
        V::from(&cat.agencies[d.agency].code),
        V::from(d.channel),
        V::from(d.applicant_type),
        V::from(name.as_ref()),
        V::from(&d.applicant.id),
        V::from(&d.applicant.phone),
        V::from(&d.applicant.address),
        V::from(d.status),
        opt_s(ts(d.submitted_at)),
        opt_s(ts(d.received_at)),
        opt_s(ts(d.due_at)),
        opt_s(ts(d.finished_at)),
        opt_s(ts(d.returned_at)),
        V::from(d.supplements.len() as u8),
        V::from(d.fee_vnd),
        V::from(d.paid_online),
        V::from(d.digitized),
        V::from(d.vneid_verified),
        V::from(ts(Some(d.updated_at)).unwrap_or_default()),
    ]
}

/// One multi-row INSERT with bound parameters (never values pasted into SQL).
async fn insert_rows(
    conn: &mut mysql_async::Conn,
    table: &str,
    width: usize,
    rows: Vec<Vec<mysql_async::Value>>,
) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let one = format!("({})", vec!["?"; width].join(","));
    let sql = format!(
        "INSERT INTO {table} VALUES {}",
        vec![one.as_str(); rows.len()].join(",")
    );
    let params: Vec<mysql_async::Value> = rows.into_iter().flatten().collect();
    conn.exec_drop(sql, params).await.map_err(|e| e.to_string())
}
