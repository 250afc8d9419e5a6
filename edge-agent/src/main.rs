//! `weft-agent`: Weft's edge agent for devices (`docs/agent.md`).
//!
//! It signs every event on the device with its own Ed25519 key, keeps events in a durable
//! outbox while offline, applies the local rules its node sends (filter, sample,
//! aggregate), drains in order over QUIC to the lowest-RTT healthy node, fails over and
//! back, and hands commands from the node to the device. This file is CLI glue over the
//! library (`lib.rs`), which `weft demo` also runs (`weft agent-run`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft-agent", version, about = "Weft's edge agent for devices")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes a new Ed25519 device key (PEM, mode 0600) and prints its public key (what a
    /// policy's `device_key` or a node's `edge.devices` entry names).
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs the agent.
    Run {
        /// The agent's config file.
        #[arg(long)]
        config: PathBuf,
        /// Exit (status 0) once standard input has ended and the outbox is empty.
        #[arg(long)]
        exit_when_drained: bool,
    },
    /// Shows the connected node, its RTT, the outbox depth and the drop counters.
    Status {
        /// The agent's config file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Keygen { out } => {
            let public = weft_agent::keygen(&out)?;
            println!("wrote {}", out.display());
            println!("public key: {public}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            config,
            exit_when_drained,
        } => weft_agent::run(&config, exit_when_drained),
        Cmd::Status { config, json } => weft_agent::status(&config, json),
    }
}
