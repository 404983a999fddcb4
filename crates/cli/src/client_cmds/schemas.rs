//! `factstore schemas` and `factstore upcasters`: the schema registry from the shell.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use factstore_client::UpcasterDefinition;
use serde_json::Value;

use super::ClientArgs;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct SchemasArgs {
    #[command(subcommand)]
    pub command: SchemasCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SchemasCommand {
    /// Register a JSON Schema (draft 2020-12) for event_data of one version of an event type.
    Put {
        event_type: String,
        version: u32,
        /// The schema, a JSON file ("-": stdin).
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every registered version of one event type, with its schema.
    Get {
        event_type: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every event type with a schema, and its versions.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct UpcastersArgs {
    #[command(subcommand)]
    pub command: UpcastersCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum UpcastersCommand {
    /// Register (or replace) the upcaster of an event type from one version.
    Put {
        event_type: String,
        from_version: u32,
        /// {"to_version": N, "ops": [...]}, a JSON file ("-": stdin).
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The upcasters, of every event type or of one.
    List {
        event_type: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A JSON document from a file, or stdin for "-"; the error names the file.
fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

pub fn run_schemas(args: SchemasArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SchemasCommand::Put {
            event_type,
            version,
            file,
            client,
        } => {
            let schema = read_json(&file)?;
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let put = client.put_schema(&event_type, version, &schema).await?;
                if printer.json() {
                    printer.value(&put)?;
                } else if put.created {
                    printer.line(&format!(
                        "registered version {version} of {event_type} (latest {})",
                        put.latest_version
                    ))?;
                } else {
                    printer.line(&format!(
                        "version {version} of {event_type} was registered already"
                    ))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SchemasCommand::Get { event_type, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let schemas = client.schema(&event_type).await?;
                if printer.json() {
                    printer.value(&schemas)?;
                } else {
                    for version in &schemas.versions {
                        printer.line(&format!(
                            "{} version {} (registered {}): {}",
                            schemas.event_type,
                            version.version,
                            factstore_client::time::format_timestamp(version.registered_at),
                            version.schema
                        ))?;
                    }
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SchemasCommand::List { client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let types = client.schemas().await?;
                if printer.json() {
                    for summary in &types {
                        printer.value(summary)?;
                    }
                } else if types.is_empty() {
                    printer.line("no schemas")?;
                } else {
                    for summary in &types {
                        let versions: Vec<String> = summary.versions.iter().map(u32::to_string).collect();
                        printer.line(&format!(
                            "{:<32} versions {}",
                            summary.event_type,
                            versions.join(", ")
                        ))?;
                    }
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

pub fn run_upcasters(args: UpcastersArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        UpcastersCommand::Put {
            event_type,
            from_version,
            file,
            client,
        } => {
            let definition: UpcasterDefinition =
                serde_json::from_value(read_json(&file)?).with_context(|| {
                    format!(
                        "{} is not an upcaster: {{\"to_version\": N, \"ops\": [...]}}",
                        file.display()
                    )
                })?;
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let upcaster = client
                    .put_upcaster(&event_type, from_version, &definition)
                    .await?;
                if printer.json() {
                    printer.value(&upcaster)?;
                } else {
                    let verb = if upcaster.created {
                        "registered"
                    } else {
                        "replaced"
                    };
                    printer.line(&format!(
                        "{verb} the upcaster of {event_type} from version {from_version} to {}",
                        upcaster.to_version
                    ))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        UpcastersCommand::List { event_type, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let upcasters = client.upcasters(event_type.as_deref()).await?;
                if printer.json() {
                    for upcaster in &upcasters {
                        printer.value(upcaster)?;
                    }
                } else if upcasters.is_empty() {
                    printer.line("no upcasters")?;
                } else {
                    for u in &upcasters {
                        printer.line(&format!(
                            "{} {} -> {}: {}",
                            u.event_type,
                            u.from_version,
                            u.to_version,
                            Value::from(u.ops.clone())
                        ))?;
                    }
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn connect(args: &ClientArgs) -> anyhow::Result<(factstore_client::Client, Printer)> {
    Ok((args.client()?, Printer::new(args.json)))
}
