//! Read cursors as opaque tokens (`weft-next-cursor`, each event's `weftcursor`, the SSE
//! `id`, `?after=`, `Last-Event-ID`, a durable subscription's `ack?cursor=`).
//!
//! A cursor names a position in this node's log, which holds every stream's events in one
//! sequence. Handed out as the number it is, it told a reader what it may not know: the
//! gap between two events it reads is how many events of other streams, or of its own
//! stream that it may not read (another tenant's, a denied classification), arrived in
//! between, and a page's cursor moving with no event in it said that such events came.
//! A token is the position sealed with XChaCha20-Poly1305 under a key only this node
//! holds, with a fresh random nonce each time and the stream as associated data: it
//! shows nothing of the position, two tokens for one position differ, and the node takes
//! back only its own tokens, for the stream they were given for (one from another node,
//! where positions mean something else, is refused instead of read as a wrong place).
//!
//! The key is 32 random bytes in `cursor.key` in the data directory (mode 0600), made at
//! the first start: tokens outlive restarts, as the positions they seal do. `0` stays the
//! one plain cursor: the start of the log, which tells nothing.
//!
//! Nonces: a counter run through SHA-256 keyed with 32 bytes drawn from the OS at each
//! start (hand-written, a few lines: the nonce must not repeat under the key, which the
//! counter rules out within a run and the fresh 32-byte hash key across runs, up to a
//! 2^-96-scale collision; must not show how many tokens the node gave, which the keyed
//! hash hides; and costs no system call per token, where a page seals up to thousands).

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest as _;

/// The key's file in the data directory.
pub(crate) const KEY_FILE: &str = "cursor.key";
/// Nonce, sealed position and tag: 48 bytes, 64 characters of base64url.
const NONCE_LEN: usize = 24;
const TOKEN_LEN: usize = NONCE_LEN + 8 + 16;
/// Associated data: a version, then the stream the token was given for.
const AAD_PREFIX: &[u8] = b"weft-cursor-v1\0";

/// Why a cursor was refused (the API answers 400 `bad_cursor` with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    #[error(
        "not a cursor: cursors are the tokens this node gives (weft-next-cursor, weftcursor, the SSE id), or 0 for the start (last=N starts with the newest N events)"
    )]
    Malformed,
    #[error(
        "not a cursor this node gave for {what} {stream}: a token from another node, another stream or pattern, or altered (0 reads from the start)",
        what = if stream.contains(['*', '>']) { "pattern" } else { "stream" }
    )]
    NotOurs { stream: String },
}

/// Seals and opens cursors under this node's key.
pub(crate) struct Cursors {
    cipher: XChaCha20Poly1305,
    /// Keys the nonce hash (drawn at start, never written anywhere).
    nonce_key: [u8; 32],
    /// Tokens sealed since start: each nonce hashes a number never used before.
    sealed: AtomicU64,
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cursors(..)")
    }
}

impl Cursors {
    /// Cursors under `key`.
    pub(crate) fn from_key(key: [u8; 32]) -> anyhow::Result<Self> {
        Ok(Cursors {
            cipher: XChaCha20Poly1305::new(&key.into()),
            nonce_key: crate::keys::random32()?,
            sealed: AtomicU64::new(0),
        })
    }

    /// Cursors under the key in `data_dir`, made there (mode 0600) if there is none yet.
    /// A key file others may read is refused, as a node's secret key is.
    pub(crate) fn open_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::from_key(create_key(data_dir)?);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The mode of the file read, not of whatever the path names a moment later.
        let mode = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} may be read by others (mode {:o}): it keeps read cursors opaque; chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        let key = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| {
                format!(
                    "{}: not 64 hex characters (delete it to make a new key; cursors given before stop working)",
                    path.display()
                )
            })?;
        Self::from_key(key)
    }

    /// The token for position `pos` of `stream`'s reads.
    pub(crate) fn seal(&self, stream: &str, pos: u64) -> String {
        let n = self.sealed.fetch_add(1, Ordering::Relaxed);
        let hash = sha2::Sha256::new()
            .chain_update(self.nonce_key)
            .chain_update(n.to_be_bytes())
            .finalize();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&hash[..NONCE_LEN]);
        let sealed = match self.cipher.encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &pos.to_be_bytes(),
                aad: &aad(stream),
            },
        ) {
            Ok(ct) => ct,
            // Encryption fails only for plaintexts over 256 GiB: this one is 8 bytes.
            Err(e) => unreachable!("XChaCha20-Poly1305 refused 8 bytes: {e}"),
        };
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    }

    /// The position a token given for `stream` seals; `0` is the start.
    pub(crate) fn open(&self, stream: &str, token: &str) -> Result<u64, CursorError> {
        if token == "0" {
            return Ok(0);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != TOKEN_LEN {
            return Err(CursorError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CursorError::Malformed)?;
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(stream),
                },
            )
            .map_err(|_| CursorError::NotOurs {
                stream: stream.to_string(),
            })?;
        let pos: [u8; 8] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CursorError::Malformed)?;
        Ok(u64::from_be_bytes(pos))
    }
}

/// Writes a fresh key to `data_dir`'s [`KEY_FILE`] whole or not at all: a temporary file
/// (mode 0600) written and synced, renamed over, the directory synced (a crash midway
/// leaves no empty key file that would stop the next start).
fn create_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let key = crate::keys::random32()?;
    crate::keys::replace_private(
        data_dir,
        KEY_FILE,
        format!("{}\n", hex::encode(key)).as_bytes(),
    )?;
    Ok(key)
}

fn aad(stream: &str) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(stream.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gives_back_its_position_and_shows_nothing_of_it() {
        let c = Cursors::from_key([7; 32]).unwrap();
        for pos in [0, 1, 2, 1_000_000, u64::MAX] {
            let a = c.seal("orders", pos);
            let b = c.seal("orders", pos);
            assert_ne!(a, b, "a fresh nonce each time");
            assert_eq!(a.len(), 64);
            assert_eq!(c.open("orders", &a), Ok(pos));
            assert_eq!(c.open("orders", &b), Ok(pos));
        }
        assert_eq!(c.open("orders", "0"), Ok(0));
    }

    #[test]
    fn a_token_is_refused_for_another_stream_another_node_or_altered() {
        let c = Cursors::from_key([7; 32]).unwrap();
        let t = c.seal("orders", 42);
        let not_ours = Err(CursorError::NotOurs {
            stream: "payments".into(),
        });
        assert_eq!(c.open("payments", &t), not_ours);
        let other = Cursors::from_key([8; 32]).unwrap();
        assert!(matches!(
            other.open("orders", &t),
            Err(CursorError::NotOurs { .. })
        ));
        // One character changed (the last one carries only tag bits in its high part).
        let mut bytes = t.into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            c.open("orders", &altered),
            Err(CursorError::NotOurs { .. })
        ));
        for bad in [
            "",
            "42",
            "-1",
            "abc",
            "!!!!",
            &"A".repeat(63),
            &"A".repeat(65),
        ] {
            assert_eq!(
                c.open("orders", bad),
                Err(CursorError::Malformed),
                "{bad:?}"
            );
        }
    }

    /// A measurement, not a check of speed (`cargo test --release -p weft-node --bin weft
    /// measure_ -- --ignored --nocapture`): what a token costs a read (each event of a page
    /// gets one).
    #[test]
    #[ignore = "a measurement: prints timings, run by hand"]
    fn measure_cursor_seal_and_open() {
        let c = Cursors::from_key([7; 32]).unwrap();
        let n = 100_000u64;
        let t = std::time::Instant::now();
        let tokens: Vec<String> = (0..n).map(|p| c.seal("orders.eu", p)).collect();
        let seal = t.elapsed();
        let t = std::time::Instant::now();
        let back: u64 = tokens.iter().map(|k| c.open("orders.eu", k).unwrap()).sum();
        let open = t.elapsed();
        assert_eq!(back, n * (n - 1) / 2);
        println!(
            "seal {:.2} us, open {:.2} us a token ({n} each)",
            seal.as_secs_f64() * 1e6 / n as f64,
            open.as_secs_f64() * 1e6 / n as f64
        );
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cursors::open_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = a.seal("s", 9);
        let b = Cursors::open_or_create(dir.path()).unwrap();
        assert_eq!(b.open("s", &t), Ok(9), "the same key after a restart");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Cursors::open_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "xyz\n").unwrap();
        let err = Cursors::open_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("64 hex"), "{err}");
    }
}
