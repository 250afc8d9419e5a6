//! Ed25519 key files: a secret key as PKCS#8 PEM (RFC 8410), mode 0600. The one
//! implementation of the format: device keys here, and the node's keys (`weft keygen`)
//! through `weft-node`'s `keys.rs`, so `openssl pkey`, the node and the agent read each
//! other's files.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7): the 32 seed bytes follow.
pub(crate) const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// 32 bytes from the operating system's random source.
pub fn random32() -> anyhow::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
    Ok(b)
}

/// Writes a fresh key to `path` (refuses to overwrite); returns the seed.
pub fn generate(path: &Path) -> anyhow::Result<[u8; 32]> {
    let seed = random32()?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(format!("{PEM_BEGIN}\n{b64}\n{PEM_END}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(seed)
}

/// Reads a key written by [`generate`] (or `weft keygen`); refuses a file others can read.
pub fn load(path: &Path) -> anyhow::Result<[u8; 32]> {
    let meta = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "key file {} is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != PEM_BEGIN)
        .skip(1)
        .take_while(|l| *l != PEM_END)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .with_context(|| format!("{}: not a PEM private key", path.display()))?;
    let seed = der
        .strip_prefix(&ED25519_PKCS8_PREFIX[..])
        .filter(|s| s.len() == 32)
        .with_context(|| format!("{}: not an Ed25519 PKCS#8 key", path.display()))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(seed);
    Ok(out)
}
