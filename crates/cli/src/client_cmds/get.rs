//! `factstore get`: one event by id.

use std::process::ExitCode;

use uuid::Uuid;

use super::ClientArgs;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The event's id.
    pub event_id: Uuid,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let event = client.get_event(args.event_id).await?;
        printer.event_details(&event)?;
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
