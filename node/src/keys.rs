//! Key files: Ed25519 secret keys as PKCS#8 PEM (RFC 8410; `openssl pkey` reads them),
//! written with file mode 0600, and bearer tokens for HTTP clients.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use sha2::Digest as _;
use weft_fabric::Signer;

/// 32 bytes from the operating system's random source.
pub(crate) fn random32() -> anyhow::Result<[u8; 32]> {
    weft_agent::keys::random32()
}

/// Writes `text` to a new file readable by its owner only; refuses to overwrite.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `dir`'s file `name` with `bytes`, readable by its owner only, whole or not at
/// all: a temporary file (made afresh: the mode is set at creation) written and synced,
/// renamed over it, the directory synced. A crash midway leaves the old file or the new
/// one, never a torn or empty one.
pub(crate) fn replace_private(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Writes a fresh Ed25519 secret key to `path` (PEM, mode 0600); returns its signer. The
/// file format is `weft_agent::keys`' (one implementation for nodes and devices).
pub(crate) fn generate(path: &Path) -> anyhow::Result<Signer> {
    weft_agent::keys::generate(path).map(|seed| Signer::from_secret(&seed))
}

/// Writes a fresh bearer token to `path` (mode 0600); returns (token, hex SHA-256).
pub(crate) fn generate_token(path: &Path) -> anyhow::Result<(String, String)> {
    let token = format!("weft_{}", hex::encode(random32()?));
    write_private(path, &format!("{token}\n"))?;
    Ok((token.clone(), token_hash_hex(&token)))
}

/// Hex SHA-256 of a bearer token, as the config stores it.
pub(crate) fn token_hash_hex(token: &str) -> String {
    hex::encode(token_hash(token))
}

/// SHA-256 of a bearer token.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Reads an Ed25519 secret key written by [`generate`]; refuses a file others can read.
pub(crate) fn load(path: &Path) -> anyhow::Result<[u8; 32]> {
    weft_agent::keys::load(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_generated_key_loads_back_and_is_private() {
        let dir = std::env::temp_dir().join(format!("weft-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let signer = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let seed = load(&path).unwrap();
        assert_eq!(Signer::from_secret(&seed).origin(), signer.origin());
        // No overwrite.
        assert!(generate(&path).is_err());
        // Others may not read it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", load(&path).unwrap_err()).contains("chmod 600"));
        let tpath = dir.join("client.token");
        let _ = std::fs::remove_file(&tpath);
        let (token, hash) = generate_token(&tpath).unwrap();
        assert_eq!(token_hash_hex(&token), hash);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
