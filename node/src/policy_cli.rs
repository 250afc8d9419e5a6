//! `weft policy sign` and `weft policy verify`: the operator's side of policy bundles
//! (docs/policy.md). Signing turns a TOML bundle into the canonical signed CBOR a node
//! applies, with one signature per operator key (k of n are needed); verifying checks a
//! signed bundle exactly as a node will, and says why it would refuse it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use weft_policy::{Bundle, SignedBundle, Trust, verify_bundle};

/// `weft policy sign`: signs `bundle` (TOML) with every key, or adds the keys' signatures
/// to the signed bundle `add_to`, and writes the signed CBOR to `out`. With both, the
/// signed bundle must carry exactly the TOML's bundle (the co-signer's review): a second
/// operator signs what they read, not bytes someone handed them. Either way what is signed
/// is summarized first.
pub(crate) fn sign(
    bundle: Option<&Path>,
    add_to: Option<&Path>,
    keys: &[PathBuf],
    out: &Path,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        bail!("give at least one operator key (--key PATH, from `weft keygen --out PATH`)");
    }
    let reviewed = match bundle {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading bundle {}", path.display()))?;
            let bundle = Bundle::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("bundle {}: {e}", path.display()))?;
            Some((
                path,
                SignedBundle::new(&bundle)
                    .map_err(|e| anyhow::anyhow!("bundle {}: {e}", path.display()))?,
            ))
        }
        None => None,
    };
    let mut signed = match (reviewed, add_to) {
        (Some((_, fresh)), None) => fresh,
        (reviewed, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading signed bundle {}", path.display()))?;
            let held = SignedBundle::decode(&bytes)
                .map_err(|e| anyhow::anyhow!("signed bundle {}: {e}", path.display()))?;
            match reviewed {
                Some((toml, fresh)) if fresh.bundle != held.bundle => bail!(
                    "{} does not carry the bundle of {}: not signed (the signed bundle's epoch {}, the TOML's {}; compare them with `weft policy verify`)",
                    path.display(),
                    toml.display(),
                    epoch_of(&held.bundle),
                    epoch_of(&fresh.bundle)
                ),
                Some(_) => {}
                None => say!(
                    "note: not compared with a TOML bundle you reviewed (give it as BUNDLE to check that this is what you sign)"
                ),
            }
            held
        }
        (None, None) => {
            bail!("give a TOML bundle to sign, or --add-to SIGNED (with the TOML you reviewed)")
        }
    };
    let inner = Bundle::from_cbor(&signed.bundle)
        .map_err(|e| anyhow::anyhow!("the bundle to sign does not decode: {e}"))?;
    say!(
        "signing epoch {}{}",
        inner.epoch,
        inner
            .description
            .as_deref()
            .map_or(String::new(), |d| format!(": {d}"))
    );
    say!("  {}", summary(&inner));
    warn_deny_lists(&inner);
    warn_scoped_targets(&inner);
    let mut added = 0;
    for key in keys {
        let signing = SigningKey::from_bytes(&crate::keys::load(key)?);
        let signer = signing.verifying_key().to_bytes();
        if signed.signatures.iter().any(|(s, _)| *s == signer) {
            say!(
                "note: {} ({}) had already signed this bundle: no signature added for it",
                key.display(),
                hex::encode(signer)
            );
            continue;
        }
        signed.add_signature(&signing);
        added += 1;
    }
    if added == 0 {
        // Every key had signed (a repeated --key, or --add-to with one's own signed
        // output): nothing new to write. Not an error, so re-running a signing step is
        // harmless, but it says so.
        say!(
            "nothing added: {} still has {} signature(s); the next operator must sign with their own key",
            add_to.unwrap_or(out).display(),
            signed.signatures.len()
        );
        // With another --out it is written anyway, so a script's next step finds it.
        if add_to.is_none_or(|a| a == out) {
            return Ok(());
        }
    }
    let bytes = signed.encode();
    if out.exists() && add_to != Some(out) {
        bail!("{} exists; choose another --out", out.display());
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    say!(
        "signed bundle: {} ({} bytes, {} signature(s))",
        out.display(),
        bytes.len(),
        signed.signatures.len()
    );
    for (signer, _) in &signed.signatures {
        say!("  signer {}", hex::encode(signer));
    }
    Ok(())
}

/// `weft policy verify`: checks `path` as a node trusting `operators` with `threshold`
/// and policy epoch `epoch` in force would, and prints what the bundle holds.
pub(crate) fn verify(
    path: &Path,
    operators: &[String],
    threshold: usize,
    epoch: u64,
) -> anyhow::Result<()> {
    let mut keys = Vec::with_capacity(operators.len());
    for (i, k) in operators.iter().enumerate() {
        keys.push(crate::config::hex32(&format!("--operator[{i}]"), k)?);
    }
    let trust = Trust::new(keys, threshold).map_err(|e| anyhow::anyhow!("trust: {e}"))?;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading signed bundle {}", path.display()))?;
    let verified =
        verify_bundle(&bytes, &trust, epoch).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    let b = verified.policy.bundle();
    say!("valid: epoch {} ({} bytes)", b.epoch, bytes.len());
    for s in &verified.signers {
        say!("  signed by {}", hex::encode(s));
    }
    say!("  {}", summary(b));
    warn_deny_lists(b);
    warn_scoped_targets(b);
    Ok(())
}

/// Names each field transform that is a deny list (no `keep`): it copies every field it
/// does not drop, hash or mask onto its target, a field its producers add later included;
/// each that hashes with a salt from the bundle (no `hash_key`); and each aggregate that
/// publishes groups of any size (no `min_count`). Warnings, not refusals: such bundles
/// were valid before `keep`, `hash_key` and `min_count` existed. A transform that hashes
/// under a `hash_key` gets a note: the key must reach the ingress nodes by their own
/// configuration.
fn warn_deny_lists(b: &Bundle) {
    for (name, t) in &b.transforms {
        if t.aggregate
            .as_ref()
            .is_some_and(|a| a.min_count.unwrap_or(1) < 2)
        {
            say!(
                "  warning: transform {name} publishes groups of any size to {} (class {}): a group of one is one event's own figures; set aggregate.min_count (docs/policy.md §7)",
                t.target,
                t.classification
            );
        }
        match &t.hash_key {
            None if !t.hash.is_empty() => say!(
                "  warning: transform {name} hashes with a salt carried in the bundle, which every node holds: anyone with the bundle and the derived data can test guesses against the hashes; name a node-local key with `hash_key` (docs/policy.md §7)"
            ),
            // Not a warning: what the operator must do besides signing.
            Some(key) => say!(
                "  note: transform {name} hashes under the node-local key {key}: give it to every node that takes {} in ([egress.hash_keys], docs/config.md); a node without it derives nothing",
                t.source
            ),
            None => {}
        }
        if t.aggregate.is_none() && t.keep.is_empty() {
            say!(
                "  warning: transform {name} copies to {} (class {}) every field of {} it does not drop, hash or mask, fields added later included; name what it carries with `keep` (docs/policy.md §7)",
                t.target,
                t.classification,
                t.source
            );
        }
    }
}

/// Names each transform whose target stream a `replication = "regions"` rule keeps to some
/// regions: derivatives are made on the node that takes the source in, and one outside
/// those regions may not hold them, so it derives nothing (an egress failure,
/// `residency_ingress`). A warning: sources published only inside the regions are fine.
fn warn_scoped_targets(b: &Bundle) {
    let Ok(policy) = weft_policy::Policy::compile(b) else {
        return; // refused elsewhere, with the reason
    };
    for (name, t) in &b.transforms {
        let Ok(target) = weft_fabric::StreamName::new(&t.target) else {
            continue;
        };
        if let Some(rule) = policy
            .stream_rule(&target)
            .filter(|r| r.replication == weft_policy::ReplicationScope::Regions)
        {
            say!(
                "  warning: transform {name} derives into {}, which stream rule streams[{}] keeps to regions {}: a node elsewhere that takes in {} derives nothing (egress failure residency_ingress; docs/policy.md §6.3)",
                t.target,
                rule.index,
                rule.regions.iter().cloned().collect::<Vec<_>>().join(", "),
                t.source
            );
        }
    }
}

/// `weft policy where`: where events of `stream` may be held under the bundle at `path`
/// (TOML, or signed CBOR, not verified), stamped with `classification` or the stream
/// rule's.
pub(crate) fn where_held(
    path: &Path,
    stream: &str,
    classification: Option<&str>,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading bundle {}", path.display()))?;
    let bundle = match SignedBundle::decode(&bytes) {
        Ok(signed) => Bundle::from_cbor(&signed.bundle)
            .map_err(|e| anyhow::anyhow!("signed bundle {}: {e}", path.display()))?,
        Err(_) => {
            let text = String::from_utf8(bytes).with_context(|| {
                format!("{}: neither a signed bundle nor TOML text", path.display())
            })?;
            Bundle::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    let policy = weft_policy::Policy::compile(&bundle)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let name = weft_fabric::StreamName::new(stream)
        .map_err(|e| anyhow::anyhow!("stream {stream:?}: {e}"))?;
    let stamp = policy
        .stamp(&name, classification, &weft_fabric::Residency::Unrestricted)
        .map_err(|r| anyhow::anyhow!("stream {stream}: {r}"))?;
    say!("stream {stream} under policy epoch {}:", policy.epoch());
    match policy.stream_rule(&name).filter(|_| !name.is_system()) {
        Some(rule) => say!(
            "  stream rule streams[{}] ({}): class {}, replication {}{}",
            rule.index,
            bundle.streams[rule.index].pattern,
            rule.classification,
            match rule.replication {
                weft_policy::ReplicationScope::All => "all",
                weft_policy::ReplicationScope::Interest => "interest",
                weft_policy::ReplicationScope::Regions => "regions",
            },
            if rule.regions.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    rule.regions.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ),
        None if name.is_system() => say!("  a system stream: its events follow their own stamp"),
        None => say!("  no stream rule matches: published with a classification it names"),
    }
    let narrowed = policy
        .stream_rule(&name)
        .filter(|r| !name.is_system() && r.classification != stamp.classification)
        .map_or(String::new(), |r| {
            format!(
                "; the stream rule's class {} narrows it where it restricts more",
                r.classification
            )
        });
    say!(
        "  stamped class {} (residency {}{narrowed})",
        stamp.classification,
        weft_policy::residency_text(&stamp.residency)
    );
    match policy.regions_that_may_hold(&name, &stamp.classification, &stamp.residency) {
        None => say!("  held in clear by every node (no residency, no replication scope)"),
        Some(regions) if regions.is_empty() => say!("  held in clear by no node"),
        Some(regions) => say!(
            "  held in clear only in {} region(s): {} (ack=regions:{} at most)",
            regions.len(),
            regions.iter().copied().collect::<Vec<_>>().join(", "),
            regions.len()
        ),
    }
    Ok(())
}

/// What a bundle holds, counted, on one line.
fn summary(b: &Bundle) -> String {
    format!(
        "{} jurisdictions, {} tenants, {} roles, {} principals, {} access rules, {} classes, \
         {} stream rules, {} transforms, {} rate limits, {} devices",
        b.jurisdictions.len(),
        b.tenants.len(),
        b.roles.len(),
        b.principals.len(),
        b.access.len(),
        b.classes.len(),
        b.streams.len(),
        b.transforms.len(),
        b.limits.len(),
        b.devices.len()
    )
}

/// The epoch of canonical bundle bytes, for an error message ("?" if they do not decode).
fn epoch_of(bundle: &[u8]) -> String {
    Bundle::from_cbor(bundle).map_or_else(|_| "?".into(), |b| b.epoch.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyfile(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        crate::keys::generate(&p).expect("keygen");
        p
    }

    const BUNDLE: &str = "format = 1\nepoch = 3\n[jurisdictions.EU]\nregions = [\"aws:eu-west-1\"]\n[classes.public]\nanywhere = true\n";

    /// `--add-to` with a key that already signed adds nothing, leaves the file as it was
    /// and succeeds; a new key adds its signature.
    #[test]
    fn add_to_with_a_key_that_already_signed_adds_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (keyfile(dir.path(), "a.key"), keyfile(dir.path(), "b.key"));
        let toml = dir.path().join("b.toml");
        std::fs::write(&toml, BUNDLE).expect("write");
        let out = dir.path().join("b.cbor");
        sign(Some(&toml), None, std::slice::from_ref(&a), &out).expect("sign");
        let before = std::fs::read(&out).expect("read");
        sign(Some(&toml), Some(&out), std::slice::from_ref(&a), &out).expect("again");
        assert_eq!(std::fs::read(&out).expect("read"), before, "rewritten");
        sign(Some(&toml), Some(&out), &[a, b], &out).expect("co-sign");
        let signed = SignedBundle::decode(&std::fs::read(&out).expect("read")).expect("decode");
        assert_eq!(signed.signatures.len(), 2);
    }

    /// Messages a user sees: no Rust debug text for garbage CBOR, a TOML syntax error
    /// with its line and column, a residency set as its codes.
    #[test]
    fn bundle_errors_read_as_words() {
        let e = SignedBundle::decode(b"\x82\x63ab")
            .expect_err("truncated")
            .to_string();
        assert!(!e.contains("Eof") && !e.contains("``"), "{e}");
        assert!(e.contains("truncated") && e.contains("byte"), "{e}");
        let e = SignedBundle::decode(&[0xff, 0x00])
            .expect_err("junk")
            .to_string();
        assert!(e.contains("not valid CBOR at byte 0"), "{e}");
        let e = Bundle::from_toml("format = 1\nepoch = = 3\n")
            .expect_err("syntax")
            .to_string();
        assert!(
            e.contains("not valid TOML") && e.contains("line 2, column"),
            "{e}"
        );
        let e = Bundle::from_toml("format = 1\nepoch = \"x\"\n")
            .expect_err("type")
            .to_string();
        assert!(e.contains("bundle field `epoch`"), "{e}");
        let r = weft_fabric::Residency::only(["EU"]).expect("residency");
        assert_eq!(weft_policy::residency_text(&r), "EU");
        let r = weft_fabric::Residency::only(["US", "EU"]).expect("residency");
        assert_eq!(weft_policy::residency_text(&r), "EU, US");
    }
}
