//! `weft`: the Weft node binary and its command-line tools.
//!
//! `weft node --config FILE` runs a node: the mesh core over QUIC, the SQLite store and the
//! HTTP API (with the web dashboard). `weft demo` runs a local multi-region mesh of such
//! nodes with a sample workload. The other subcommands are tools: keys (`keygen`), config
//! checks (`check-config`), a client of the HTTP API (`publish`, `tail`, `peers`, `routes`,
//! `status`, `audit`) and envelope tools (`wire-demo`, `inspect`).

/// Prints a line to standard output at once (every command's output). A reader that went
/// away (`weft tail ... | head`, `weft inspect ... | head`) ends the program quietly with
/// status 0, as a shell tool does, where `println!` would panic.
macro_rules! say {
    () => {
        $crate::say_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

/// [`say!`]'s body.
fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("weft: writing to standard output failed: {e}");
            std::process::exit(1);
        }
    }
}

/// mimalloc instead of glibc's malloc: under sustained overload (megabyte request bodies
/// parsed, signed and freed on many threads) glibc's per-thread arenas kept growing, to
/// 2 GB of resident memory in 30 s with a 64 MiB body budget; see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod ce_claims;
mod chaos;
mod check_config;
mod client;
mod clock;
mod cloudevents;
mod config;
mod confirm;
mod cursor;
mod dashboard;
mod demo;
mod discovery;
mod driver;
mod edge;
mod egress;
mod erase;
mod http;
mod inspect;
mod keys;
mod metrics;
mod not_storing;
mod parts;
mod policy_cli;
mod policy_push;
mod policy_state;
mod ratelimit;
mod read_ahead;
mod regions;
mod serve;
mod store;
mod tables;
#[cfg(test)]
mod test_support;
mod tls;
mod transport;
mod wire_demo;

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

/// `--expect-digest`: a SHA-256 in hex (64 digits), lower-cased as the node prints it.
fn sha256_hex(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(format!(
            "not a SHA-256 in hex: {} characters, 64 hexadecimal digits expected",
            t.len()
        ))
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Sign a TOML bundle (or add signatures to a signed one) with operator keys from
    /// `weft keygen`; writes the canonical signed CBOR a node applies.
    Sign {
        /// Operator key (repeat for several signatures: nodes need k of their n).
        #[arg(long = "key", value_name = "PATH", required = true)]
        keys: Vec<PathBuf>,
        /// Add the signatures to this signed bundle instead of signing a TOML one. Give the
        /// TOML bundle you reviewed too: the signed bundle must carry exactly it.
        #[arg(long, value_name = "SIGNED")]
        add_to: Option<PathBuf>,
        /// Where to write the signed bundle (must not exist, unless it is --add-to).
        #[arg(long)]
        out: PathBuf,
        /// The bundle, in TOML (with --add-to: the one you reviewed, compared byte for byte
        /// with the signed bundle's canonical form).
        bundle: Option<PathBuf>,
    },
    /// Check a signed bundle exactly as a node trusting these operators would, and print
    /// its epoch, signers and contents; the reason if it would be refused.
    Verify {
        /// Hex public key of a trusted operator (repeat).
        #[arg(long = "operator", value_name = "HEX", required = true)]
        operators: Vec<String>,
        /// Signatures of distinct trusted operators needed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Policy epoch the node has in force (the bundle must be newer).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// The signed bundle.
        bundle: PathBuf,
    },
    /// Where a stream's events may be held under a bundle (TOML, or signed as `weft policy
    /// sign` writes it): the stream rule that governs it, the class it is stamped with, and
    /// the regions whose nodes may hold it in clear (residency and the rule's `replication
    /// = "regions"` scope), so the most an `ack=regions:N` can ask.
    Where {
        /// The bundle: TOML, or the signed CBOR (not verified: see `weft policy verify`).
        #[arg(long)]
        bundle: PathBuf,
        /// The classification a publisher names (default: the stream rule's).
        #[arg(long)]
        classification: Option<String>,
        /// The stream.
        stream: String,
    },
    /// Push a signed bundle to a node (an admin principal's token): the node verifies it
    /// and sends it through the fabric; every node applies it, nodes that were down when
    /// they come back.
    Push {
        #[command(flatten)]
        conn: client::Conn,
        /// The signed bundle (`weft policy sign`).
        bundle: PathBuf,
    },
    /// Each node's policy epoch, fabric wide, as the contacted node knows it from gossip.
    Status {
        #[command(flatten)]
        conn: client::Conn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Exit with status 1 unless every live node has this epoch.
        #[arg(long, value_name = "EPOCH")]
        expect: Option<u64>,
        /// Exit with status 1 unless the contacted node enforces the bundle of this
        /// SHA-256 (`bundle_sha256` of GET /v1/policy; gossip carries epochs only).
        #[arg(long, value_name = "HEX", value_parser = sha256_hex)]
        expect_digest: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (see docs/config.md for the config file).
    Node {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Stop (SIGTERM) when the process with this pid, this node's parent, exits. Used
        /// by `weft demo` for its child nodes.
        #[arg(long, hide = true)]
        exit_with_parent: Option<u32>,
    },
    /// Run the edge agent (`weft-agent run`: the library, this same code) in this process.
    /// `weft demo` starts its device this way, so `cargo run --bin weft -- demo` needs no
    /// second binary.
    #[command(hide = true)]
    AgentRun {
        /// The agent's config file (docs/agent.md).
        #[arg(long)]
        config: PathBuf,
        /// Exit (status 0) once standard input has ended and the outbox is empty.
        #[arg(long)]
        exit_when_drained: bool,
        /// Stop (SIGTERM) when the process with this pid, this agent's parent, exits.
        #[arg(long, hide = true)]
        exit_with_parent: Option<u32>,
    },
    /// `weft-agent status` for an agent config: connected node, RTT, outbox, counters.
    AgentStatus {
        /// The agent's config file.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a local mesh of real nodes in four regions with the measured inter-region
    /// latencies injected and an edge agent for an enrolled device, run a sample workload
    /// and print what to look at (dashboard URLs, example commands). Ctrl-C stops every
    /// node and the agent and removes the demo's files.
    Demo {
        /// Stop by itself after this many seconds of workload.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// First of the ports the demo uses: the nodes' HTTP on PORT.. (TCP), their edge
        /// ports on PORT+4.. and mesh on PORT+10.. (UDP), the agent's HTTP input on PORT+8.
        #[arg(long, value_name = "PORT", default_value_t = demo::BASE_PORT_DEFAULT)]
        base_port: u16,
    },
    /// Check a node config the way `weft node` does at start (every field, with errors
    /// naming it; the `[policy] bundle` and a newer one the store kept from a push read and
    /// verified, and the jurisdiction claim checked when the key file is readable) without
    /// starting anything or writing the store. Also warns about what this host says of it
    /// (the data dir, the listeners' ports) and placement against the built-in region
    /// catalog.
    CheckConfig {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Fail on warnings too: placement that differs from the built-in region catalog,
        /// a data dir this user cannot write or create, a listener's port in use or an
        /// address this host lacks (all of which may be fine when the check runs away from
        /// the node's host).
        #[arg(long)]
        strict: bool,
    },
    /// Policy bundles (docs/policy.md): sign a TOML bundle with operator keys, check a
    /// signed one as a node would, push one to the fabric, see each node's epoch.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Erase a key of a stream, or all data of a principal, on every node of the fabric
    /// (docs/tables.md, Erasure). Needs an admin principal's token.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["stream", "principal"]))]
    Erase {
        #[command(flatten)]
        conn: client::Conn,
        /// The stream of the key to erase (with --key).
        #[arg(long, requires = "key", conflicts_with = "principal")]
        stream: Option<String>,
        /// The key to erase (with --stream).
        #[arg(long, requires = "stream")]
        key: Option<String>,
        /// Erase every event this principal published.
        #[arg(long)]
        principal: Option<String>,
        /// With --principal: only in this tenant.
        #[arg(long, requires = "principal")]
        tenant: Option<String>,
    },
    /// Write a new Ed25519 key (PKCS#8 PEM, mode 0600) and print its public key. With
    /// --client, also write a bearer token to PATH.token and print its SHA-256 for the
    /// node config's `principals`.
    Keygen {
        /// Where to write the key (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// A client key and token rather than a node key.
        #[arg(long)]
        client: bool,
    },
    /// Publish events as CloudEvents: DATA, or one event per line of standard input.
    Publish {
        #[command(flatten)]
        conn: client::Conn,
        /// Durability before the node answers: none, local or regions:N.
        #[arg(long, default_value = "local")]
        ack: String,
        /// Table key of the events.
        #[arg(long)]
        key: Option<String>,
        /// CloudEvents type.
        #[arg(long = "type", default_value = "weft.cli")]
        ty: String,
        /// Stream to publish to, e.g. orders.eu.
        stream: String,
        /// The event data (JSON or text); `-` or nothing reads lines from standard input,
        /// one event per line, sent as they come (see --batch, --linger-ms).
        data: Option<String>,
        #[command(flatten)]
        batching: client::PublishArgs,
    },
    /// Read a keyed table (docs/tables.md): one key, or its keys a page at a time (100 by
    /// default; --all for every page).
    Get {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        list: client::ListArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// The table's stream.
        stream: String,
        /// The key.
        key: Option<String>,
    },
    /// Write a key of a table: a value (lww, multi-value), --add N (counter), --insert or
    /// --remove ELEMENT (set).
    Put {
        #[command(flatten)]
        conn: client::Conn,
        /// Durability before the node answers: none, local or regions:N.
        #[arg(long, default_value = "local")]
        ack: String,
        /// Supersede the versions a read returned (multi-value: resolves siblings).
        #[arg(long)]
        version: Option<String>,
        /// Content type of VALUE. With application/json (the default), a VALUE that is
        /// not JSON is sent as a JSON string, with a note on stderr.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Send VALUE as a JSON string even when it reads as JSON (`42` as "42").
        #[arg(long, conflicts_with = "content_type")]
        string: bool,
        /// Counter: add this (negative to subtract).
        #[arg(long, allow_hyphen_values = true)]
        add: Option<i64>,
        /// Set: insert this element (repeat for several).
        #[arg(long)]
        insert: Vec<String>,
        /// Set: remove this element as this node has seen it (repeat for several).
        #[arg(long)]
        remove: Vec<String>,
        /// The table's stream.
        stream: String,
        /// The key.
        key: String,
        /// The value (lww, multi-value).
        value: Option<String>,
    },
    /// Delete a key of a table (a replicated tombstone; docs/tables.md).
    Del {
        #[command(flatten)]
        conn: client::Conn,
        /// Durability before the node answers: none, local or regions:N.
        #[arg(long, default_value = "local")]
        ack: String,
        /// The table's stream.
        stream: String,
        /// The key.
        key: String,
    },
    /// Follow a stream (Server-Sent Events), printing one CloudEvents JSON per line;
    /// reconnects when the connection is lost, resuming after the last event printed.
    /// Ends with status 130 on SIGINT and 143 on SIGTERM (a durable tail acknowledges
    /// what it printed first).
    Tail {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        args: client::TailArgs,
        /// The stream.
        stream: String,
    },
    /// List the node's mesh peers with region, state and RTT.
    Peers {
        #[command(flatten)]
        conn: client::Conn,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the path events take to each region (one-way latency estimates).
    Routes {
        #[command(flatten)]
        conn: client::Conn,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the node's status.
    Status {
        #[command(flatten)]
        conn: client::Conn,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// List this principal's durable subscriptions on the node (stream, name, position),
    /// or delete one (`--delete STREAM NAME`). Needs the principal's token.
    Subscriptions {
        #[command(flatten)]
        conn: client::Conn,
        /// Forget the durable subscription NAME on STREAM (it starts afresh next time).
        #[arg(long, num_args = 2, value_names = ["STREAM", "NAME"])]
        delete: Option<Vec<String>>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the node's audit log (denials, policy and fault-injection changes), newest
    /// first. Needs an admin principal's token.
    Audit {
        #[command(flatten)]
        conn: client::Conn,
        #[command(flatten)]
        args: client::AuditArgs,
    },
    /// Sign, seal, encode, decode and reject sample events, showing each step.
    WireDemo,
    /// Decode and verify one encoded envelope and print it as JSON (`"valid": false`
    /// with the stage and reason when it is not). Exit status 0 when valid, 1 when invalid
    /// or unreadable, 2 for a usage error.
    Inspect {
        /// File holding the envelope (`-` for standard input).
        path: PathBuf,
        /// The input is hexadecimal text rather than raw bytes.
        #[arg(long)]
        hex: bool,
    },
}

fn main() -> ExitCode {
    match run() {
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
        Command::Node {
            config,
            exit_with_parent,
        } => {
            if let Some(parent) = exit_with_parent {
                demo::exit_with_parent(parent)?;
            }
            serve::run(&config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AgentRun {
            config,
            exit_when_drained,
            exit_with_parent,
        } => {
            if let Some(parent) = exit_with_parent {
                demo::exit_with_parent(parent)?;
            }
            weft_agent::run(&config, exit_when_drained)
        }
        Command::AgentStatus { config, json } => weft_agent::status(&config, json),
        Command::Demo {
            duration,
            base_port,
        } => demo::run(&demo::Options {
            duration,
            base_port,
        }),
        Command::CheckConfig { config, strict } => check_config::run(&config, strict),
        Command::Policy { command } => {
            match command {
                PolicyCommand::Sign {
                    keys,
                    add_to,
                    out,
                    bundle,
                } => policy_cli::sign(bundle.as_deref(), add_to.as_deref(), &keys, &out)?,
                PolicyCommand::Verify {
                    operators,
                    threshold,
                    epoch,
                    bundle,
                } => policy_cli::verify(&bundle, &operators, threshold, epoch)?,
                PolicyCommand::Push { conn, bundle } => client::policy_push(&conn, &bundle)?,
                PolicyCommand::Where {
                    bundle,
                    classification,
                    stream,
                } => policy_cli::where_held(&bundle, &stream, classification.as_deref())?,
                PolicyCommand::Status {
                    conn,
                    json,
                    expect,
                    expect_digest,
                } => {
                    if !client::policy_status(&conn, json, expect, expect_digest.as_deref())? {
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            conn,
            stream,
            key,
            principal,
            tenant,
        } => {
            client::erase(&conn, stream, key, principal, tenant)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, client } => {
            let mut tpath = out.clone().into_os_string();
            tpath.push(".token");
            let tpath = PathBuf::from(tpath);
            // Both paths checked before either is written: a second run must not find
            // half of the first's output.
            for p in [&out, &tpath].into_iter().take(if client { 2 } else { 1 }) {
                if p.exists() {
                    anyhow::bail!(
                        "{} exists already: keygen never overwrites a key or a token (remove it, or choose another --out)",
                        p.display()
                    );
                }
            }
            let signer = keys::generate(&out)?;
            say!("wrote {} (mode 0600)", out.display());
            say!("public key: {}", signer.origin());
            if client {
                let (_, hash) = keys::generate_token(&tpath)?;
                say!("wrote {} (mode 0600)", tpath.display());
                say!("token_sha256: {hash}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish {
            conn,
            ack,
            key,
            ty,
            stream,
            data,
            batching,
        } => {
            client::publish(&conn, &stream, data, &ack, (key, &ty), &batching)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            conn,
            list,
            json,
            stream,
            key,
        } => {
            if key.is_some()
                && (list.prefix.is_some()
                    || list.after.is_some()
                    || list.limit.is_some()
                    || list.all
                    || list.digest)
            {
                anyhow::bail!(
                    "--prefix, --after, --limit, --all and --digest list a table's keys: give no KEY with them"
                );
            }
            let found = client::table_get(&conn, &stream, key.as_deref(), &list, json)?;
            Ok(if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Put {
            conn,
            ack,
            version,
            content_type,
            string,
            add,
            insert,
            remove,
            stream,
            key,
            value,
        } => {
            let value = value.map(|v| {
                if content_type != "application/json" {
                    return v;
                }
                let (body, note) = client::json_put_body(&v, string);
                if let Some(n) = note {
                    eprintln!("{n}");
                }
                body
            });
            let write = match (value, add, insert.is_empty(), remove.is_empty()) {
                (Some(v), None, true, true) => client::TableWrite::Value(v, content_type),
                (None, Some(n), true, true) => client::TableWrite::Add(n),
                (None, None, false, true) => client::TableWrite::Insert(insert),
                (None, None, true, false) => client::TableWrite::Remove(remove),
                _ => anyhow::bail!(
                    "give exactly one of: VALUE (lww, multi-value), --add N (counter), --insert or --remove (set)"
                ),
            };
            client::table_write(&conn, &stream, &key, Some(write), version.as_deref(), &ack)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Del {
            conn,
            ack,
            stream,
            key,
        } => {
            client::table_write(&conn, &stream, &key, None, None, &ack)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail { conn, args, stream } => {
            Ok(ExitCode::from(client::tail(&conn, &stream, &args)?))
        }
        Command::Peers { conn, json } => {
            client::peers(&conn, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes { conn, json } => {
            client::routes(&conn, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { conn, json } => {
            client::status(&conn, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Subscriptions { conn, delete, json } => {
            client::subscriptions(&conn, delete.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { conn, args } => {
            client::audit(&conn, &args)?;
            Ok(ExitCode::SUCCESS)
        }
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
