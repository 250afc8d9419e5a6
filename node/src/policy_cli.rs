//! `weft policy sign` and `weft policy verify`: the operator's side of policy bundles
//! (docs/policy.md). Signing turns a TOML bundle into the canonical signed CBOR a node
//! applies, with one signature per operator key (k of n are needed); verifying checks a
//! signed bundle exactly as a node will, and says why it would refuse it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use weft_policy::{Bundle, SignedBundle, Trust, verify_bundle};

/// `weft policy sign`: signs `bundle` (TOML) with every key, or adds the keys' signatures
/// to the signed bundle `add_to`, and writes the signed CBOR to `out`.
pub(crate) fn sign(
    bundle: Option<&Path>,
    add_to: Option<&Path>,
    keys: &[PathBuf],
    out: &Path,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        bail!("give at least one operator key (--key PATH, from `weft keygen --out PATH`)");
    }
    let mut signed = match (bundle, add_to) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading bundle {}", path.display()))?;
            let bundle = Bundle::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("bundle {}: {e}", path.display()))?;
            SignedBundle::new(&bundle)
                .map_err(|e| anyhow::anyhow!("bundle {}: {e}", path.display()))?
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading signed bundle {}", path.display()))?;
            SignedBundle::decode(&bytes)
                .map_err(|e| anyhow::anyhow!("signed bundle {}: {e}", path.display()))?
        }
        _ => bail!("give either a TOML bundle or --add-to SIGNED (not both)"),
    };
    for key in keys {
        let secret = crate::keys::load(key)?;
        signed.add_signature(&SigningKey::from_bytes(&secret));
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
    say!(
        "  {} jurisdictions, {} tenants, {} roles, {} principals, {} access rules, {} classes, \
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
    );
    Ok(())
}
