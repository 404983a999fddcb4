//! `factstore verify`: an offline check of a data folder.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_engine::io::StdFileSystem;

pub fn run(data_dir: &Path) -> anyhow::Result<ExitCode> {
    if !data_dir.join("log").exists() {
        bail!(
            "{} is not a factstore data folder (no log/ inside)",
            data_dir.display()
        );
    }
    let report = factstore_engine::verify::verify(&StdFileSystem, data_dir)
        .with_context(|| format!("cannot verify {}", data_dir.display()))?;
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
