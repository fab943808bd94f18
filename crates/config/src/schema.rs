//! `schemas/<dataset>.toml`: a dataset's contract: columns with Arrow types, nullability,
//! allowed values, Vietnamese labels, personal-data treatment, keys, partition and row rules.

use arrow_schema::{DataType, Field, Schema as ArrowSchema, TimeUnit};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use toml::Spanned;

use super::diag::{suggest, Diagnostics, Source};
use super::toml_file::{self, fields_of};

#[derive(Deserialize)]
struct RawSchema {
    name: Spanned<String>,
    label: Spanned<String>,
    description: Option<String>,
    primary_key: Spanned<Vec<Spanned<String>>>,
    partition: Option<Spanned<RawPartition>>,
    watermark: Option<Spanned<String>>,
    freshness: Option<Spanned<String>>,
    sort_by: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    columns: Vec<Spanned<RawColumn>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    tests: Vec<Spanned<RawTest>>,
}

/// A data test as written: exactly one of the kinds, with an optional name, severity and
/// row filter.
#[derive(Deserialize)]
struct RawTest {
    name: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
    #[serde(rename = "where")]
    filter: Option<Spanned<String>>,
    unique: Option<Spanned<Vec<Spanned<String>>>>,
    not_null: Option<Spanned<Vec<Spanned<String>>>>,
    accepted_values: Option<Spanned<RawAccepted>>,
    relationships: Option<Spanned<RawRelationship>>,
    row_count: Option<Spanned<RawRowCount>>,
    sql: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawAccepted {
    column: Spanned<String>,
    values: Spanned<Vec<Spanned<toml::Value>>>,
}

#[derive(Deserialize)]
struct RawRelationship {
    column: Spanned<String>,
    to: Spanned<String>,
    field: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawRowCount {
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
struct RawPartition {
    column: Spanned<String>,
    from: Option<Spanned<String>>,
    granularity: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawColumn {
    name: Spanned<String>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    nullable: Spanned<bool>,
    label: Spanned<String>,
    description: Option<String>,
    source_field: Option<String>,
    allowed: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    value_labels: Option<Spanned<BTreeMap<String, String>>>,
    personal: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawRule {
    name: Spanned<String>,
    check: Spanned<String>,
    message: Spanned<String>,
}

/// How a personal-data column is treated on its way into the warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personal {
    /// Stored only as HMAC-SHA256 under the key in `PARSTAT_PII_KEY`.
    Hash,
    /// Never leaves the extractor.
    Drop,
}

/// A value a column may take, typed by the column.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowedValue {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
    /// The type as written in the schema file, for documentation.
    pub type_name: String,
    pub nullable: bool,
    pub label: String,
    pub description: String,
    /// Field of the national portal or source system the column comes from, for documentation.
    pub source_field: Option<String>,
    pub allowed: Option<Vec<AllowedValue>>,
    pub value_labels: BTreeMap<String, String>,
    pub personal: Option<Personal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Month,
    Year,
}

#[derive(Debug, Clone)]
pub struct Partition {
    /// The partition column of the warehouse table.
    pub column: String,
    /// When set, the partition column is derived (local `YYYY-MM` or `YYYY`) from this column.
    pub from: Option<(String, Granularity)>,
}

/// A row rule: a SQL predicate over the row's columns that a valid row satisfies.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub check: String,
    pub message: String,
}

/// How a failing data test counts: `error` fails `parstat test`, `warn` is only shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestSeverity {
    Error,
    Warn,
}

/// What a data test asserts of the stored table.
#[derive(Debug, Clone)]
pub enum DataTestKind {
    /// No two rows share these columns' values.
    Unique(Vec<String>),
    /// None of these columns is NULL.
    NotNull(Vec<String>),
    /// The column holds only these values (or NULL).
    AcceptedValues {
        column: String,
        values: Vec<AllowedValue>,
    },
    /// Every non-null value of `column` is a `field` of dataset `to`.
    Relationship {
        column: String,
        to: String,
        field: String,
    },
    /// The number of rows lies within the bounds.
    RowCount { min: Option<i64>, max: Option<i64> },
    /// SQL that returns the offending rows: none means the test passes.
    Sql(String),
}

/// A data test declared in a schema file, run by `parstat test` over the warehouse table.
#[derive(Debug, Clone)]
pub struct DataTest {
    pub name: String,
    pub severity: TestSeverity,
    /// A SQL predicate: only the rows it keeps are tested.
    pub filter: Option<String>,
    pub kind: DataTestKind,
    /// Line of the test in its schema file, for messages.
    pub line: usize,
    /// Where `relationships.to` is written, checked once every schema is known.
    pub(crate) to_span: Option<std::ops::Range<usize>>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    pub label: String,
    pub description: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub partition: Option<Partition>,
    pub watermark: Option<String>,
    /// How recently a report needs this dataset extracted.
    pub freshness: Freshness,
    /// Columns each written batch is sorted by (ascending, NULLs last), so that Parquet page
    /// statistics let queries skip what they filter out.
    pub sort_by: Vec<String>,
    pub rules: Vec<Rule>,
    pub tests: Vec<DataTest>,
}

/// How fresh a report needs a dataset (`freshness` in its schema file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// `"period_end"` (the default): extracted after the report's period ended, as daily
    /// dossiers must be for the month's figures to be whole.
    PeriodEnd,
    /// `"N days"` / `"N hours"`: any successful extract within that age, as for yearly
    /// ratings extracted weekly.
    Within(chrono::Duration),
    /// `"none"`: any data will do.
    Any,
}

impl Freshness {
    /// `period_end`, `none`, `N days` or `N hours`.
    pub fn parse(s: &str) -> Option<Freshness> {
        match s.trim() {
            "period_end" => return Some(Freshness::PeriodEnd),
            "none" => return Some(Freshness::Any),
            _ => {}
        }
        let (n, unit) = s.trim().split_once(' ')?;
        let n: i64 = n.parse().ok().filter(|&n| n > 0)?;
        match unit.trim() {
            "day" | "days" => Some(Freshness::Within(chrono::Duration::days(n))),
            "hour" | "hours" => Some(Freshness::Within(chrono::Duration::hours(n))),
            _ => None,
        }
    }
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Freshness::PeriodEnd => f.write_str("extracted after the period ended"),
            Freshness::Within(d) if d.num_hours() % 24 == 0 => {
                write!(f, "extracted within {} days", d.num_days())
            }
            Freshness::Within(d) => write!(f, "extracted within {} hours", d.num_hours()),
            Freshness::Any => f.write_str("any extract"),
        }
    }
}

impl Schema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The names of the columns marked `personal = <how>`.
    pub fn personal_columns(&self, how: Personal) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.personal == Some(how))
            .map(|c| c.name.clone())
            .collect()
    }

    /// The columns that are stored in the warehouse (personal `drop` columns are not).
    pub fn stored_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns
            .iter()
            .filter(|c| c.personal != Some(Personal::Drop))
    }

    /// The Arrow schema of the warehouse table, with the derived partition column last.
    pub fn arrow_schema(&self) -> Arc<ArrowSchema> {
        let mut fields: Vec<Field> = self
            .stored_columns()
            .map(|c| {
                // Hashed personal data is stored as its hex digest.
                let ty = if c.personal == Some(Personal::Hash) {
                    DataType::Utf8
                } else {
                    c.data_type.clone()
                };
                Field::new(&c.name, ty, c.nullable)
            })
            .collect();
        if let Some(Partition {
            column,
            from: Some(_),
        }) = &self.partition
        {
            fields.push(Field::new(column, DataType::Utf8, false));
        }
        Arc::new(ArrowSchema::new(fields))
    }
}

/// Arrow types a column may declare, as written in schema files.
pub const TYPE_NAMES: &[&str] = &[
    "Utf8",
    "Boolean",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "Float64",
    "Date32",
    "Timestamp",
    "Decimal128(P,S)",
];

/// Parses a type name. `Timestamp` is a UTC instant in microseconds, as the contract stores
/// every instant.
pub fn parse_type(s: &str) -> Option<DataType> {
    let t = s.trim();
    Some(match t {
        "Utf8" => DataType::Utf8,
        "Boolean" => DataType::Boolean,
        "Int16" => DataType::Int16,
        "Int32" => DataType::Int32,
        "Int64" => DataType::Int64,
        "UInt8" => DataType::UInt8,
        "UInt16" => DataType::UInt16,
        "UInt32" => DataType::UInt32,
        "Float64" => DataType::Float64,
        "Date32" => DataType::Date32,
        "Timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            let inner = t.strip_prefix("Decimal128(")?.strip_suffix(')')?;
            let (p, s) = inner.split_once(',')?;
            let p: u8 = p.trim().parse().ok()?;
            let s: i8 = s.trim().parse().ok()?;
            if p == 0 || p > 38 || s < 0 || s as u8 > p {
                return None;
            }
            DataType::Decimal128(p, s)
        }
    })
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

fn known_keys() -> Vec<&'static str> {
    [
        fields_of::<RawSchema>(),
        fields_of::<RawPartition>(),
        fields_of::<RawColumn>(),
        fields_of::<RawRule>(),
        fields_of::<RawTest>(),
        fields_of::<RawAccepted>(),
        fields_of::<RawRelationship>(),
        fields_of::<RawRowCount>(),
    ]
    .concat()
}

/// Parses and validates one schema file. `stem` is the file name without `.toml`, which must
/// equal the dataset name: a dataset's name is its table name everywhere.
pub fn load(src: &Source, stem: &str, diags: &mut Diagnostics) -> Option<Schema> {
    let raw: RawSchema = toml_file::parse(src, &known_keys(), diags)?;
    let before = diags.error_count();
    let name = check_name(src, &raw.name, stem, diags);
    let (columns, declared) = columns(src, &raw.columns, diags);
    if raw.columns.is_empty() {
        diags.error_at(
            src,
            0..0,
            format!("dataset `{name}` has no columns"),
            Some("add `[[columns]]` tables".into()),
        );
    }
    let cols = Cols {
        columns: &columns,
        declared: &declared,
        names: columns.iter().map(|c| c.name.as_str()).collect(),
    };
    check_primary_key(src, &raw.primary_key, &cols, diags);
    let partition = raw
        .partition
        .as_ref()
        .map(|p| partition(src, p.get_ref(), &cols, diags));
    check_watermark(src, raw.watermark.as_ref(), &cols, diags);
    let freshness = freshness(src, raw.freshness.as_ref(), diags);
    let rules = rules(src, &raw.rules, diags);
    let tests = data_tests(src, &raw.tests, &columns, partition.as_ref(), diags);
    let sort_by = sort_by(src, raw.sort_by.as_ref(), &cols, diags);

    (diags.error_count() == before).then_some(Schema {
        name,
        label: raw.label.get_ref().clone(),
        description: raw.description.unwrap_or_default(),
        columns,
        primary_key: raw
            .primary_key
            .get_ref()
            .iter()
            .map(|k| k.get_ref().clone())
            .collect(),
        partition,
        watermark: raw.watermark.map(|w| w.into_inner()),
        freshness,
        sort_by,
        rules,
        tests,
    })
}

/// `name`: the file's name, and a SQL identifier.
fn check_name(src: &Source, raw: &Spanned<String>, stem: &str, diags: &mut Diagnostics) -> String {
    let name = raw.get_ref().clone();
    if name != stem {
        diags.error_at(
            src,
            raw.span(),
            format!("dataset `{name}` is defined in `{stem}.toml`"),
            Some(format!(
                "rename the file to `schemas/{name}.toml`, or set `name = \"{stem}\"`"
            )),
        );
    }
    if !is_identifier(&name) {
        diags.error_at(
            src,
            raw.span(),
            format!("dataset name `{name}` is not a SQL identifier"),
            Some("use lower-case letters, digits and `_`, starting with a letter".into()),
        );
    }
    name
}

/// The `[[columns]]` that are valid, and every declared column name with its line (those of
/// invalid columns too, so that naming one elsewhere is not reported a second time).
fn columns(
    src: &Source,
    raw: &[Spanned<RawColumn>],
    diags: &mut Diagnostics,
) -> (Vec<Column>, BTreeMap<String, usize>) {
    let mut columns = Vec::new();
    let mut declared: BTreeMap<String, usize> = BTreeMap::new();
    for c in raw {
        let c = c.get_ref();
        let cname = c.name.get_ref().clone();
        if let Some(first_line) = declared.get(&cname) {
            diags.error_at(
                src,
                c.name.span(),
                format!("duplicate column `{cname}`"),
                Some(format!("it is already defined on line {first_line}")),
            );
            continue;
        }
        declared.insert(cname, src.line_col(c.name.span().start).0);
        columns.extend(column(src, c, diags));
    }
    (columns, declared)
}

/// One `[[columns]]` table: a SQL identifier, a known type, a label, and what the column's
/// type allows of `personal` and `allowed`.
fn column(src: &Source, c: &RawColumn, diags: &mut Diagnostics) -> Option<Column> {
    let cname = c.name.get_ref().clone();
    if !is_identifier(&cname) {
        diags.error_at(
            src,
            c.name.span(),
            format!("column name `{cname}` is not a SQL identifier"),
            Some("use lower-case letters, digits and `_`, starting with a letter".into()),
        );
    }
    let Some(data_type) = parse_type(c.ty.get_ref()) else {
        diags.error_at(
            src,
            c.ty.span(),
            format!("unknown type `{}` for column `{cname}`", c.ty.get_ref()),
            Some(suggest(c.ty.get_ref(), TYPE_NAMES)),
        );
        return None;
    };
    let personal = personal(src, c.personal.as_ref(), diags);
    if personal == Some(Personal::Hash) && data_type != DataType::Utf8 {
        diags.error_at(
            src,
            c.ty.span(),
            format!("column `{cname}` is hashed, so its type must be `Utf8`"),
            None,
        );
    }
    if c.label.get_ref().trim().is_empty() {
        diags.error_at(
            src,
            c.label.span(),
            format!("column `{cname}` has an empty label"),
            Some("give the Vietnamese label shown to analysts and leaders".into()),
        );
    }
    let allowed = c
        .allowed
        .as_ref()
        .map(|list| allowed_values(src, c, list, &data_type, diags));
    Some(Column {
        name: cname,
        data_type,
        type_name: c.ty.get_ref().clone(),
        nullable: *c.nullable.get_ref(),
        label: c.label.get_ref().clone(),
        description: c.description.clone().unwrap_or_default(),
        source_field: c.source_field.clone(),
        allowed,
        value_labels: c
            .value_labels
            .as_ref()
            .map(|v| v.get_ref().clone())
            .unwrap_or_default(),
        personal,
    })
}

/// `personal`: `hash` or `drop`.
fn personal(
    src: &Source,
    raw: Option<&Spanned<String>>,
    diags: &mut Diagnostics,
) -> Option<Personal> {
    match raw.map(|p| (p.get_ref().as_str(), p.span())) {
        None => None,
        Some(("hash", _)) => Some(Personal::Hash),
        Some(("drop", _)) => Some(Personal::Drop),
        Some((other, span)) => {
            diags.error_at(
                src,
                span,
                format!("unknown personal-data treatment `{other}`"),
                Some(suggest(other, &["hash", "drop"])),
            );
            None
        }
    }
}

/// `allowed`: values of the column's type (integers or text), at least one.
fn allowed_values(
    src: &Source,
    c: &RawColumn,
    list: &Spanned<Vec<Spanned<toml::Value>>>,
    data_type: &DataType,
    diags: &mut Diagnostics,
) -> Vec<AllowedValue> {
    let cname = c.name.get_ref();
    let mut out = Vec::new();
    for v in list.get_ref() {
        match (v.get_ref(), data_type) {
            (toml::Value::Integer(i), t) if is_integer(t) => out.push(AllowedValue::Int(*i)),
            (toml::Value::String(s), DataType::Utf8) => out.push(AllowedValue::Text(s.clone())),
            (other, t) => diags.error_at(
                src,
                v.span(),
                format!(
                    "allowed value {other} does not fit column `{cname}` of type {}",
                    c.ty.get_ref()
                ),
                Some(if is_integer(t) {
                    "write integers".to_string()
                } else {
                    "allowed values apply to text and integer columns".to_string()
                }),
            ),
        }
    }
    if out.is_empty() {
        diags.error_at(
            src,
            list.span(),
            format!("column `{cname}` allows no value"),
            Some("list the allowed values, or remove `allowed`".into()),
        );
    }
    out
}

/// The valid columns of a schema, for the keys that name them.
struct Cols<'a> {
    columns: &'a [Column],
    /// Every declared column name, invalid columns' too: those are reported already.
    declared: &'a BTreeMap<String, usize>,
    names: Vec<&'a str>,
}

impl Cols<'_> {
    fn find(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// `primary_key`: stored, non-null columns, each once, at least one.
fn check_primary_key(
    src: &Source,
    raw: &Spanned<Vec<Spanned<String>>>,
    cols: &Cols,
    diags: &mut Diagnostics,
) {
    let mut pk_seen = BTreeSet::new();
    for k in raw.get_ref() {
        match cols.find(k.get_ref()) {
            None if cols.declared.contains_key(k.get_ref()) => {}
            None => diags.error_at(
                src,
                k.span(),
                format!("primary key column `{}` is not a column", k.get_ref()),
                Some(suggest(k.get_ref(), &cols.names)),
            ),
            Some(c) if c.nullable => diags.error_at(
                src,
                k.span(),
                format!("primary key column `{}` is nullable", k.get_ref()),
                Some("a key column must have `nullable = false`".into()),
            ),
            Some(c) if c.personal == Some(Personal::Drop) => diags.error_at(
                src,
                k.span(),
                format!("primary key column `{}` is never stored", k.get_ref()),
                None,
            ),
            Some(_) => {}
        }
        if !pk_seen.insert(k.get_ref().clone()) {
            diags.error_at(
                src,
                k.span(),
                format!("`{}` appears twice in the primary key", k.get_ref()),
                None,
            );
        }
    }
    if raw.get_ref().is_empty() {
        diags.error_at(
            src,
            raw.span(),
            "the primary key is empty",
            Some("name the columns that identify a row".into()),
        );
    }
}

/// `[partition]`: a declared column, or one derived `from` a time column by `granularity`.
fn partition(src: &Source, p: &RawPartition, cols: &Cols, diags: &mut Diagnostics) -> Partition {
    let column = p.column.get_ref().clone();
    let from = match (&p.from, &p.granularity) {
        (None, None) => {
            if cols.find(&column).is_none() && !cols.declared.contains_key(&column) {
                diags.error_at(
                    src,
                    p.column.span(),
                    format!("partition column `{column}` is not a column"),
                    Some(format!(
                        "{}; or derive it with `from = \"<timestamp column>\"` and `granularity = \"month\"`",
                        suggest(&column, &cols.names)
                    )),
                );
            }
            None
        }
        (Some(from), g) => Some(derived_partition(src, p, from, g.as_ref(), cols, diags)),
        (None, Some(g)) => {
            diags.error_at(
                src,
                g.span(),
                "`granularity` needs `from`",
                Some("name the Timestamp or Date32 column the partition is derived from".into()),
            );
            None
        }
    };
    Partition { column, from }
}

/// A partition column derived from a non-null time column, by month or year.
fn derived_partition(
    src: &Source,
    p: &RawPartition,
    from: &Spanned<String>,
    granularity: Option<&Spanned<String>>,
    cols: &Cols,
    diags: &mut Diagnostics,
) -> (String, Granularity) {
    let granularity = match granularity.map(|g| (g.get_ref().as_str(), g.span())) {
        None | Some(("month", _)) => Granularity::Month,
        Some(("year", _)) => Granularity::Year,
        Some((other, span)) => {
            diags.error_at(
                src,
                span,
                format!("unknown granularity `{other}`"),
                Some(suggest(other, &["month", "year"])),
            );
            Granularity::Month
        }
    };
    let column = p.column.get_ref();
    if cols.find(column).is_some() {
        diags.error_at(
            src,
            p.column.span(),
            format!("derived partition column `{column}` is also a declared column"),
            Some(
                "remove `from` to partition by the declared column, or rename the partition".into(),
            ),
        );
    }
    match cols.find(from.get_ref()) {
        Some(c) if matches!(c.data_type, DataType::Timestamp(..) | DataType::Date32) => {
            if c.nullable {
                diags.error_at(
                    src,
                    from.span(),
                    format!("partition source `{}` is nullable", from.get_ref()),
                    Some("derive the partition from a non-null column".into()),
                );
            }
        }
        Some(_) => diags.error_at(
            src,
            from.span(),
            format!(
                "partition source `{}` is not a Timestamp or Date32 column",
                from.get_ref()
            ),
            None,
        ),
        None => diags.error_at(
            src,
            from.span(),
            format!("partition source `{}` is not a column", from.get_ref()),
            Some(suggest(from.get_ref(), &cols.names)),
        ),
    }
    (from.get_ref().clone(), granularity)
}

/// `watermark`: a non-null Timestamp column.
fn check_watermark(
    src: &Source,
    w: Option<&Spanned<String>>,
    cols: &Cols,
    diags: &mut Diagnostics,
) {
    let Some(w) = w else { return };
    match cols.find(w.get_ref()) {
        Some(c) if matches!(c.data_type, DataType::Timestamp(..)) && !c.nullable => {}
        Some(_) => diags.error_at(
            src,
            w.span(),
            format!(
                "watermark column `{}` must be a non-null Timestamp",
                w.get_ref()
            ),
            None,
        ),
        None => diags.error_at(
            src,
            w.span(),
            format!("watermark column `{}` is not a column", w.get_ref()),
            Some(suggest(w.get_ref(), &cols.names)),
        ),
    }
}

/// `freshness`, `period_end` when not written.
fn freshness(src: &Source, f: Option<&Spanned<String>>, diags: &mut Diagnostics) -> Freshness {
    let Some(f) = f else {
        return Freshness::PeriodEnd;
    };
    Freshness::parse(f.get_ref()).unwrap_or_else(|| {
        diags.error_at(
            src,
            f.span(),
            format!("`freshness = \"{}\"` is not a freshness", f.get_ref()),
            Some("write \"period_end\" (extracted after the report's period ended), \"N days\" or \"N hours\" (any extract that recent), or \"none\"".into()),
        );
        Freshness::PeriodEnd
    })
}

/// `[[rules]]`: each with its own name and a check.
fn rules(src: &Source, raw: &[Spanned<RawRule>], diags: &mut Diagnostics) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    for r in raw {
        let r = r.get_ref();
        if !rule_names.insert(r.name.get_ref().clone()) {
            diags.error_at(
                src,
                r.name.span(),
                format!("duplicate rule `{}`", r.name.get_ref()),
                Some("give each rule its own name: it is the reason shown in quarantine".into()),
            );
        }
        if r.check.get_ref().trim().is_empty() {
            diags.error_at(src, r.check.span(), "empty rule check", None);
        }
        rules.push(Rule {
            name: r.name.get_ref().clone(),
            check: r.check.get_ref().clone(),
            message: r.message.get_ref().clone(),
        });
    }
    rules
}

/// `sort_by`: stored columns.
fn sort_by(
    src: &Source,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    cols: &Cols,
    diags: &mut Diagnostics,
) -> Vec<String> {
    let mut sort_by = Vec::new();
    for c in raw.iter().flat_map(|l| l.get_ref()) {
        match cols.find(c.get_ref()) {
            Some(col) if col.personal != Some(Personal::Drop) => sort_by.push(c.get_ref().clone()),
            _ => diags.error_at(
                src,
                c.span(),
                format!("`sort_by` column `{}` is not a stored column", c.get_ref()),
                Some(suggest(c.get_ref(), &cols.names)),
            ),
        }
    }
    sort_by
}

/// Reads the `[[tests]]` of a schema: each names exactly one kind, and every column it
/// names is a stored column (or the partition column).
fn data_tests(
    src: &Source,
    raw: &[Spanned<RawTest>],
    columns: &[Column],
    partition: Option<&Partition>,
    diags: &mut Diagnostics,
) -> Vec<DataTest> {
    let cols = TestColumns::new(src, columns, partition);
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for t in raw {
        let span = t.span();
        let t = t.get_ref();
        let line = src.line_col(span.start).0;
        if !names_one_kind(src, t, span.start, diags) {
            continue;
        }
        let severity = severity(src, t.severity.as_ref(), diags);
        let Some(kind) = test_kind(src, t, &cols, diags) else {
            continue;
        };
        let name = t
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or(kind.default_name);
        if !seen.insert(name.clone()) {
            diags.error_at(
                src,
                t.name
                    .as_ref()
                    .map(|n| n.span())
                    .unwrap_or(span.start..span.start),
                format!("duplicate data test `{name}`"),
                Some("give each test its own `name`".into()),
            );
            continue;
        }
        out.push(DataTest {
            name,
            severity,
            filter: t.filter.as_ref().map(|f| f.get_ref().clone()),
            kind: kind.kind,
            line,
            to_span: kind.to_span,
        });
    }
    out
}

/// Whether a data test names exactly one kind; reported at `start` when not.
fn names_one_kind(src: &Source, t: &RawTest, start: usize, diags: &mut Diagnostics) -> bool {
    let given = [
        t.unique.is_some(),
        t.not_null.is_some(),
        t.accepted_values.is_some(),
        t.relationships.is_some(),
        t.row_count.is_some(),
        t.sql.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        diags.error_at(
            src,
            start..start,
            if given == 0 {
                "a data test names no kind".to_string()
            } else {
                "a data test names more than one kind".to_string()
            },
            Some("write exactly one of `unique`, `not_null`, `accepted_values`, `relationships`, `row_count`, `sql` in each `[[tests]]`".into()),
        );
    }
    given == 1
}

/// `severity`: `error` (the default) or `warn`.
fn severity(src: &Source, s: Option<&Spanned<String>>, diags: &mut Diagnostics) -> TestSeverity {
    match s.map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("error", _)) => TestSeverity::Error,
        Some(("warn", _)) => TestSeverity::Warn,
        Some((other, span)) => {
            diags.error_at(
                src,
                span,
                format!("unknown severity `{other}`"),
                Some(suggest(other, &["error", "warn"])),
            );
            TestSeverity::Error
        }
    }
}

/// The columns a data test may name: the stored columns and the partition column.
struct TestColumns<'a> {
    src: &'a Source,
    columns: &'a [Column],
    names: Vec<&'a str>,
}

impl<'a> TestColumns<'a> {
    fn new(src: &'a Source, columns: &'a [Column], partition: Option<&'a Partition>) -> Self {
        let mut names: Vec<&str> = columns
            .iter()
            .filter(|c| c.personal != Some(Personal::Drop))
            .map(|c| c.name.as_str())
            .collect();
        if let Some(p) = partition {
            if !names.contains(&p.column.as_str()) {
                names.push(p.column.as_str());
            }
        }
        TestColumns {
            src,
            columns,
            names,
        }
    }

    /// Whether a test may name column `c`; reported when not.
    fn check(&self, c: &Spanned<String>, diags: &mut Diagnostics) -> bool {
        if self.names.contains(&c.get_ref().as_str()) {
            return true;
        }
        let dropped = self
            .columns
            .iter()
            .any(|col| &col.name == c.get_ref() && col.personal == Some(Personal::Drop));
        diags.error_at(
            self.src,
            c.span(),
            if dropped {
                format!(
                    "column `{}` is never stored (personal = \"drop\")",
                    c.get_ref()
                )
            } else {
                format!("`{}` is not a column of this dataset", c.get_ref())
            },
            Some(suggest(c.get_ref(), &self.names)),
        );
        false
    }

    /// A list of columns a test may name, at least one.
    fn list(
        &self,
        l: &Spanned<Vec<Spanned<String>>>,
        what: &str,
        diags: &mut Diagnostics,
    ) -> Option<Vec<String>> {
        if l.get_ref().is_empty() {
            diags.error_at(
                self.src,
                l.span(),
                format!("`{what}` names no column"),
                Some("list one or more columns".into()),
            );
            return None;
        }
        let mut ok = true;
        for c in l.get_ref() {
            ok &= self.check(c, diags);
        }
        ok.then(|| l.get_ref().iter().map(|c| c.get_ref().clone()).collect())
    }
}

/// What one data test asserts, and the name it gets when it is not given one.
struct TestKind {
    kind: DataTestKind,
    default_name: String,
    /// Where `relationships.to` is written.
    to_span: Option<std::ops::Range<usize>>,
}

/// The kind of a data test that names exactly one, checked; `None` when it is invalid.
fn test_kind(
    src: &Source,
    t: &RawTest,
    cols: &TestColumns,
    diags: &mut Diagnostics,
) -> Option<TestKind> {
    let plain = |kind, default_name| TestKind {
        kind,
        default_name,
        to_span: None,
    };
    if let Some(l) = &t.unique {
        let c = cols.list(l, "unique", diags)?;
        let n = format!("unique({})", c.join(", "));
        Some(plain(DataTestKind::Unique(c), n))
    } else if let Some(l) = &t.not_null {
        let c = cols.list(l, "not_null", diags)?;
        let n = format!("not_null({})", c.join(", "));
        Some(plain(DataTestKind::NotNull(c), n))
    } else if let Some(a) = &t.accepted_values {
        accepted_values_test(src, a.get_ref(), cols, diags)
    } else if let Some(r) = &t.relationships {
        relationship_test(r.get_ref(), cols, diags)
    } else if let Some(rc) = &t.row_count {
        row_count_test(src, rc, diags)
    } else if let Some(q) = &t.sql {
        sql_test(src, q, t.name.is_some(), diags)
    } else {
        unreachable!("exactly one kind is given")
    }
}

/// `accepted_values`: a column and values of its kind (integers or text), at least one.
fn accepted_values_test(
    src: &Source,
    a: &RawAccepted,
    cols: &TestColumns,
    diags: &mut Diagnostics,
) -> Option<TestKind> {
    if !cols.check(&a.column, diags) {
        return None;
    }
    let col = a.column.get_ref().clone();
    let integer = cols
        .columns
        .iter()
        .find(|c| c.name == col)
        .is_some_and(|c| c.data_type.is_integer());
    let mut values = Vec::new();
    for v in a.values.get_ref() {
        match v.get_ref() {
            toml::Value::Integer(i) if integer => values.push(AllowedValue::Int(*i)),
            toml::Value::String(s) if !integer => values.push(AllowedValue::Text(s.clone())),
            other => diags.error_at(
                src,
                v.span(),
                format!("value {other} does not fit column `{col}`"),
                Some(
                    if integer {
                        "write integers"
                    } else {
                        "write strings"
                    }
                    .into(),
                ),
            ),
        }
    }
    if a.values.get_ref().is_empty() {
        diags.error_at(
            src,
            a.values.span(),
            "no accepted value",
            Some("list the values".into()),
        );
        return None;
    }
    Some(TestKind {
        default_name: format!("accepted_values({col})"),
        kind: DataTestKind::AcceptedValues {
            column: col,
            values,
        },
        to_span: None,
    })
}

/// `relationships`: a column of this dataset and a field of another (checked once every
/// schema is read), the column's own name by default.
fn relationship_test(
    r: &RawRelationship,
    cols: &TestColumns,
    diags: &mut Diagnostics,
) -> Option<TestKind> {
    if !cols.check(&r.column, diags) {
        return None;
    }
    let column = r.column.get_ref().clone();
    let field = r
        .field
        .as_ref()
        .map(|f| f.get_ref().clone())
        .unwrap_or_else(|| column.clone());
    Some(TestKind {
        default_name: format!("relationships({column} → {}.{field})", r.to.get_ref()),
        kind: DataTestKind::Relationship {
            column,
            to: r.to.get_ref().clone(),
            field,
        },
        to_span: Some(r.to.span()),
    })
}

/// `row_count`: `min`, `max` or both, in order.
fn row_count_test(
    src: &Source,
    rc: &Spanned<RawRowCount>,
    diags: &mut Diagnostics,
) -> Option<TestKind> {
    let rcs = rc.span();
    let rc = rc.get_ref();
    let min = rc.min.as_ref().map(|m| *m.get_ref());
    let max = rc.max.as_ref().map(|m| *m.get_ref());
    let default_name = match (min, max) {
        (Some(a), Some(b)) if a > b => {
            diags.error_at(
                src,
                rcs,
                format!("`row_count` min {a} is above max {b}"),
                None,
            );
            return None;
        }
        (Some(a), Some(b)) => format!("row_count({a}..={b})"),
        (Some(a), None) => format!("row_count(>= {a})"),
        (None, Some(b)) => format!("row_count(<= {b})"),
        (None, None) => {
            diags.error_at(
                src,
                rcs,
                "`row_count` has no bound",
                Some("give `min`, `max` or both".into()),
            );
            return None;
        }
    };
    Some(TestKind {
        kind: DataTestKind::RowCount { min, max },
        default_name,
        to_span: None,
    })
}

/// `sql`: a query returning the offending rows, in a test that has a `name`.
fn sql_test(
    src: &Source,
    q: &Spanned<String>,
    named: bool,
    diags: &mut Diagnostics,
) -> Option<TestKind> {
    if q.get_ref().trim().is_empty() {
        diags.error_at(
            src,
            q.span(),
            "empty test SQL",
            Some("write a query that returns the offending rows".into()),
        );
        return None;
    }
    if !named {
        diags.error_at(
            src,
            q.span(),
            "a SQL data test needs a `name`",
            Some("name it after what it asserts, e.g. `name = \"finished_after_received\"`".into()),
        );
        return None;
    }
    Some(TestKind {
        kind: DataTestKind::Sql(q.get_ref().clone()),
        default_name: String::new(),
        to_span: None,
    })
}

/// Lower-case SQL identifier: the same name in TOML, SQL and warehouse paths.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_reads_its_four_forms_and_nothing_else() {
        assert_eq!(Freshness::parse("period_end"), Some(Freshness::PeriodEnd));
        assert_eq!(Freshness::parse("none"), Some(Freshness::Any));
        assert_eq!(
            Freshness::parse("8 days"),
            Some(Freshness::Within(chrono::Duration::days(8)))
        );
        assert_eq!(
            Freshness::parse("36 hours"),
            Some(Freshness::Within(chrono::Duration::hours(36)))
        );
        for bad in ["", "8", "0 days", "-1 days", "8 weeks", "daily"] {
            assert_eq!(Freshness::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Freshness::Within(chrono::Duration::days(8)).to_string(),
            "extracted within 8 days"
        );
    }

    #[test]
    fn parses_contract_types() {
        assert_eq!(parse_type("Utf8"), Some(DataType::Utf8));
        assert_eq!(
            parse_type("Decimal128(20,0)"),
            Some(DataType::Decimal128(20, 0))
        );
        assert_eq!(
            parse_type("Decimal128(18, 2)"),
            Some(DataType::Decimal128(18, 2))
        );
        assert_eq!(
            parse_type("Timestamp"),
            Some(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            ))
        );
        assert_eq!(parse_type("Decimal128(2,5)"), None);
        assert_eq!(parse_type("Utf"), None);
    }

    #[test]
    fn rejects_bad_schema_with_positions() {
        let text = r#"name = "x"
label = "X"
primary_key = ["id", "nope"]
[[columns]]
name = "id"
type = "Utf8"
nullable = false
label = "Mã"
[[columns]]
name = "id"
type = "Strng"
nullable = true
label = "Trùng"
"#;
        let src = Source::new("schemas/x.toml", text.to_string());
        let mut d = Diagnostics::default();
        assert!(load(&src, "x", &mut d).is_none());
        let out: Vec<String> = d.sorted().iter().map(|d| d.to_string()).collect();
        assert!(
            out[0].starts_with("schemas/x.toml:3:22: error: primary key column `nope`"),
            "{out:?}"
        );
        assert!(
            out[1].starts_with("schemas/x.toml:10:8: error: duplicate column `id`"),
            "{out:?}"
        );
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
