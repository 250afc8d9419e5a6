//! `weft check-config`: a node config checked the way `weft node` checks it at start, plus
//! what can be known about the host it is checked on (the data directory, the listeners'
//! ports) and the node's placement against the built-in region catalog.
//!
//! Every error `weft node` would stop on fails the check. What depends on the host the
//! check runs on (configs are often checked away from their nodes, e.g. in CI, or beside
//! the running node before a restart) and placement that a custom region may legitimately
//! differ on are printed as `warning:` lines; `--strict` makes them fail too.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::{NodeConfig, Resolved};
use crate::{keys, policy_push, regions, serve};

/// Runs the check and prints its findings; `strict` fails on warnings too.
pub(crate) fn run(config: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let c = NodeConfig::load(config)?;
    serve::check_rust_log()?;
    let raw = &c.raw;
    // The bundle as `weft node` verifies it at start (same function): a missing,
    // malformed or under-signed bundle stops the node, so it fails the check too.
    // The key as `weft node` loads it: a key file the node would refuse (readable by
    // others, malformed) fails the check. A missing one is reported, not failed
    // (configs are checked away from their nodes' secrets, e.g. in CI); without it
    // the jurisdiction claim is not checked.
    let key_missing = !c.key_path.exists();
    let node_key = if key_missing {
        None
    } else {
        let seed = keys::load(&c.key_path).context("weft node refuses to start with this key")?;
        Some(weft_fabric::Signer::from_secret(&seed).origin().0)
    };
    let data_dir = data_dir_state(&c.data_dir)?;
    let mut warnings = Vec::new();
    let policy = match &c.policy {
        None => None,
        Some((trust, path)) => {
            // The bundle the node's store kept from a push, which the node starts with when
            // it is newer: read as committed (a running node's store too), never written.
            let stored = match stored_bundle(&c.data_dir) {
                Ok(stored) => stored,
                Err(e) => {
                    warnings.push(format!(
                        "the store in {} was not read ({e}): a newer policy bundle it holds from a push, which the node would start with, is not checked",
                        c.data_dir.display()
                    ));
                    None
                }
            };
            Some(
                policy_push::check_configured(
                    trust,
                    path.as_deref(),
                    stored,
                    node_key,
                    &raw.jurisdiction,
                    &raw.region,
                )
                .with_context(|| format!("config {}", config.display()))?,
            )
        }
    };
    say!("{}: ok", config.display());
    say!(
        "name {} in {} ({}, {}); mesh {} (advertised {}), HTTP {}{}",
        raw.name,
        raw.region,
        raw.cloud,
        raw.jurisdiction,
        raw.listen.mesh,
        c.advertise,
        raw.listen.http,
        raw.listen
            .edge
            .map(|e| format!(", edge {e}"))
            .unwrap_or_default()
    );
    say!(
        "{} seeds, {} trusted nodes, {} principals, {} stream patterns, chaos {}",
        raw.seeds.len(),
        c.trusted.len(),
        c.tokens.len(),
        c.streams.len(),
        if raw.chaos.enabled { "enabled" } else { "off" }
    );
    match policy.as_ref().map(|p| (p.verified.as_ref(), p)) {
        None => say!("no policy configured"),
        Some((None, _)) => say!(
            "policy: operator trust only, no bundle configured or kept by the store (the node serves no data until one is pushed)"
        ),
        Some((Some(v), p)) => say!(
            "policy bundle epoch {} verified ({} signer(s)){}; jurisdiction claim {}",
            v.policy.epoch(),
            v.signers.len(),
            if p.from_store {
                ", the one the store kept from a push (newer than the configured one): the node starts with it"
            } else {
                ""
            },
            if node_key.is_some() {
                "granted"
            } else {
                "not checked (no key file)"
            }
        ),
    }
    if let Some(e) = policy.as_ref().and_then(|p| p.stale.as_ref()) {
        warnings.push(format!(
            "the policy bundle the store kept from a push no longer verifies under the configured operators ({e}): the node skips it at start (audited)"
        ));
    }
    // Seeds to dial and no other node trusted: every mesh handshake is refused, both ways
    // (the shipped single-file configs start so, to be filled in).
    // A node whose only seed is itself (the first node of a fabric) dials no one.
    // Itself: its mesh port at its advertised or listening address, or at a loopback
    // address when it listens on every interface.
    let is_self = |s: &std::net::SocketAddr| {
        s.port() == raw.listen.mesh.port()
            && (s.ip() == c.advertise.ip()
                || s.ip() == raw.listen.mesh.ip()
                || (raw.listen.mesh.ip().is_unspecified() && s.ip().is_loopback()))
    };
    let other_seeds = raw.seeds.iter().filter(|s| !is_self(s)).count();
    if other_seeds > 0 && c.trusted.iter().all(|k| Some(*k) == node_key) {
        warnings.push(format!(
            "{other_seeds} seed(s) of other nodes configured but trusted_nodes names no other node: every mesh connection will be refused in the TLS handshake (peer_handshake_failed); list the public keys of the other nodes (weft keygen prints a node's key)"
        ));
    }
    // A warning (so `--strict` fails on it), not an error: a config is often checked
    // before its key is made.
    if key_missing {
        warnings.push(format!(
            "key file {} does not exist: weft node refuses to start without it (weft keygen --out {})",
            c.key_path.display(),
            c.key_path.display()
        ));
    }
    say!(
        "key file {}; data dir {}: {}",
        c.key_path.display(),
        c.data_dir.display(),
        data_dir.describe()
    );
    if let Some(v) = policy.as_ref().and_then(|p| p.verified.as_ref()) {
        for n in scope_notes(&v.policy, &c.streams, &raw.region) {
            say!("note: {n}");
        }
    }
    warnings.extend(placement_warnings(raw, regions::regions()));
    warnings.extend(raw.ignored_settings());
    warnings.extend(data_dir.warning(&c.data_dir));
    warnings.extend(listener_warnings(&c));
    for w in &warnings {
        say!("warning: {w}");
    }
    if strict && !warnings.is_empty() {
        say!(
            "{} warning(s) and --strict: failing the check",
            warnings.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy bundle the store in `dir` kept from a push (`None`: no store there yet, or it
/// kept none). Opened as the node's HTTP readers open it (committed data only, nothing of
/// it changed), so a running node's store can be checked beside it; only by the store's
/// owner: SQLite may create the store's `-wal` and `-shm` files, and ones a check run as
/// another user (root) left behind would keep the node from opening its store.
fn stored_bundle(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::MetadataExt as _;
    let db = dir.join(crate::store::DB_FILE);
    let owner = match std::fs::metadata(&db) {
        Ok(m) => m.uid(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        anyhow::bail!(
            "{} belongs to uid {owner} and this check runs as uid {me}: run it as the node's user",
            db.display()
        );
    }
    let reader = crate::store::StoreReader::open(dir)?;
    Ok(reader.meta_get(policy_push::META_KEY)?)
}

/// A stream pattern of the config that overlaps a stream rule keeping its streams to
/// regions this node is not in (`replication = "regions"`, docs/policy.md §6.3): the node
/// holds none of the events that rule governs, however its config names them. Notes, not
/// warnings: a node outside a scope is the scope's intent, and the default `streams =
/// [">"]` overlaps every rule, so `--strict` must not fail on them. (Overlap is of
/// patterns: an earlier rule may govern some of the names first.)
fn scope_notes(
    policy: &weft_policy::Policy,
    streams: &[weft_fabric::StreamPattern],
    region: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in policy.bundle().streams.iter().enumerate() {
        if rule.replication != weft_policy::ReplicationScope::Regions
            || rule.regions.iter().any(|r| r == region)
        {
            continue;
        }
        let Ok(pattern) = weft_fabric::StreamPattern::new(rule.pattern.as_str()) else {
            continue;
        };
        for s in streams.iter().filter(|s| s.overlaps(&pattern)) {
            out.push(format!(
                "streams pattern {s} overlaps the policy's stream rule streams[{i}] ({}), which epoch {} keeps to regions {}: this node ({region}) holds none of the events that rule governs",
                rule.pattern,
                policy.epoch(),
                rule.regions.join(", ")
            ));
        }
    }
    out
}

/// The node's claimed placement against the built-in catalog: a region the catalog knows
/// must be claimed with its cloud and jurisdiction (a wrong jurisdiction is a residency
/// claim the policy may grant by region; a wrong cloud puts the node in another cloud's
/// failure domain in every route), and a region id's `cloud:` prefix must name its cloud.
fn placement_warnings(
    raw: &NodeConfig,
    catalog: &std::collections::BTreeMap<String, regions::Region>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((prefix, _)) = raw.region.split_once(':')
        && prefix != raw.cloud
    {
        out.push(format!(
            "region {:?} names cloud {prefix:?} but `cloud` is {:?}",
            raw.region, raw.cloud
        ));
    }
    match catalog.get(&raw.region) {
        Some(r) => {
            if r.cloud != raw.cloud {
                out.push(format!(
                    "`cloud` is {:?} but the catalog has region {} in {:?}",
                    raw.cloud, raw.region, r.cloud
                ));
            }
            if r.jurisdiction != raw.jurisdiction {
                out.push(format!(
                    "`jurisdiction` is {:?} but the catalog has region {} ({}) in {:?}: residency rules that grant by jurisdiction will treat this node as {:?}",
                    raw.jurisdiction, raw.region, r.location, r.jurisdiction, raw.jurisdiction
                ));
            }
        }
        None => out.push(format!(
            "region {:?} is not in the built-in catalog ({} regions, e.g. \"aws:eu-west-1\"): fine for an on-prem site or a region added since, but the dashboard's map cannot place it; check the spelling",
            raw.region,
            catalog.len()
        )),
    }
    out
}

/// What the check found of the data directory on this host.
#[derive(Debug, PartialEq)]
enum DataDir {
    /// A directory this user can create files in.
    Writable,
    /// A directory this user cannot write (the node may run as another user).
    ReadOnly,
    /// Absent; `weft node` creates it: `creatable` when the nearest existing ancestor
    /// (named) is writable by this user.
    Absent {
        ancestor: Option<PathBuf>,
        creatable: bool,
    },
}

impl DataDir {
    fn describe(&self) -> String {
        match self {
            DataDir::Writable => "writable".to_string(),
            DataDir::ReadOnly => "not writable by this user".to_string(),
            DataDir::Absent {
                creatable: true, ..
            } => "does not exist yet (weft node creates it)".to_string(),
            DataDir::Absent {
                creatable: false, ..
            } => "does not exist".to_string(),
        }
    }

    fn warning(&self, dir: &Path) -> Option<String> {
        let user = current_uid();
        match self {
            DataDir::Writable
            | DataDir::Absent {
                creatable: true, ..
            } => None,
            DataDir::ReadOnly => Some(format!(
                "data dir {} is not writable by this user (uid {user}): weft node fails at start unless it runs as a user that can write it",
                dir.display()
            )),
            DataDir::Absent {
                ancestor,
                creatable: false,
            } => Some(match ancestor {
                Some(a) => format!(
                    "data dir {} does not exist and this user (uid {user}) cannot create it ({} is not writable): create it for the node's user",
                    dir.display(),
                    a.display()
                ),
                None => format!(
                    "data dir {} does not exist and no ancestor of it does",
                    dir.display()
                ),
            }),
        }
    }
}

/// The uid this check runs as, for messages (from `/proc`, no unsafe call).
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".to_string())
}

/// Whether this user can create a file in `dir`: tried, not inferred from mode bits (ACLs,
/// read-only mounts and capabilities all decide it), with a file removed at once.
fn can_create_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".weft-check-config-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// The data directory's state; a path that exists and is not a directory is an error
/// (`weft node` cannot open its store there).
fn data_dir_state(dir: &Path) -> anyhow::Result<DataDir> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(if can_create_in(dir) {
            DataDir::Writable
        } else {
            DataDir::ReadOnly
        }),
        Ok(_) => anyhow::bail!(
            "config field `data_dir`: {} exists and is not a directory; weft node cannot keep its store there",
            dir.display()
        ),
        Err(_) => {
            // A relative path's last ancestor is the empty path: the working directory.
            let ancestor = dir
                .ancestors()
                .skip(1)
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        a
                    }
                })
                .find(|a| a.is_dir());
            Ok(DataDir::Absent {
                creatable: ancestor.is_some_and(can_create_in),
                ancestor: ancestor.map(Path::to_path_buf),
            })
        }
    }
}

/// Each listener bound for a moment on this host, as `weft node` will bind it: one in use
/// (a node already running, or another program) or naming an address this host does not
/// have would stop the node at start. Run on another host than the node's, these say
/// nothing about the node's host, hence warnings.
fn listener_warnings(c: &Resolved) -> Vec<String> {
    let l = &c.raw.listen;
    let mut binds: Vec<(&str, SocketAddr, bool)> = vec![
        ("listen.mesh", l.mesh, true),
        ("listen.http", l.http, false),
    ];
    if let Some(edge) = l.edge {
        binds.push(("listen.edge", edge, true));
    }
    binds
        .into_iter()
        .filter_map(|(field, addr, udp)| {
            let bound = if udp {
                UdpSocket::bind(addr).map(drop)
            } else {
                TcpListener::bind(addr).map(drop)
            };
            let e = bound.err()?;
            let proto = if udp { "UDP" } else { "TCP" };
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "is in use on this host (a node already running on it, or another program)"
                        .to_string()
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "is not an address of this host".to_string()
                }
                _ => format!("cannot be bound here: {e}"),
            };
            Some(format!(
                "`{field}` {addr} ({proto}) {why}: weft node on this host would fail to start"
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative data dir (a config given by a relative path) that does not exist yet is
    /// created in the working directory: creatable, not "no ancestor exists".
    #[test]
    fn a_relative_data_dir_is_creatable_in_the_working_directory() {
        let state = data_dir_state(Path::new("weft-check-config-absent-dir")).expect("state");
        assert!(
            matches!(
                state,
                DataDir::Absent {
                    creatable: true,
                    ..
                }
            ),
            "{}",
            state.describe()
        );
    }

    /// The bundle a node's store kept is read as committed, with the node's own store code;
    /// a data dir without a store yet has none.
    #[test]
    fn the_bundle_the_store_kept_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(stored_bundle(dir.path()).expect("no store"), None);
        let mut store =
            crate::store::SqliteStore::open(dir.path(), crate::store::StoreLimits::default())
                .expect("store");
        assert_eq!(stored_bundle(dir.path()).expect("none kept"), None);
        store
            .meta_set(policy_push::META_KEY, b"bundle bytes")
            .expect("set");
        store.commit().expect("commit");
        assert_eq!(
            stored_bundle(dir.path()).expect("kept"),
            Some(b"bundle bytes".to_vec())
        );
    }

    fn config(region: &str, cloud: &str, jurisdiction: &str) -> NodeConfig {
        let text = format!(
            r#"
name = "n"
region = "{region}"
cloud = "{cloud}"
jurisdiction = "{jurisdiction}"
key = "n.key"
data_dir = "data"
[listen]
mesh = "127.0.0.1:7400"
http = "127.0.0.1:8400"
"#
        );
        toml::from_str(&text).unwrap()
    }

    /// A config stream pattern that overlaps a stream rule keeping its streams to other
    /// regions is named, with the rule; inside the rule's regions, or apart from its
    /// pattern, nothing.
    #[test]
    fn streams_a_scope_keeps_from_this_region_are_named() {
        let bundle =
            weft_policy::Bundle::from_toml(include_str!("../../policy/examples/eu-retail.toml"))
                .unwrap();
        let policy = weft_policy::Policy::compile(&bundle).unwrap();
        let streams: Vec<weft_fabric::StreamPattern> = [">", "orders.*.ie", "payments.>"]
            .into_iter()
            .map(|p| weft_fabric::StreamPattern::new(p).unwrap())
            .collect();
        let w = scope_notes(&policy, &streams, "aws:us-east-1");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "streams pattern > overlaps the policy's stream rule streams[0] (orders.eu.>)"
            ) && w[0].contains("aws:eu-west-1, aws:eu-central-1")
                && w[1].starts_with("streams pattern orders.*.ie"),
            "{w:?}"
        );
        assert!(scope_notes(&policy, &streams, "aws:eu-west-1").is_empty());
    }

    #[test]
    fn placement_is_checked_against_the_catalog() {
        let catalog = regions::regions();
        assert!(
            placement_warnings(&config("aws:eu-west-1", "aws", "EU"), catalog).is_empty(),
            "the catalog's own placement"
        );
        let w = placement_warnings(&config("aws:eu-west-1", "aws", "US"), catalog);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`jurisdiction` is \"US\"") && w[0].contains("\"EU\""));
        let w = placement_warnings(&config("aws:eu-west-1", "gcp", "EU"), catalog);
        assert_eq!(
            w.len(),
            2,
            "the prefix and the catalog both disagree: {w:?}"
        );
        let w = placement_warnings(&config("aws:eu-wset-1", "aws", "EU"), catalog);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("not in the built-in catalog"), "{w:?}");
        // A custom region without a cloud prefix: only the catalog note.
        let w = placement_warnings(&config("dc-frankfurt", "onprem", "EU"), catalog);
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn the_data_dir_is_probed_not_inferred() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(data_dir_state(tmp.path()).unwrap(), DataDir::Writable);
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "the probe file is removed"
        );
        let absent = tmp.path().join("a/b");
        assert_eq!(
            data_dir_state(&absent).unwrap(),
            DataDir::Absent {
                ancestor: Some(tmp.path().to_path_buf()),
                creatable: true
            }
        );
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = data_dir_state(&file).unwrap_err().to_string();
        assert!(
            e.contains("data_dir") && e.contains("not a directory"),
            "{e}"
        );
        // A directory this user cannot write (unless it is root, which can).
        use std::os::unix::fs::PermissionsExt as _;
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        if !can_create_in(&ro) {
            assert_eq!(data_dir_state(&ro).unwrap(), DataDir::ReadOnly);
            let w = DataDir::ReadOnly.warning(&ro).unwrap();
            assert!(w.contains("not writable"), "{w}");
            assert!(matches!(
                data_dir_state(&ro.join("sub")).unwrap(),
                DataDir::Absent {
                    creatable: false,
                    ..
                }
            ));
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}
