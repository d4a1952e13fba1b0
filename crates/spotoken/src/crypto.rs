//! Encryption at rest (invariant 4 in docs/ARCHITECTURE.md).
//!
//! Every secret the store keeps is sealed with XChaCha20-Poly1305 into an
//! envelope `version ‖ key id ‖ nonce ‖ ciphertext+tag`. The associated data
//! binds the ciphertext to its account and field, so a ciphertext copied to
//! another account or field fails to open; a token row's secrets (envelope
//! version 2) are also bound to the row version they were written with, so a
//! ciphertext from an older row does not open in a newer one (a rollback of
//! one field by someone who can write to the database). Envelopes of version
//! 1 (no row version) still open; the next write of the row replaces them. A [`KeyRing`] has one active key for
//! sealing and any number of older keys for opening, which is what `rekey` needs.
//!
//! Keys come from `SPOTOKEN_MASTER_KEY` (base64 of 32 bytes; several separated by
//! commas, the first active) or from a key file created `0600` on first use (one
//! base64 key per line, the first active).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use spotoken_core::secret::Key32;

use crate::Error;

/// Associated data: account and field.
const ENVELOPE_V1: u8 = 1;
/// Associated data: account, field and the row version.
const ENVELOPE_V2: u8 = 2;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// The environment variable holding the master key(s).
pub const MASTER_KEY_ENV: &str = "SPOTOKEN_MASTER_KEY";

/// Which secret a ciphertext holds (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The access token.
    AccessToken,
    /// The refresh token.
    RefreshToken,
    /// A login in progress (PKCE verifier), kept server-side between the
    /// redirect to the provider and the callback.
    PendingLogin,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::AccessToken => "access_token",
            Field::RefreshToken => "refresh_token",
            Field::PendingLogin => "pending_login",
        }
    }
}

/// A key's public identifier: the first bytes of a hash of the key.
pub type KeyId = [u8; KEY_ID_LEN];

fn key_id(key: &Key32) -> KeyId {
    let digest = Sha256::new()
        .chain_update(b"spotoken key id v1")
        .chain_update(key.expose())
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

fn hex(id: &KeyId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// One active key and older ones kept for opening.
#[derive(Clone)]
pub struct KeyRing {
    active: KeyId,
    keys: HashMap<KeyId, Key32>,
    order: Vec<KeyId>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &hex(&self.active))
            .field("keys", &self.order.iter().map(hex).collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A ring from keys; the first is active.
    pub fn new(keys: Vec<Key32>) -> Result<Self, Error> {
        let first = keys
            .first()
            .ok_or_else(|| Error::Configuration("no encryption key was given".into()))?;
        let active = key_id(first);
        let mut map = HashMap::new();
        let mut order = Vec::new();
        for k in keys {
            let id = key_id(&k);
            if map.insert(id, k).is_none() {
                order.push(id);
            }
        }
        Ok(Self {
            active,
            keys: map,
            order,
        })
    }

    /// A ring with one fresh random key (tests, demos).
    pub fn generate() -> Self {
        Self::single(random_key())
    }

    fn single(key: Key32) -> Self {
        let id = key_id(&key);
        Self {
            active: id,
            keys: HashMap::from([(id, key)]),
            order: vec![id],
        }
    }

    /// The active key's id, in hex.
    pub fn active_id(&self) -> String {
        hex(&self.active)
    }

    /// Seals `plaintext` for `account`'s `field` with the active key (secrets
    /// outside token rows, such as a pending login).
    pub fn seal(&self, account: &str, field: Field, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.seal_envelope(ENVELOPE_V1, &associated_data(account, field), plaintext)
    }

    /// Seals a token row's secret for the row `version` it will be stored with.
    pub fn seal_row(
        &self,
        account: &str,
        field: Field,
        version: i64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let ad = row_associated_data(account, field, version);
        self.seal_envelope(ENVELOPE_V2, &ad, plaintext)
    }

    fn seal_envelope(
        &self,
        envelope_version: u8,
        ad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| Error::Internal("active key missing from the key ring".into()))?;
        let cipher = XChaCha20Poly1305::new(key.expose().into());
        let mut nonce_bytes = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce_bytes);
        let nonce = XNonce::try_from(&nonce_bytes[..])
            .map_err(|_| Error::Internal("bad nonce length".into()))?;
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| Error::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(envelope_version);
        out.extend_from_slice(&self.active);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens an envelope sealed by [`seal`](Self::seal) for `account`'s `field`.
    pub fn open(
        &self,
        account: &str,
        field: Field,
        envelope: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        match envelope.first() {
            Some(&ENVELOPE_V1) => {}
            Some(&ENVELOPE_V2) => {
                return Err(Error::Internal(format!(
                    "the {} of account '{account}' is bound to its row version: open it with open_row",
                    field.name()
                )));
            }
            _ => return Err(not_an_envelope(account, field)),
        }
        self.open_envelope(account, field, &associated_data(account, field), envelope)
    }

    /// Opens a token row's secret read from a row of `version` (or written
    /// before row versions were bound: envelope version 1).
    pub fn open_row(
        &self,
        account: &str,
        field: Field,
        version: i64,
        envelope: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let ad = match envelope.first() {
            Some(&ENVELOPE_V1) => associated_data(account, field),
            Some(&ENVELOPE_V2) => row_associated_data(account, field, version),
            _ => return Err(not_an_envelope(account, field)),
        };
        self.open_envelope(account, field, &ad, envelope)
    }

    fn open_envelope(
        &self,
        account: &str,
        field: Field,
        ad: &[u8],
        envelope: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        if envelope.len() < HEADER_LEN + 16 {
            return Err(not_an_envelope(account, field));
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&envelope[1..1 + KEY_ID_LEN]);
        let key = self.keys.get(&id).ok_or_else(|| {
            Error::Configuration(format!(
                "the stored tokens of account '{account}' were encrypted with key {}, but the key given is {} \
                 (check {MASTER_KEY_ENV} or the key file); nothing was changed",
                hex(&id),
                self.active_id()
            ))
        })?;
        let cipher = XChaCha20Poly1305::new(key.expose().into());
        let nonce = XNonce::try_from(&envelope[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| Error::Internal("bad nonce length".into()))?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &envelope[HEADER_LEN..],
                    aad: ad,
                },
            )
            .map(zeroize::Zeroizing::new)
            .map_err(|_| {
                Error::Internal(format!(
                    "the stored {} of account '{account}' failed its integrity check (tampered with, copied \
                     from another account, or put back from an older version of the row); log in again to \
                     replace it",
                    field.name()
                ))
            })
    }

    /// Whether a token row's envelope is sealed with the active key and bound
    /// to its row version (`rekey` rewrites the others).
    pub fn is_current(&self, envelope: &[u8]) -> bool {
        envelope.first() == Some(&ENVELOPE_V2) && self.is_active(envelope)
    }

    /// Whether an envelope was sealed with the active key (`rekey` skips those).
    pub fn is_active(&self, envelope: &[u8]) -> bool {
        envelope.get(1..1 + KEY_ID_LEN) == Some(&self.active[..])
    }
}

fn associated_data(account: &str, field: Field) -> Vec<u8> {
    format!("spotoken/v1\0{account}\0{}", field.name()).into_bytes()
}

fn row_associated_data(account: &str, field: Field, version: i64) -> Vec<u8> {
    format!("spotoken/v2\0{account}\0{}\0{version}", field.name()).into_bytes()
}

fn not_an_envelope(account: &str, field: Field) -> Error {
    Error::Internal(format!(
        "the stored {} of account '{account}' is not a spotoken envelope (corrupted store?)",
        field.name()
    ))
}

/// A fresh random 32-byte key from the OS.
pub fn random_key() -> Key32 {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = Key32::new(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    key
}

/// Parses base64 keys separated by commas or newlines; blank lines and `#`
/// comments are skipped.
pub fn parse_keys(text: &str, source: &str) -> Result<Vec<Key32>, Error> {
    let mut keys = Vec::new();
    let items = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|i| !i.is_empty());
    for item in items {
        let bytes = zeroize::Zeroizing::new(STANDARD.decode(item).map_err(|_| {
            Error::Configuration(format!("{source} holds a key that is not valid base64"))
        })?);
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::Configuration(format!(
                "{source} holds a key of {} bytes; keys are 32 bytes (44 base64 characters)",
                bytes.len()
            ))
        })?;
        keys.push(Key32::new(arr));
    }
    if keys.is_empty() {
        return Err(Error::Configuration(format!("{source} holds no key")));
    }
    Ok(keys)
}

/// Base64 of a key, for writing it to a key file.
pub fn encode_key(key: &Key32) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(STANDARD.encode(key.expose()))
}

/// Loads the key ring from the key file at `key_file`, created with a fresh
/// key (mode 0600) if it does not exist.
pub fn load_key_file(key_file: &Path) -> Result<KeyRing, Error> {
    load_key_ring(key_file, None)
}

/// Loads the key ring: from `master_key_env` if given (the value of
/// `SPOTOKEN_MASTER_KEY`, base64 keys separated by commas, the first one
/// active), else as [`load_key_file`] does.
pub fn load_key_ring(key_file: &Path, master_key_env: Option<&str>) -> Result<KeyRing, Error> {
    if let Some(v) = master_key_env {
        return KeyRing::new(parse_keys(v, MASTER_KEY_ENV)?);
    }
    match read_key_file(key_file) {
        Ok(text) => KeyRing::new(parse_keys(
            &text,
            &format!("the key file {}", key_file.display()),
        )?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(key_file),
        Err(e) => Err(Error::Configuration(format!(
            "cannot read the key file {}: {e}",
            key_file.display()
        ))),
    }
}

/// Reads a key file after checking that only its owner can read it.
fn read_key_file(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    use std::io::Read as _;
    let mut text = zeroize::Zeroizing::new(String::new());
    crate::fs::open_secret_file(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Loads the key ring from the OS keyring entry `spotoken` / `label` (the CLI
/// uses the home directory's path), creating a fresh key there on first use.
/// Where no keyring service answers (a headless machine), a configuration
/// error says what to use instead.
#[cfg(feature = "keyring")]
pub fn load_key_ring_from_os_keyring(label: &str) -> Result<KeyRing, Error> {
    let unavailable = |e: keyring::Error| {
        Error::Configuration(format!(
            "the OS keyring is not available ({e}); use key_source = \"file\" or set {MASTER_KEY_ENV}"
        ))
    };
    let entry = keyring::Entry::new("spotoken", label).map_err(unavailable)?;
    match entry.get_password() {
        Ok(text) => KeyRing::new(parse_keys(&text, "the OS keyring entry")?),
        Err(keyring::Error::NoEntry) => {
            let key = random_key();
            entry.set_password(&encode_key(&key)).map_err(unavailable)?;
            Ok(KeyRing::new(vec![key])?)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Writes keys (first active) to a key file, atomically, mode 0600, in a 0700
/// directory, replacing the file if there is one (`rekey`).
pub fn write_key_file(path: &Path, keys: &[&Key32]) -> Result<(), Error> {
    let tmp = write_temporary_key_file(path, keys)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        key_file_error(path, e)
    })?;
    crate::fs::sync_parent(path);
    Ok(())
}

/// Creates the key file with a fresh key, unless another process got there
/// first: then its key is the one. The file appears complete or not at all
/// (a hard link of a written temporary file never replaces an existing one).
fn create_key_file(path: &Path) -> Result<KeyRing, Error> {
    let key = random_key();
    let tmp = write_temporary_key_file(path, &[&key])?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            crate::fs::sync_parent(path);
            Ok(KeyRing::single(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = read_key_file(path).map_err(|e| key_file_error(path, e))?;
            KeyRing::new(parse_keys(
                &text,
                &format!("the key file {}", path.display()),
            )?)
        }
        Err(e) => Err(key_file_error(path, e)),
    }
}

fn key_file_error(path: &Path, e: std::io::Error) -> Error {
    Error::Configuration(format!("cannot write the key file {}: {e}", path.display()))
}

/// Writes keys to a temporary file of its own beside `path` (two processes
/// never share one) and returns its name.
fn write_temporary_key_file(path: &Path, keys: &[&Key32]) -> Result<std::path::PathBuf, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fs::private_dir(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut f = crate::fs::create_private_file(&tmp)?;
        let mut text = zeroize::Zeroizing::new(String::from(
            "# spotoken master keys: the first one encrypts, the others only decrypt. Keep this file secret.\n",
        ));
        for k in keys {
            text.push_str(&encode_key(k));
            text.push('\n');
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(key_file_error(path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let ring = KeyRing::generate();
        let env = ring
            .seal("default", Field::RefreshToken, b"AQsecret")
            .expect("seal");
        assert!(!env.windows(8).any(|w| w == b"AQsecret"));
        assert_eq!(
            &*ring
                .open("default", Field::RefreshToken, &env)
                .expect("open"),
            b"AQsecret"
        );
    }

    #[test]
    fn ciphertext_is_bound_to_account_and_field() {
        let ring = KeyRing::generate();
        let env = ring
            .seal("alice", Field::RefreshToken, b"AQsecret")
            .expect("seal");
        assert!(ring.open("bob", Field::RefreshToken, &env).is_err());
        assert!(ring.open("alice", Field::AccessToken, &env).is_err());
    }

    #[test]
    fn a_row_secret_opens_only_in_the_row_version_it_was_sealed_for() {
        let ring = KeyRing::generate();
        let env = ring
            .seal_row("a", Field::RefreshToken, 7, b"AQold")
            .expect("seal");
        assert_eq!(
            &*ring
                .open_row("a", Field::RefreshToken, 7, &env)
                .expect("open"),
            b"AQold"
        );
        let e = ring
            .open_row("a", Field::RefreshToken, 9, &env)
            .unwrap_err();
        assert!(e.to_string().contains("older version of the row"), "{e}");
        assert!(ring.open_row("b", Field::RefreshToken, 7, &env).is_err());
        assert!(ring.open("a", Field::RefreshToken, &env).is_err());
        // Envelopes from before row versions were bound still open, and are
        // what rekey rewrites.
        let legacy = ring
            .seal("a", Field::RefreshToken, b"AQlegacy")
            .expect("seal");
        assert_eq!(
            &*ring
                .open_row("a", Field::RefreshToken, 3, &legacy)
                .expect("open"),
            b"AQlegacy"
        );
        assert!(!ring.is_current(&legacy));
        assert!(ring.is_current(&env));
    }

    #[test]
    fn tampering_and_wrong_keys_are_clear_errors() {
        let ring = KeyRing::generate();
        let mut env = ring
            .seal("a", Field::AccessToken, b"BQtoken")
            .expect("seal");
        let last = env.len() - 1;
        env[last] ^= 1;
        let e = ring.open("a", Field::AccessToken, &env).unwrap_err();
        assert!(e.to_string().contains("integrity"), "{e}");
        let good = ring
            .seal("a", Field::AccessToken, b"BQtoken")
            .expect("seal");
        let other = KeyRing::generate();
        let e = other.open("a", Field::AccessToken, &good).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert!(e.to_string().contains(&ring.active_id()), "{e}");
    }

    #[test]
    fn old_keys_still_open_after_rotation() {
        let old = random_key();
        let old_ring = KeyRing::new(vec![old.clone()]).expect("ring");
        let env = old_ring.seal("a", Field::RefreshToken, b"x").expect("seal");
        let ring = KeyRing::new(vec![random_key(), old]).expect("ring");
        assert!(!ring.is_active(&env));
        assert_eq!(
            &*ring.open("a", Field::RefreshToken, &env).expect("open"),
            b"x"
        );
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("keys").join("master.key");
        let a = load_key_ring(&path, None).expect("create");
        let b = load_key_ring(&path, None).expect("reuse");
        assert_eq!(a.active_id(), b.active_id());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }

    #[test]
    fn many_creators_of_the_key_file_at_once_all_end_with_the_same_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("home").join("master.key");
        let start = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    load_key_ring(&path, None).map(|r| r.active_id())
                })
            })
            .collect();
        let ids: std::collections::HashSet<String> = threads
            .into_iter()
            .map(|t| t.join().expect("join").expect("every creator succeeds"))
            .collect();
        assert_eq!(ids.len(), 1, "one key for everyone: {ids:?}");
        let on_disk = load_key_ring(&path, None).expect("read").active_id();
        assert!(ids.contains(&on_disk));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "master.key")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("master.key");
        load_key_ring(&path, None).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load_key_ring(&path, None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Configuration);
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", path.display())),
            "{e}"
        );
    }

    #[cfg(feature = "keyring")]
    #[test]
    fn os_keyring_round_trips_or_says_clearly_that_it_is_missing() {
        let label = format!("spotoken-test-{}", std::process::id());
        match load_key_ring_from_os_keyring(&label) {
            Ok(first) => {
                let again = load_key_ring_from_os_keyring(&label).expect("second read");
                assert_eq!(first.active_id(), again.active_id());
                if let Ok(e) = keyring::Entry::new("spotoken", &label) {
                    let _ = e.delete_credential();
                }
            }
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Configuration);
                assert!(e.to_string().contains("key_source"), "{e}");
            }
        }
    }

    #[test]
    fn env_keys_are_validated() {
        assert!(parse_keys("not base64!", "env").is_err());
        assert!(parse_keys(&STANDARD.encode([1u8; 16]), "env").is_err());
        let two = format!(
            "{},{}",
            STANDARD.encode([1u8; 32]),
            STANDARD.encode([2u8; 32])
        );
        assert_eq!(parse_keys(&two, "env").expect("ok").len(), 2);
    }
}
