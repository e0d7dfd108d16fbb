//! Secrets at rest: AES-256-GCM under a key-encryption key kept in the state directory.
//!
//! Sealed format (version 1):
//!
//! ```text
//!   +------+----------------+----------------------+-----------+
//!   | 0x01 | nonce (12 B)   | ciphertext (n B)     | tag (16 B)|
//!   +------+----------------+----------------------+-----------+
//!   associated data authenticated with it = 0x01 || caller's aad
//! ```
//!
//! Nonces are random (96 bits from the system RNG): safe for up to about 2^32 seals under
//! one key, far beyond the number of provider credentials a gateway holds. The version byte
//! is authenticated, so it cannot be swapped to downgrade the format later.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Result, StoreError};
use crate::fsutil::{self, GROUP_OR_OTHER, HINT_WRITABLE};

const FORMAT_V1: u8 = 1;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// Seals and opens secrets (provider credentials) with AES-256-GCM.
///
/// The gateway seals each provider's credentials with `aad` = the provider id, so a sealed
/// blob copied onto another provider does not open. Neither the key nor plaintexts are
/// ever logged or shown by `Debug`.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox { key: <redacted> }")
    }
}

impl SecretBox {
    /// Where the key-encryption key of `state_dir` lives:
    /// `<state_dir>/credentials/key-encryption-key.bin`.
    pub fn key_path(state_dir: &Path) -> PathBuf {
        state_dir.join("credentials").join("key-encryption-key.bin")
    }

    /// Loads the key-encryption key of `state_dir`, creating it on first use: 32 random
    /// bytes in a 0600 file inside a 0700 `credentials` directory. Concurrent first uses
    /// agree on one key.
    ///
    /// Refuses a key file that group or others may access ([`StoreError::InsecurePermissions`],
    /// with the `chmod` that fixes it) and one that is not exactly 32 bytes
    /// ([`StoreError::InvalidKey`]). Blocks on file I/O.
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let path = SecretBox::key_path(state_dir);
        let dir = path.parent().unwrap_or(state_dir);
        fsutil::ensure_private_dir(dir)?;
        if !path.exists() {
            let rng = SystemRandom::new();
            let mut key = [0u8; KEY_LEN];
            rng.fill(&mut key).map_err(|_| {
                StoreError::Crypto(
                    "cannot create the key-encryption key: the system random number generator \
                     failed"
                        .to_owned(),
                )
            })?;
            let created = fsutil::write_private_file_once(&path, &key);
            wipe(&mut key);
            if created? {
                tracing::info!(path = %path.display(), "created key-encryption key");
            }
        }
        SecretBox::from_key_file(&path)
    }

    /// Loads an existing key file, with the same checks as
    /// [`load_or_create`](Self::load_or_create).
    pub fn from_key_file(path: &Path) -> Result<Self> {
        let io_err = |action| {
            move |source| StoreError::Io {
                action,
                path: path.to_owned(),
                hint: HINT_WRITABLE,
                source,
            }
        };
        let file = File::open(path).map_err(io_err("open key-encryption key"))?;
        let meta = file
            .metadata()
            .map_err(io_err("inspect key-encryption key"))?;
        if !meta.is_file() {
            return Err(StoreError::InvalidKey {
                path: path.to_owned(),
                reason: "it is not a regular file".to_owned(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & GROUP_OR_OTHER != 0 {
            return Err(StoreError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        // Read one byte more than a key, to tell "too long" from "exactly right".
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        let read = file
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read key-encryption key"));
        let result = match read {
            Err(e) => Err(e),
            Ok(_) if bytes.len() != KEY_LEN => Err(StoreError::InvalidKey {
                path: path.to_owned(),
                reason: if bytes.len() > KEY_LEN {
                    format!("it is longer than {KEY_LEN} bytes")
                } else {
                    format!("it is {} bytes long, expected {KEY_LEN}", bytes.len())
                },
            }),
            Ok(_) => SecretBox::from_key_bytes(&bytes),
        };
        wipe(&mut bytes);
        result
    }

    /// A box around a key from elsewhere (an environment variable, a secret manager).
    /// `key` must be 32 bytes.
    pub fn from_key_bytes(key: &[u8]) -> Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| {
            StoreError::Crypto(format!(
                "an AES-256-GCM key must be {KEY_LEN} bytes, got {}",
                key.len()
            ))
        })?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// Encrypts and authenticates `plaintext`, binding it to `aad` (which is not stored:
    /// the same `aad` must be given to [`open`](Self::open)).
    ///
    /// Fails only if the system random number generator fails, which a server must report
    /// rather than panic on.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| {
            StoreError::Crypto(
                "cannot seal secret: the system random number generator failed".to_owned(),
            )
        })?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_aad(FORMAT_V1, aad)),
                &mut sealed[HEADER_LEN..],
            )
            .map_err(|_| {
                wipe(&mut sealed);
                StoreError::Crypto("cannot seal secret: it is too large".to_owned())
            })?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// Checks and decrypts what [`seal`](Self::seal) produced with the same `aad`. Any
    /// tampering, another key or another `aad` fails with [`StoreError::Crypto`].
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < HEADER_LEN + TAG_LEN {
            return Err(StoreError::Crypto(format!(
                "cannot open sealed secret: {} bytes is shorter than any sealed value; it was \
                 truncated or is not a sealed secret",
                sealed.len()
            )));
        }
        if sealed[0] != FORMAT_V1 {
            return Err(StoreError::Crypto(format!(
                "cannot open sealed secret: unknown format version {}; it was sealed by a \
                 newer gateway or is corrupt",
                sealed[0]
            )));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..HEADER_LEN]);
        let mut buf = sealed[HEADER_LEN..].to_vec();
        let opened = self.key.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(bound_aad(FORMAT_V1, aad)),
            &mut buf,
        );
        match opened {
            Ok(plaintext) => {
                let len = plaintext.len();
                buf.truncate(len);
                Ok(buf)
            }
            Err(_) => {
                // ring leaves the buffer in an unspecified state on failure.
                wipe(&mut buf);
                Err(StoreError::Crypto(
                    "cannot open sealed secret: authentication failed (sealed with another key \
                     or for other associated data, or modified since)"
                        .to_owned(),
                ))
            }
        }
    }
}

fn bound_aad(version: u8, aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + aad.len());
    bound.push(version);
    bound.extend_from_slice(aad);
    bound
}

/// Best-effort erasure of key bytes or plaintext before a buffer is freed. `black_box`
/// keeps the compiler from proving the writes dead; copies made elsewhere are not covered.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&*buf);
}

#[cfg(test)]
mod tests;
