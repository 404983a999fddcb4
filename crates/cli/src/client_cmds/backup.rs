//! `factstore backup --to DIR`: asks the server for a backup of the whole store into a folder
//! of its own machine, and waits until it is complete.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;

use super::ClientArgs;
use super::archive::human_bytes;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The folder to copy the store into: an absolute path on the server's machine, of a
    /// folder that does not exist (it is created) or is empty.
    #[arg(long, value_name = "DIR")]
    pub to: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    // The server resolves the path on its machine: a relative one would mean the server's
    // working folder, which is rarely what was meant.
    if !Path::new(&args.to).is_absolute() {
        bail!(
            "--to '{}' is not an absolute path: give the absolute path of a folder on the server's machine",
            args.to
        );
    }
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let outcome = client.backup(&args.to).await?;
        if printer.json() {
            printer.value(&outcome)?;
        } else {
            printer.line(&format!(
                "backed up positions 1 to {} into {}: {} files, {} ({} linked), in {:.1} s",
                outcome.head_position,
                outcome.to,
                outcome.files,
                human_bytes(outcome.bytes),
                outcome.linked_files,
                outcome.duration_ms as f64 / 1000.0
            ))?;
            if outcome.archived_segments > 0 {
                printer.line(&format!(
                    "{} segments are in cold storage only: a store restored from this backup needs the same --archive-url",
                    outcome.archived_segments
                ))?;
            }
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
