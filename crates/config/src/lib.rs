//! Configuration: `parstat.toml`, `pipelines/*.toml` and `schemas/*.toml` read into validated
//! types, with every problem of every file gathered as positioned diagnostics.

pub mod diag;
pub mod env;
pub mod pipeline;
pub mod schema;
pub mod settings;
pub mod toml_file;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Diagnostics, Severity, Source};
pub use pipeline::{JobKind, Pipeline};
pub use schema::Schema;
pub use settings::Settings;

/// A loaded and validated project.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub settings: Settings,
    pub schemas: BTreeMap<String, Schema>,
    pub pipelines: Vec<Pipeline>,
}

/// The outcome of loading: the project when there was no error, and every diagnostic
/// (warnings too) either way.
pub struct Loaded {
    pub project: Option<Project>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Project {
    /// Loads the project in `root`; fails with every diagnostic when any is an error.
    pub fn load(root: &Path) -> Result<Project, Vec<Diagnostic>> {
        let loaded = load(root);
        match loaded.project {
            Some(p) => Ok(p),
            None => Err(loaded.diagnostics),
        }
    }

    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// The extract job that produces `dataset`.
    /// The names of the report pipelines.
    pub fn report_names(&self) -> Vec<&str> {
        self.pipelines
            .iter()
            .filter(|p| p.as_report().is_some())
            .map(|p| p.name.as_str())
            .collect()
    }

    pub fn producer(&self, dataset: &str) -> Option<&Pipeline> {
        self.pipelines
            .iter()
            .find(|p| p.as_extract().is_some_and(|e| e.dataset == dataset))
    }
}

/// Reads a file of the project, reporting a missing or unreadable file.
fn read(root: &Path, rel: &Path, diags: &mut Diagnostics, help: Option<String>) -> Option<Source> {
    match std::fs::read_to_string(root.join(rel)) {
        Ok(text) => Some(Source::new(rel, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            diags.error_file(rel, "file not found", help);
            None
        }
        Err(e) => {
            diags.error_file(rel, format!("cannot read: {e}"), None);
            None
        }
    }
}

/// The `*.toml` files of a project folder, sorted, as paths relative to the project.
fn toml_files(root: &Path, dir: &str, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                    out.push(Path::new(dir).join(e.file_name()));
                }
            }
        }
        Err(_) => diags.error_file(
            Path::new(dir),
            "folder not found",
            Some(format!("create `{dir}/` in the project folder")),
        ),
    }
    out.sort();
    out
}

/// The `relationships` data tests name another dataset and its column: both must exist.
fn relationships(
    schemas: &BTreeMap<String, Schema>,
    sources: &BTreeMap<String, Source>,
    diags: &mut Diagnostics,
) {
    let names: Vec<&str> = schemas.keys().map(|k| k.as_str()).collect();
    for (name, s) in schemas {
        let src = &sources[name];
        for t in &s.tests {
            let (schema::DataTestKind::Relationship { to, field, .. }, Some(span)) =
                (&t.kind, &t.to_span)
            else {
                continue;
            };
            match schemas.get(to) {
                None => diags.error_at(
                    src,
                    span.clone(),
                    format!("`{to}` is not a dataset"),
                    Some(diag::suggest(to, &names)),
                ),
                Some(other) if other.arrow_schema().field_with_name(field).is_err() => {
                    let cols: Vec<&str> = other.stored_columns().map(|c| c.name.as_str()).collect();
                    diags.error_at(
                        src,
                        span.clone(),
                        format!("dataset `{to}` has no stored column `{field}`"),
                        Some(diag::suggest(field, &cols)),
                    )
                }
                Some(_) => {}
            }
        }
    }
}

/// Loads and validates everything, gathering all diagnostics.
pub fn load(root: &Path) -> Loaded {
    let mut diags = Diagnostics::default();
    let settings = read(
        root,
        Path::new("parstat.toml"),
        &mut diags,
        Some("run parstat in a project folder, or pass `--project DIR`".into()),
    )
    .and_then(|src| settings::load(&src, &mut diags).map(|s| (s, src)));

    let mut schemas = BTreeMap::new();
    let mut schema_sources = BTreeMap::new();
    for rel in toml_files(root, "schemas", &mut diags) {
        let stem = pipeline::table_name(&rel);
        if let Some(src) = read(root, &rel, &mut diags, None) {
            if let Some(s) = schema::load(&src, &stem, &mut diags) {
                schema_sources.insert(s.name.clone(), src);
                schemas.insert(s.name.clone(), s);
            }
        }
    }
    relationships(&schemas, &schema_sources, &mut diags);

    let mut pipelines = Vec::new();
    let files = toml_files(root, "pipelines", &mut diags);
    let mut sources = Vec::new();
    for rel in files {
        if let Some(src) = read(root, &rel, &mut diags, None) {
            sources.push(src);
        }
    }
    if let Some((settings, settings_src)) = &settings {
        settings::check_files(root, settings, settings_src, &mut diags);
        pipelines =
            validate::pipelines(root, settings, settings_src, &schemas, &sources, &mut diags);
    } else {
        // Without settings, still report what can be found in each pipeline file alone.
        for src in &sources {
            let _ = pipeline::parse(src, &mut diags);
        }
    }

    let project = match settings {
        Some((settings, _)) if !diags.has_errors() => Some(Project {
            root: root.to_path_buf(),
            settings,
            schemas,
            pipelines,
        }),
        _ => None,
    };
    Loaded {
        project,
        diagnostics: diags.sorted(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the repository's project files (no data) to break.
    fn project() -> tempfile::TempDir {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    copy(&e.path(), &to.join(e.file_name()));
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        }
        // The project at the top of the repository, two folders above this crate.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo.join("parstat.toml"), dir.path().join("parstat.toml")).unwrap();
        for sub in ["pipelines", "schemas", "sql", "reports"] {
            copy(&repo.join(sub), &dir.path().join(sub));
        }
        dir
    }

    fn edit(root: &Path, file: &str, from: &str, to: &str) {
        let p = root.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }

    /// What `parstat check` prints for a project with a mistake in each kind of file.
    #[test]
    fn diagnostics_of_every_kind_of_file() {
        let p = project();
        let root = p.path();
        edit(root, "parstat.toml", "timezone = ", "time_zone = ");
        edit(root, "pipelines/dossier.toml", "schedule = ", "shedule = ");
        edit(
            root,
            "pipelines/rating.toml",
            "0 0 3 * * 1",
            "0 0 3 * * Funday",
        );
        edit(
            root,
            "pipelines/monthly_par.toml",
            "needs = [\"dossier\"",
            "needs = [\"dosier\"",
        );
        edit(
            root,
            "schemas/rating.toml",
            "freshness = \"8 days\"",
            "freshness = \"weekly\"",
        );
        edit(
            root,
            "schemas/dossier.toml",
            "type = \"Int64\"",
            "type = \"Int65\"",
        );
        let loaded = load(root);
        assert!(loaded.project.is_none());
        let text: String = loaded
            .diagnostics
            .iter()
            .map(|d| format!("{d}\n"))
            .collect();
        insta::assert_snapshot!(text.replace(root.to_str().unwrap(), "<project>"));
    }

    /// A key of the other kind is reported when the file is read; a source key that the
    /// connection (or the file's format) does not take, once the connection is known.
    #[test]
    fn rejects_keys_that_do_not_fit_the_kind_or_the_connection() {
        let p = project();
        let root = p.path();
        edit(
            root,
            "pipelines/rating.toml",
            "format = \"xlsx\"",
            "format = \"csv\"",
        );
        edit(
            root,
            "pipelines/dossier.toml",
            "kind = \"extract\"",
            "kind = \"extract\"\nquery = \"SELECT 1\"\nunbounded_rates = []",
        );
        edit(
            root,
            "pipelines/monthly_par.toml",
            "kind = \"report\"",
            "kind = \"report\"\nmode = \"merge\"",
        );
        let loaded = load(root);
        assert!(loaded.project.is_none());
        let text: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        let has = |want: &str| {
            assert!(
                text.iter().any(|d| d.starts_with(want)),
                "no {want:?} in {text:#?}"
            )
        };
        has("pipelines/dossier.toml:3:9: error: `query` does not apply to a file connection\n  help: remove `query`");
        has("pipelines/dossier.toml:4:1: error: unknown key `unbounded_rates` at the top level\n  help: `unbounded_rates` is a key of report pipelines: remove it here, or set `kind = \"report\"`");
        has("pipelines/rating.toml:9:9: error: `sheet` does not apply to this format\n  help: remove `sheet`");
        has("pipelines/monthly_par.toml:3:1: error: unknown key `mode` at the top level\n  help: `mode` is a key of extract pipelines: remove it here, or set `kind = \"extract\"`");
        assert_eq!(
            text.iter().filter(|d| d.contains(": error: ")).count(),
            4,
            "{text:#?}"
        );
    }

    /// `[engine]`: the local default, a cluster's address, and each mistake with its help.
    #[test]
    fn the_engine_setting_is_local_or_a_ballista_scheduler() {
        let p = project();
        let root = p.path();
        assert_eq!(
            load(root).project.unwrap().settings.engine,
            settings::Engine::Local
        );
        let toml = root.join("parstat.toml");
        let base = std::fs::read_to_string(&toml).unwrap();
        let with = |engine: &str| {
            std::fs::write(&toml, format!("{base}\n[engine]\n{engine}\n")).unwrap();
            let loaded = load(root);
            let text: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
            (loaded.project, text.join("\n"))
        };
        let (p, _) = with("kind = \"ballista\"\nscheduler = \"df://10.0.0.5:50050\"");
        if cfg!(feature = "cluster") {
            assert_eq!(
                p.unwrap().settings.engine,
                settings::Engine::Ballista {
                    scheduler: "df://10.0.0.5:50050".into(),
                    query_timeout_secs: settings::DEFAULT_QUERY_TIMEOUT_SECS,
                }
            );
        } else {
            assert!(p.is_none());
        }
        let (p, text) = with("kind = \"ballista\"");
        assert!(p.is_none());
        assert!(text.contains("needs the scheduler's address"), "{text}");
        let (_, text) = with("kind = \"ballista\"\nscheduler = \"http://h:50050\"");
        assert!(text.contains("the scheme is `http`, not `df`"), "{text}");
        let (_, text) = with("kind = \"ballista\"\nscheduler = \"df://h\"");
        assert!(text.contains("no port"), "{text}");
        let (_, text) = with("kind = \"balista\"");
        assert!(text.contains("unknown engine `balista`"), "{text}");
        assert!(text.contains("did you mean `ballista`?"), "{text}");
        let (p, text) = with("kind = \"local\"\nscheduler = \"df://h:1\"");
        assert!(p.is_none());
        assert!(
            text.contains("`scheduler` is for `kind = \"ballista\"`"),
            "{text}"
        );
        let (_, text) =
            with("kind = \"ballista\"\nscheduler = \"df://h:1\"\nquery_timeout_secs = 0");
        assert!(
            text.contains("`query_timeout_secs` must be at least 1"),
            "{text}"
        );
        let (p, text) = with("kind = \"local\"\nschedular = \"df://h:1\"");
        assert!(p.is_none());
        assert!(text.contains("unknown key `schedular`"), "{text}");
    }
}
