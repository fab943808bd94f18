//! Running one SQL text: what SQL may do (query only), the tables it names, planning and
//! running it with the period's parameters bound, and collecting the result with plain types.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use super::{session, QueryError, SqlCause};
use crate::warehouse;

/// What report SQL, checks, data and unit tests and `parstat query` may do: query. DDL
/// (`CREATE EXTERNAL TABLE` reads any file the process can), DML (`COPY ... TO` writes one,
/// `INSERT`) and statements (`SET`) are refused, so SQL cannot reach outside the warehouse.
pub fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A refused statement's error, with what to do instead.
fn refused(e: DataFusionError) -> DataFusionError {
    let m = e.to_string();
    if m.contains("DDL not supported")
        || m.contains("DML not supported")
        || m.contains("Statement not supported")
    {
        DataFusionError::Plan(format!(
            "{}: only queries (SELECT, WITH, VALUES) run here; to write a result to a file use `parstat query ... -o FILE`",
            first_line(&m)
        ))
    } else {
        e
    }
}

/// An error's first line (DataFusion's errors go on with their plan and backtrace).
pub(crate) fn first_line(m: &str) -> &str {
    m.lines().next().unwrap_or(m)
}

/// The words of `texts` that could name a table: a report's session opens only the warehouse
/// tables its SQL and checks name (each opening reads a Delta log), and a SQL file waits for
/// the files whose tables it names. Comments and string literals name nothing: a file that
/// only mentions another in a comment runs beside it, not after it.
pub fn named_tables<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    use datafusion::sql::sqlparser::{dialect::GenericDialect, tokenizer};
    let mut out = BTreeSet::new();
    for t in texts {
        match tokenizer::Tokenizer::new(&GenericDialect {}, t).tokenize() {
            Ok(tokens) => out.extend(tokens.into_iter().filter_map(|tok| match tok {
                tokenizer::Token::Word(w) => Some(w.value.to_ascii_lowercase()),
                _ => None,
            })),
            // SQL the tokenizer rejects fails later with its own error; until then every
            // word counts, so that no table it may need is left unopened.
            Err(_) => out.extend(
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty())
                    .map(|w| w.to_ascii_lowercase()),
            ),
        }
    }
    out
}

/// The most operators one expression of report SQL may chain (`a OR b OR ...`, counting
/// the brackets it sits in). DataFusion plans such a chain by recursion, in time that grows
/// steeply with its length: a few hundred overflow a default thread stack, which aborts the
/// whole process (a daemon's other jobs with it), and a few thousand take minutes. The
/// project's own SQL chains under 100; parstat's threads (`crate::cli::THREAD_STACK`) hold
/// twice this limit.
pub const MAX_CHAIN: usize = 1000;

/// Refuses SQL in which an expression chains more than [`MAX_CHAIN`] operators, naming where
/// and what to write instead. It counts tokens, before anything is parsed: operators and
/// opening brackets, per comma-separated part, summed over the brackets open at each point,
/// so the count bounds how deep any expression can nest. SQL the tokenizer rejects is left
/// to the parser, which reports it in its own words.
pub fn within_chain_limit(sql: &str) -> Result<(), DataFusionError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    /// Per open bracket: the operators of its current part, the deepest group closed in that
    /// part, and the deepest of its finished parts.
    #[derive(Default)]
    struct Level {
        ops: usize,
        child: usize,
        deepest: usize,
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return Ok(());
    };
    // The innermost open bracket (the statement itself at first), and those around it.
    let mut cur = Level::default();
    let mut outer: Vec<Level> = Vec::new();
    for t in &tokens {
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                cur.ops += 1;
                outer.push(std::mem::take(&mut cur));
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if let Some(parent) = outer.pop() {
                    let depth = cur.deepest.max(cur.ops + cur.child);
                    cur = parent;
                    cur.child = cur.child.max(depth);
                }
                continue;
            }
            Token::Comma | Token::SemiColon => {
                cur.deepest = cur.deepest.max(cur.ops + cur.child);
                cur.ops = 0;
                cur.child = 0;
                continue;
            }
            Token::Word(w)
                if !matches!(
                    w.keyword,
                    Keyword::AND
                        | Keyword::OR
                        | Keyword::XOR
                        | Keyword::NOT
                        | Keyword::IS
                        | Keyword::LIKE
                        | Keyword::ILIKE
                        | Keyword::SIMILAR
                        | Keyword::REGEXP
                        | Keyword::RLIKE
                        | Keyword::IN
                        | Keyword::BETWEEN
                        | Keyword::OVERLAPS
                        | Keyword::COLLATE
                        | Keyword::AT
                        | Keyword::DIV
                ) =>
            {
                continue
            }
            // Operands and separators; every other token (an operator, `::`, `[`, a
            // character the dialect does not know) counts, so that none is missed.
            Token::EOF
            | Token::Whitespace(_)
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::Period
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => continue,
            _ => cur.ops += 1,
        }
        let chained = cur.ops + cur.child + outer.iter().map(|l| l.ops + l.child).sum::<usize>();
        if chained > MAX_CHAIN {
            let at = t.span.start;
            // The span lets `check` point at the operator, as at DataFusion's own errors.
            let here = datafusion::common::Diagnostic::new_error(
                format!("more than {MAX_CHAIN} operators chained"),
                datafusion::common::Span::try_from_sqlparser_span(t.span),
            );
            return Err(DataFusionError::Plan(format!(
                "the expression at line {}, column {} chains more than {MAX_CHAIN} operators, \
                 more than planning can hold; write a long chain of OR comparisons as \
                 `column IN (...)`, a long CASE as a join with a seed table, or split the \
                 expression across CTEs",
                at.line, at.column
            ))
            .with_diagnostic(here));
        }
    }
    Ok(())
}

/// Plans `sql` as [`read_only`] allows, without running it (`parstat check`).
pub async fn plan_query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::logical_expr::LogicalPlan, DataFusionError> {
    within_chain_limit(sql)?;
    let plan = parstat_plan::logical_plan(ctx, sql).await?;
    read_only().verify_plan(&plan).map_err(refused)?;
    Ok(plan)
}

/// Runs `sql` with the period's parameters bound and collects the result with plain types
/// (no view, dictionary or unsigned types, which neither Delta nor the workbook want).
pub async fn run_sql(
    ctx: &SessionContext,
    origin: &str,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let err = |e: DataFusionError| QueryError::sql(origin, e);
    within_chain_limit(sql).map_err(err)?;
    let df = parstat_plan::sql_with_options(ctx, sql, read_only())
        .await
        .map_err(|e| err(refused(e)))?;
    let map: std::collections::HashMap<String, ScalarAndMetadata> = params
        .iter()
        .map(|(k, v)| (k.clone(), ScalarAndMetadata::from(v.clone())))
        .collect();
    let df = parstat_plan::with_param_values(df, ParamValues::Map(map)).map_err(err)?;
    let Some(limit) = session::cluster_timeout(ctx) else {
        return collect_plain(df)
            .await
            .map_err(|source| QueryError::sql(origin, source));
    };
    on_cluster(ctx, origin, df, limit).await
}

/// Runs `df` on the cluster. A cluster that lost an executor can lose track of a job, which
/// then never ends: past `limit` the job is cancelled at the scheduler and the query fails.
#[cfg(feature = "cluster")]
async fn on_cluster(
    ctx: &SessionContext,
    origin: &str,
    df: datafusion::dataframe::DataFrame,
    limit: std::time::Duration,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let plain = plain_schema(df.schema().as_arrow());
    let task = df.task_ctx();
    let plan = df
        .create_physical_plan()
        .await
        .map_err(|e| QueryError::sql(origin, e))?;
    let run = datafusion::physical_plan::collect(plan.clone(), Arc::new(task));
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(batches)) => {
            let batches = batches
                .iter()
                .map(|b| warehouse::cast_batch(b, &plain))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueryError::sql(origin, e))?;
            Ok((plain, batches))
        }
        Ok(Err(e)) => Err(QueryError::ran(ctx, origin, e)),
        Err(_) => {
            let scheduler = session::cluster_scheduler(ctx).unwrap_or_default();
            let cancelled = crate::cluster::cancel(&plan, &scheduler).await;
            Err(QueryError::Cluster {
                file: origin.to_string(),
                source: format!(
                    "the query did not finish within {} s (`[engine] query_timeout_secs`); an executor may have been lost (see the scheduler's log); {cancelled}; nothing of it was published, run it again",
                    limit.as_secs()
                )
                .into(),
            })
        }
    }
}

#[cfg(not(feature = "cluster"))]
async fn on_cluster(
    _: &SessionContext,
    origin: &str,
    df: datafusion::dataframe::DataFrame,
    _: std::time::Duration,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    collect_plain(df)
        .await
        .map_err(|source| QueryError::sql(origin, source))
}

/// The type a result column is kept as: no view, dictionary or unsigned types.
fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Dictionary(_, v) => plain_type(v),
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::Int64,
        other => other.clone(),
    }
}

fn plain_schema(s: &ArrowSchema) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        s.fields()
            .iter()
            .map(|f| Field::new(f.name(), plain_type(f.data_type()), true))
            .collect::<Vec<_>>(),
    ))
}

/// Collects `df` with plain types: no view, dictionary or unsigned types, which neither Delta
/// nor the workbook want. The schema is returned too, for an empty result.
pub(super) async fn collect_plain(
    df: datafusion::dataframe::DataFrame,
) -> Result<(SchemaRef, Vec<RecordBatch>), SqlCause> {
    let plain = plain_schema(df.schema().as_arrow());
    let batches = parstat_plan::collect(df).await?;
    let batches = batches
        .iter()
        .map(|b| warehouse::cast_batch(b, &plain))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((plain, batches))
}

/// The first `n` rows of a result as a text table, with a note of how many more there are.
pub fn sample(batches: &[RecordBatch], n: usize) -> String {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut first = Vec::new();
    let mut left = n;
    for b in batches {
        if left == 0 {
            break;
        }
        let k = b.num_rows().min(left);
        first.push(b.slice(0, k));
        left -= k;
    }
    let mut text = arrow::util::pretty::pretty_format_batches(&first)
        .map(|t| t.to_string())
        .unwrap_or_default();
    if total > n {
        text.push_str(&format!("\n… and {} more", total - n));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn tables_named_in_comments_or_strings_are_not_named() {
        let n = named_tables([
            "-- empty when dossier_monthly is\nSELECT x FROM Late_Procedures /* trend_monthly */\nWHERE y = 'par_index' AND z = $period",
        ]);
        assert!(n.contains("late_procedures"), "{n:?}");
        for absent in ["dossier_monthly", "trend_monthly", "par_index", "period"] {
            assert!(!n.contains(absent), "{absent} in {n:?}");
        }
        // SQL the tokenizer rejects (an unterminated string): every word counts.
        let n = named_tables(["SELECT * FROM dossier WHERE a = 'rating"]);
        assert!(n.contains("dossier") && n.contains("rating"), "{n:?}");
    }

    /// `SELECT` of `n` ones joined by `op`.
    fn chain(op: &str, n: usize) -> String {
        format!("SELECT {} AS x", vec!["1"; n].join(op))
    }

    #[test]
    fn a_chain_past_the_limit_is_refused_where_it_crosses_it() {
        assert!(within_chain_limit(&chain(" + ", MAX_CHAIN + 1)).is_ok());
        let e = within_chain_limit(&chain(" + ", MAX_CHAIN + 2)).unwrap_err();
        // The operator that crosses the limit: the 1,001st `+`, after 1,000 "1 + " and a "1 ".
        let col = "SELECT ".len() + 4 * MAX_CHAIN + 3;
        assert!(
            e.to_string().contains(&format!(
                "line 1, column {col} chains more than 1000 operators"
            )),
            "{e}"
        );
        assert!(e.to_string().contains("`column IN (...)`"), "{e}");
        // Keywords count as operators; a comparison and its OR are two.
        let ors = (0..MAX_CHAIN / 2 + 1)
            .map(|i| format!("code = '{i}'"))
            .collect::<Vec<_>>()
            .join("\nOR ");
        let e = within_chain_limit(&format!("SELECT * FROM t\nWHERE {ors}")).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("line {}", MAX_CHAIN / 2 + 2)),
            "{e}"
        );
    }

    #[test]
    fn brackets_add_up_and_commas_start_afresh() {
        // Ten parts of 900 each, comma-separated: each is its own expression.
        let parts = vec![vec!["1"; 901].join(" + "); 10].join(", ");
        assert!(within_chain_limit(&format!("SELECT {parts}")).is_ok());
        // Ten nested groups of 100 each: one expression 1,000 deep (and ten brackets).
        let group = vec!["1"; 100].join(" + ");
        let nested = (0..10).fold(String::from("1"), |inner, _| format!("{group} + ({inner})"));
        assert!(within_chain_limit(&format!("SELECT {nested}")).is_err());
        // A closed group still counts for what follows it in the same part.
        let after = format!("SELECT ({group}) {}", " + 1".repeat(901));
        assert!(within_chain_limit(&after).is_err());
        // Operators in comments and strings are text, not operators.
        let text = format!(
            "SELECT '{}' AS s -- {}",
            "+".repeat(5000),
            "OR ".repeat(5000)
        );
        assert!(within_chain_limit(&text).is_ok());
        // SQL the tokenizer rejects is left to the parser's own error.
        assert!(within_chain_limit("SELECT 'unterminated").is_ok());
        // The project's own SQL is far under the limit.
        for f in [
            "sql/par/dossier_monthly.sql",
            "sql/investment/investment_monthly.sql",
        ] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(within_chain_limit(&text).is_ok(), "{f}");
        }
    }

    #[test]
    fn plain_types_have_no_view_dictionary_or_unsigned_types() {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View));
        for (from, to) in [
            (DataType::Utf8View, DataType::Utf8),
            (DataType::LargeUtf8, DataType::Utf8),
            (DataType::BinaryView, DataType::Binary),
            (DataType::LargeBinary, DataType::Binary),
            (dict, DataType::Utf8),
            (DataType::UInt8, DataType::Int16),
            (DataType::UInt16, DataType::Int32),
            (DataType::UInt32, DataType::Int64),
            (DataType::UInt64, DataType::Int64),
            (DataType::Int32, DataType::Int32),
            (DataType::Decimal128(18, 2), DataType::Decimal128(18, 2)),
        ] {
            assert_eq!(plain_type(&from), to, "{from}");
        }
        let s = plain_schema(&ArrowSchema::new(vec![Field::new(
            "n",
            DataType::UInt32,
            false,
        )]));
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert!(s.field(0).is_nullable());
    }

    fn batch(from: i64, to: i64) -> RecordBatch {
        let ids: Vec<i64> = (from..to).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("r{i}")).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids)) as _),
            ("name", Arc::new(StringArray::from(names)) as _),
        ])
        .unwrap()
    }

    #[test]
    fn a_sample_shows_the_first_rows_across_batches_and_counts_the_rest() {
        let batches = [batch(0, 2), batch(2, 5)];
        let text = sample(&batches, 3);
        for shown in ["r0", "r1", "r2"] {
            assert!(text.contains(shown), "{shown} in {text}");
        }
        for hidden in ["r3", "r4"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
        assert!(text.ends_with("\n… and 2 more"), "{text}");
        // All rows fit: no note.
        let all = sample(&batches, 5);
        assert!(all.contains("r4") && !all.contains("more"), "{all}");
        assert!(!sample(&[], 10).contains("more"));
    }

    #[test]
    fn refused_statements_say_what_to_do_instead() {
        let e = refused(DataFusionError::Plan(
            "DDL not supported: CreateExternalTable\nplan".into(),
        ));
        let m = e.to_string();
        assert!(
            m.contains("only queries (SELECT, WITH, VALUES) run here"),
            "{m}"
        );
        assert!(!m.contains("\nplan"), "{m}");
        let other = refused(DataFusionError::Plan("No field named x".into()));
        assert_eq!(other.to_string(), "Error during planning: No field named x");
    }
}
