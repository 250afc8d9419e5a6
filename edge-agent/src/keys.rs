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
/// A systemd credential (a file under `$CREDENTIALS_DIRECTORY`, from `LoadCredential=`) may
/// show group bits: newer systemd grants the service user access with an ACL, whose mask
/// is the group bits (mode 0440), in a directory only that service can read; other bits
/// are refused there too.
pub fn load(path: &Path) -> anyhow::Result<[u8; 32]> {
    load_in(path, std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
}

/// [`load`] with the credentials directory given.
fn load_in(path: &Path, credentials: Option<&std::ffi::OsStr>) -> anyhow::Result<[u8; 32]> {
    let meta = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "key file {} is a directory: name the key file itself (weft keygen --out PATH writes one)",
            path.display()
        );
    }
    let credential =
        credentials.is_some_and(|dir| !dir.is_empty() && path.starts_with(Path::new(dir)));
    let forbidden = if credential { 0o007 } else { 0o077 };
    if meta.permissions().mode() & forbidden != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A key readable by its group is refused, unless it is a systemd credential (newer
    /// systemd shows the ACL it grants the service user as group bits); a key others can
    /// read is refused everywhere.
    #[test]
    fn group_bits_are_allowed_for_systemd_credentials_only() {
        let dir = std::env::temp_dir().join(format!("weft-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let seed = generate(&path).unwrap();
        let chmod = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        assert_eq!(load_in(&path, None).unwrap(), seed);
        chmod(0o440);
        let e = load_in(&path, None).unwrap_err().to_string();
        assert!(e.contains("readable by others") && e.contains("440"), "{e}");
        assert_eq!(load_in(&path, Some(dir.as_os_str())).unwrap(), seed);
        let elsewhere = std::env::temp_dir().join("elsewhere");
        assert!(load_in(&path, Some(elsewhere.as_os_str())).is_err());
        chmod(0o444);
        assert!(load_in(&path, Some(dir.as_os_str())).is_err());
        // A directory named as the key: said so, not taken for a key others may read.
        let e = load_in(&dir, None).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
