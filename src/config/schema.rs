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
    #[serde(default)]
    columns: Vec<Spanned<RawColumn>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
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

#[derive(Debug, Clone)]
pub struct Schema {
    pub name: String,
    pub label: String,
    pub description: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub partition: Option<Partition>,
    pub watermark: Option<String>,
    pub rules: Vec<Rule>,
}

impl Schema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
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
    ]
    .concat()
}

/// Parses and validates one schema file. `stem` is the file name without `.toml`, which must
/// equal the dataset name: a dataset's name is its table name everywhere.
pub fn load(src: &Source, stem: &str, diags: &mut Diagnostics) -> Option<Schema> {
    let raw: RawSchema = toml_file::parse(src, &known_keys(), diags)?;
    let before = diags.error_count();

    let name = raw.name.get_ref().clone();
    if name != stem {
        diags.error_at(
            src,
            raw.name.span(),
            format!("dataset `{name}` is defined in `{stem}.toml`"),
            Some(format!(
                "rename the file to `schemas/{name}.toml`, or set `name = \"{stem}\"`"
            )),
        );
    }
    if !is_identifier(&name) {
        diags.error_at(
            src,
            raw.name.span(),
            format!("dataset name `{name}` is not a SQL identifier"),
            Some("use lower-case letters, digits and `_`, starting with a letter".into()),
        );
    }

    let mut columns = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for c in &raw.columns {
        let c = c.get_ref();
        let cname = c.name.get_ref().clone();
        if let Some(first_line) = seen.get(&cname) {
            diags.error_at(
                src,
                c.name.span(),
                format!("duplicate column `{cname}`"),
                Some(format!("it is already defined on line {first_line}")),
            );
            continue;
        }
        seen.insert(cname.clone(), src.line_col(c.name.span().start).0);
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
            continue;
        };
        let personal = match c
            .personal
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
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
        };
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
        let allowed = c.allowed.as_ref().map(|list| {
            let mut out = Vec::new();
            for v in list.get_ref() {
                match (v.get_ref(), &data_type) {
                    (toml::Value::Integer(i), t) if is_integer(t) => {
                        out.push(AllowedValue::Int(*i))
                    }
                    (toml::Value::String(s), DataType::Utf8) => {
                        out.push(AllowedValue::Text(s.clone()))
                    }
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
        });
        columns.push(Column {
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
        });
    }
    if raw.columns.is_empty() {
        diags.error_at(
            src,
            0..0,
            format!("dataset `{name}` has no columns"),
            Some("add `[[columns]]` tables".into()),
        );
    }
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let find = |n: &str| columns.iter().find(|c| c.name == n);

    let mut pk_seen = BTreeSet::new();
    for k in raw.primary_key.get_ref() {
        match find(k.get_ref()) {
            None if seen.contains_key(k.get_ref()) => {}
            None => diags.error_at(
                src,
                k.span(),
                format!("primary key column `{}` is not a column", k.get_ref()),
                Some(suggest(k.get_ref(), &names)),
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
    if raw.primary_key.get_ref().is_empty() {
        diags.error_at(
            src,
            raw.primary_key.span(),
            "the primary key is empty",
            Some("name the columns that identify a row".into()),
        );
    }

    let partition = raw.partition.as_ref().map(|p| {
        let p = p.get_ref();
        let column = p.column.get_ref().clone();
        let from = match (&p.from, &p.granularity) {
            (None, None) => {
                if find(&column).is_none() && !seen.contains_key(&column) {
                    diags.error_at(
                        src,
                        p.column.span(),
                        format!("partition column `{column}` is not a column"),
                        Some(format!(
                            "{}; or derive it with `from = \"<timestamp column>\"` and `granularity = \"month\"`",
                            suggest(&column, &names)
                        )),
                    );
                }
                None
            }
            (Some(from), g) => {
                let granularity = match g.as_ref().map(|g| (g.get_ref().as_str(), g.span())) {
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
                if find(&column).is_some() {
                    diags.error_at(
                        src,
                        p.column.span(),
                        format!("derived partition column `{column}` is also a declared column"),
                        Some("remove `from` to partition by the declared column, or rename the partition".into()),
                    );
                }
                match find(from.get_ref()) {
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
                        format!("partition source `{}` is not a Timestamp or Date32 column", from.get_ref()),
                        None,
                    ),
                    None => diags.error_at(
                        src,
                        from.span(),
                        format!("partition source `{}` is not a column", from.get_ref()),
                        Some(suggest(from.get_ref(), &names)),
                    ),
                }
                Some((from.get_ref().clone(), granularity))
            }
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
    });

    if let Some(w) = &raw.watermark {
        match find(w.get_ref()) {
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
                Some(suggest(w.get_ref(), &names)),
            ),
        }
    }

    let mut rules = Vec::new();
    let mut rule_names = BTreeSet::new();
    for r in &raw.rules {
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
        rules,
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
