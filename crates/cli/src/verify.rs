//! `factstore verify`: an offline check of a data folder.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_engine::io::StdFileSystem;

pub fn run(data_dir: &Path, archive_url: Option<&str>) -> anyhow::Result<ExitCode> {
    if !data_dir.join("log").exists() {
        bail!(
            "{} is not a factstore data folder (no log/ inside)",
            data_dir.display()
        );
    }
    let cold = match archive_url {
        Some(url) => Some(
            factstore_engine::archive::ObjectColdStore::from_url(url)
                .with_context(|| format!("cannot use the archive URL {url}"))?,
        ),
        None => None,
    };
    let cold_ref = cold
        .as_ref()
        .map(|c| c as &dyn factstore_engine::archive::ColdStore);
    let report = match factstore_engine::verify::verify_with_archive(&StdFileSystem, data_dir, cold_ref) {
        Ok(report) => report,
        Err(factstore_engine::EngineError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::WouldBlock =>
        {
            bail!(
                "{} is in use by a running factstore server: stop it first (a folder being written \
                 cannot be checked consistently), or check a backup of it",
                data_dir.display()
            )
        }
        Err(error) => return Err(error).with_context(|| format!("cannot verify {}", data_dir.display())),
    };
    println!(
        "{} segments, {} frames, {} events, {} aggregates, {} index runs with {} entries, {} snapshots",
        report.segments,
        report.frames,
        report.events,
        report.aggregates,
        report.runs,
        report.index_entries,
        report.snapshots
    );
    if report.archived_segments > 0 {
        println!(
            "{} segments in cold storage, {} of them downloaded and checked",
            report.archived_segments, report.archived_checked
        );
    }
    if report.is_ok() {
        println!("ok: no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &report.problems {
            println!("problem: {problem}");
        }
        println!("{} problems found", report.problems.len());
        Ok(ExitCode::FAILURE)
    }
}
