//! `factstore head`: the last committed position.

use std::process::ExitCode;

use super::ClientArgs;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct HeadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: HeadArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let head = client.head().await?;
        printer.head(&head)?;
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
