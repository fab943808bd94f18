//! Reading one TOML file into a raw struct while collecting, with positions, every syntax
//! error, every unknown key and the first type error, instead of stopping at the first.

use serde::de::{self, DeserializeOwned, Visitor};

use std::ops::Range;
use toml::de::{DeTable, DeValue};

use super::diag::{closest, Diagnostics, Source};

/// Parses `src` into `T`. Unknown keys are reported (with a suggestion among `known_keys`)
/// without stopping; `None` means the file could not be turned into `T` at all.
pub fn parse<T: DeserializeOwned>(
    src: &Source,
    known_keys: &[&str],
    diags: &mut Diagnostics,
) -> Option<T> {
    parse_with(src, known_keys, |_| None, diags)
}

/// Like [`parse`], but an unknown key for which `help_for` gives a help (given the key's path
/// as written in messages: `title`, `checks[0].nmae`) gets that help instead of a suggestion:
/// a key of another kind of the same file, say.
pub fn parse_with<T: DeserializeOwned>(
    src: &Source,
    known_keys: &[&str],
    help_for: impl Fn(&str) -> Option<String>,
    diags: &mut Diagnostics,
) -> Option<T> {
    let table = parse_table(src, diags)?;
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let de = match toml::Deserializer::parse(&src.text) {
        Ok(de) => de,
        Err(e) => {
            diags.error_at(src, e.span().unwrap_or(0..0), e.message().to_string(), None);
            return None;
        }
    };
    let result: Result<T, _> = serde_ignored::deserialize(de, |path| unknown.push(segments(&path)));
    for path in &unknown {
        let (span, key) = locate(table.get_ref(), path).unwrap_or((0..0, path_text(path)));
        let where_ = match &path[..path.len().saturating_sub(1)] {
            [] => "at the top level".to_string(),
            parent => format!("in `{}`", path_text(parent)),
        };
        let help = help_for(&path_text(path)).unwrap_or_else(|| {
            match closest(&key, known_keys.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "remove it; the keys are listed in the project's interface documentation"
                    .to_string(),
            }
        });
        diags.error_at(
            src,
            span,
            format!("unknown key `{key}` {where_}"),
            Some(help),
        );
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            diags.error_at(
                src,
                e.span().unwrap_or(0..0),
                first_line(e.message()).to_string(),
                None,
            );
            None
        }
    }
}

/// Reports every syntax error of `src` with its position; `true` when there is none.
pub fn check_syntax(src: &Source, diags: &mut Diagnostics) -> bool {
    parse_table(src, diags).is_some()
}

/// The document as a table with spans, or `None` after reporting its syntax errors.
fn parse_table<'s>(src: &'s Source, diags: &mut Diagnostics) -> Option<toml::Spanned<DeTable<'s>>> {
    let (table, errors) = DeTable::parse_recoverable(&src.text);
    if errors.is_empty() {
        return Some(table);
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        diags.error_at(
            src,
            span,
            format!("invalid TOML: {}", first_line(e.message())),
            Some("fix the syntax; see https://toml.io for the format".into()),
        );
    }
    None
}

/// The first line of an error message, trimmed (toml's messages carry a source excerpt).
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = segments(parent);
            v.push(Segment::Index(*index));
            v
        }
        Path::Map { parent, key } => {
            let mut v = segments(parent);
            // `Spanned<T>` wraps its value in a private field: not a key of the document.
            if !key.starts_with("$__serde_spanned_private") {
                v.push(Segment::Key(key.clone()));
            }
            v
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    }
}

fn path_text(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => k.clone(),
            Segment::Index(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
        .replace(".[", "[")
}

/// The span of the last key of `path` in the parsed document, and that key.
fn locate(table: &DeTable<'_>, path: &[Segment]) -> Option<(Range<usize>, String)> {
    let (last, parents) = path.split_last()?;
    let mut value: Option<&DeValue<'_>> = None;
    let mut current = table;
    for seg in parents {
        let v = match (seg, value) {
            (Segment::Key(k), _) => current.get(k.as_str()).map(|v| v.get_ref())?,
            (Segment::Index(i), Some(DeValue::Array(a))) => a.get(*i).map(|v| v.get_ref())?,
            _ => return None,
        };
        value = Some(v);
        match v {
            DeValue::Table(t) => current = t,
            DeValue::Array(_) => {}
            _ => return None,
        }
        // An index into an array of tables lands on a table: continue from there.
        if let (Segment::Index(_), DeValue::Table(t)) = (seg, v) {
            current = t;
        }
    }
    match last {
        Segment::Key(k) => current
            .iter()
            .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
            .map(|(key, _)| (key.span(), k.clone())),
        Segment::Index(_) => None,
    }
}

/// The field names a struct deserializes, read from its `Deserialize` impl, so that
/// suggestions for unknown keys never drift from the structs themselves.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diagnostics;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        name: String,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        kind: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[test]
    fn reports_every_unknown_key_with_its_position() {
        let src = Source::new(
            "p.toml",
            "kind = \"x\"\nknd = 1\n[[items]]\nname = \"a\"\nnmae = \"b\"\n".to_string(),
        );
        let mut d = Diagnostics::default();
        let keys: Vec<&str> = fields_of::<Outer>()
            .iter()
            .chain(fields_of::<Inner>())
            .copied()
            .collect();
        let v: Option<Outer> = parse(&src, &keys, &mut d);
        assert!(v.is_some());
        let out: Vec<String> = d.sorted().iter().map(|d| d.to_string()).collect();
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("p.toml:2:1: error: unknown key `knd` at the top level"));
        assert!(out[0].contains("did you mean `kind`?"));
        assert!(out[1].starts_with("p.toml:5:1: error: unknown key `nmae` in `items[0]`"));
        assert!(out[1].contains("did you mean `name`?"));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let src = Source::new("p.toml", "kind = \"x\"\nitems = [\n".to_string());
        let mut d = Diagnostics::default();
        let v: Option<Outer> = parse(&src, &[], &mut d);
        assert!(v.is_none());
        let first = d.sorted()[0].to_string();
        assert!(first.starts_with("p.toml:"), "{first}");
        assert!(first.contains("invalid TOML"), "{first}");
    }

    #[test]
    fn reports_type_errors_with_position() {
        let src = Source::new("p.toml", "kind = 3\n".to_string());
        let mut d = Diagnostics::default();
        let v: Option<Outer> = parse(&src, &[], &mut d);
        assert!(v.is_none());
        let first = d.sorted()[0].to_string();
        assert!(first.starts_with("p.toml:1:8: error:"), "{first}");
    }
}
