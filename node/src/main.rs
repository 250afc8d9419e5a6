//! `weft`: the Weft node binary and its command-line tools.
//!
//! Today it offers the envelope tools: `weft wire-demo` (sign, seal, encode, decode and
//! reject events, printing every step) and `weft inspect` (decode and verify an envelope).
//! The node itself (`weft node`) arrives with issue 4.

/// Appends a line to the command's output buffer (see [`flush_output`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::OUTPUT.with(|o| {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = writeln!(o.borrow_mut(), $($arg)*);
        })
    };
}

mod inspect;
mod wire_demo;

thread_local! {
    /// What the command prints, written out once at the end so that a closed pipe
    /// (`weft inspect ... | head`) ends the program quietly instead of panicking in
    /// `println!`.
    static OUTPUT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Writes the buffered output; a reader that went away is not an error.
fn flush_output() -> std::io::Result<()> {
    use std::io::Write as _;
    let text = OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: a multi-cloud event fabric")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign, seal, encode, decode and reject sample events, showing each step.
    WireDemo,
    /// Decode and verify one encoded envelope and print it as JSON.
    Inspect {
        /// File holding the envelope (`-` for standard input).
        path: PathBuf,
        /// The input is hexadecimal text rather than raw bytes.
        #[arg(long)]
        hex: bool,
    },
}

fn main() -> ExitCode {
    let result = run();
    if let Err(e) = flush_output() {
        eprintln!("weft: error: writing output: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::WireDemo => wire_demo::run(),
        Command::Inspect { path, hex } => {
            let raw = if path.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("reading standard input")?;
                buf
            } else {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            };
            let bytes = if hex {
                let text = String::from_utf8(raw).context("--hex input is not text")?;
                ::hex::decode(text.trim()).context("--hex input is not valid hexadecimal")?
            } else {
                raw
            };
            inspect::run(&bytes)
        }
    }
}
