//! `parstat check`: validate the whole project and print every diagnostic.

use std::path::Path;

use super::{Failure, EXIT_USAGE};
use crate::config::{self, Severity};

pub async fn run(project: &Path, ping: bool) -> Result<(), Failure> {
    let mut loaded = config::load(project);
    // The report SQL is planned against the schemas (not run) once the configuration holds.
    if let Some(p) = &loaded.project {
        let mut diags = crate::config::diag::Diagnostics::default();
        crate::query::plan::check(p, &mut diags).await;
        // Report unit tests name reports, tables and inputs that must exist.
        let (_, unit_diags) = crate::testing::load_unit_tests(p);
        for d in unit_diags.sorted() {
            diags.push(d);
        }
        if diags.has_errors() {
            loaded.project = None;
        }
        loaded.diagnostics.extend(diags.sorted());
    }
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = loaded.diagnostics.len() - errors;
    match loaded.project {
        Some(p) => {
            if ping {
                ping_engine(&p).await?;
            }
            println!(
                "ok: {} pipelines, {} datasets checked ({} warning{})",
                p.pipelines.len(),
                p.schemas.len(),
                warnings,
                if warnings == 1 { "" } else { "s" }
            );
            Ok(())
        }
        None => Err(Failure {
            code: EXIT_USAGE,
            error: anyhow::anyhow!(
                "{} error{} in the project configuration",
                errors,
                if errors == 1 { "" } else { "s" }
            ),
        }),
    }
}

/// `--ping`: the cluster's scheduler answers (nothing to ask of the local engine).
async fn ping_engine(p: &config::Project) -> Result<(), Failure> {
    match &p.settings.engine {
        config::settings::Engine::Local => {
            println!("engine: local (nothing to ping)");
            Ok(())
        }
        #[cfg(feature = "cluster")]
        config::settings::Engine::Ballista { scheduler, .. } => {
            crate::cluster::ping(scheduler)
                .await
                .map_err(|e| Failure::failed(anyhow::anyhow!(e)))?;
            println!("engine: the Ballista scheduler at {scheduler} answers");
            Ok(())
        }
        #[cfg(not(feature = "cluster"))]
        config::settings::Engine::Ballista { .. } => Ok(()),
    }
}
