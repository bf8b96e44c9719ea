//! Provider credentials at rest: every provider key the control plane stores is sealed with
//! an AEAD under a key from the environment (`LITELLM_SALT_KEY`, LiteLLM's name, or
//! `TOLLGATE_SALT_KEY`), and a value that does not open is an error, never read as clear text.
//!
//! A sealed value is `enc:v1:` followed by base64url (no padding) of a random 24-byte nonce and
//! the XChaCha20-Poly1305 ciphertext with its tag. The associated data names the field the
//! value belongs to (`deployment:<id>:api_key`), so a sealed key copied into another row does
//! not open there. The cipher key is HKDF-SHA256 of the operator's secret, so any string works
//! as the secret and the same secret can later derive keys for other purposes.
//! The `v1` is the format's version: a later format gets `v2` and this one stays readable.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// LiteLLM's variable for the key that encrypts credentials in the database.
pub const LITELLM_SALT_KEY: &str = "LITELLM_SALT_KEY";
/// Tollgate's own name for the same key; either may be set (both only to the same value).
pub const TOLLGATE_SALT_KEY: &str = "TOLLGATE_SALT_KEY";

/// Every sealed value starts with this; what follows names the format.
const SEALED_PREFIX: &str = "enc:";
/// The current format.
const SEALED_V1: &str = "enc:v1:";
/// XChaCha20's nonce: long enough that random nonces never repeat in practice.
const NONCE_LEN: usize = 24;
/// Poly1305's tag.
const TAG_LEN: usize = 16;
/// HKDF salt and info: fixed, so one secret always derives the same cipher key.
const HKDF_SALT: &[u8] = b"tollgate credential key";
const HKDF_INFO: &[u8] = b"tollgate provider credentials v1";

/// True when `value` is in the sealed format (of any version).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Where a credential key came from, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    Env(&'static str),
    /// A key file (`tollgate up` keeps one in its state directory).
    File(PathBuf),
    /// Given by the embedding program (tests).
    Given,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(name) => f.write_str(name),
            KeySource::File(path) => write!(f, "the key file {}", path.display()),
            KeySource::Given => f.write_str("the given key"),
        }
    }
}

/// Why a secret could not be sealed or opened, or a key not loaded. Messages never contain
/// a key or a credential.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is set to nothing.
    #[error("{0} is set but empty")]
    EmptyKey(String),
    /// Both variables are set, to different values.
    #[error("{LITELLM_SALT_KEY} and {TOLLGATE_SALT_KEY} are both set, to different values: set one of them")]
    ConflictingKeys,
    /// The tag did not verify: another key, or an altered value.
    #[error("it does not decrypt with this key (another key encrypted it, or it was altered)")]
    WrongKey,
    /// Not base64, or too short to hold a nonce and a tag.
    #[error("malformed encrypted value ({0})")]
    Malformed(&'static str),
    /// A format this version does not know.
    #[error("encrypted in format {0:?}, which this version of Tollgate cannot read")]
    UnknownFormat(String),
    /// The decrypted bytes are not UTF-8.
    #[error("the decrypted value is not UTF-8")]
    NotText,
    /// No randomness for a nonce or a new key.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The AEAD refused to encrypt (cannot happen with valid lengths).
    #[error("encryption failed")]
    Encrypt,
    /// A key file could not be read or written.
    #[error("key file {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The key provider credentials are sealed with. Cheap to clone; `Debug` shows only where it
/// came from.
#[derive(Clone)]
pub struct CredentialKey {
    cipher: XChaCha20Poly1305,
    source: KeySource,
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialKey")
            .field("source", &self.source)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CredentialKey {
    /// Derives the cipher key from the operator's secret (any non-empty string).
    pub fn derive(secret: &str, source: KeySource) -> Result<CredentialKey, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::EmptyKey(source.to_string()));
        }
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(HKDF_SALT), secret.as_bytes())
            .expand(HKDF_INFO, &mut key)
            // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
            .map_err(|_| SecretError::Encrypt)?;
        let cipher = XChaCha20Poly1305::new(&key.into());
        key.fill(0);
        Ok(CredentialKey { cipher, source })
    }

    /// The key from `LITELLM_SALT_KEY` or `TOLLGATE_SALT_KEY`, read through `lookup` (the
    /// process environment in the binary); `None` when neither is set.
    pub fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<CredentialKey>, SecretError> {
        let litellm = lookup(LITELLM_SALT_KEY);
        let tollgate = lookup(TOLLGATE_SALT_KEY);
        match (litellm, tollgate) {
            (Some(a), Some(b)) if a != b => Err(SecretError::ConflictingKeys),
            (Some(secret), _) => Self::derive(&secret, KeySource::Env(LITELLM_SALT_KEY)).map(Some),
            (None, Some(secret)) => {
                Self::derive(&secret, KeySource::Env(TOLLGATE_SALT_KEY)).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// The key in the file at `path`, creating the file (mode 0600, a random 256-bit secret)
    /// when it does not exist, so `tollgate up` encrypts credentials with zero setup.
    pub fn from_key_file(path: &Path) -> Result<CredentialKey, SecretError> {
        let key_file_error = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::derive(text.trim(), KeySource::File(path.to_path_buf())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::getrandom(&mut secret)
                    .map_err(|error| SecretError::Random(error.to_string()))?;
                let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
                secret.fill(0);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(path) {
                    Ok(mut file) => {
                        file.write_all(format!("{text}\n").as_bytes())
                            .and_then(|()| file.sync_all())
                            .map_err(key_file_error)?;
                        Self::derive(&text, KeySource::File(path.to_path_buf()))
                    }
                    // Another process created it meanwhile: use theirs.
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        let text = std::fs::read_to_string(path).map_err(key_file_error)?;
                        Self::derive(text.trim(), KeySource::File(path.to_path_buf()))
                    }
                    Err(error) => Err(key_file_error(error)),
                }
            }
            Err(error) => Err(key_file_error(error)),
        }
    }

    /// Where this key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Seals `plaintext` for the field named `context`, with a fresh random nonce.
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|error| SecretError::Random(error.to_string()))?;
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encrypt)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(format!(
            "{SEALED_V1}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens a value sealed for the field named `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        let Some(encoded) = sealed.strip_prefix(SEALED_V1) else {
            let format = sealed
                .strip_prefix(SEALED_PREFIX)
                .and_then(|rest| rest.split(':').next())
                .unwrap_or("");
            return Err(SecretError::UnknownFormat(
                format.chars().take(16).collect(),
            ));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SecretError::Malformed("not base64url"))?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretError::Malformed("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::WrongKey)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::NotText)
    }
}

/// Why the stored provider credentials cannot be used as they are. Every message names the
/// deployment and says what to set; none contains a credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A provider key is to be stored and no credential key is set.
    #[error(
        "deployment {deployment:?} has a provider key, and provider keys are stored encrypted: \
         set {LITELLM_SALT_KEY} (or {TOLLGATE_SALT_KEY}) to a secret of your own for the control plane"
    )]
    NoKeyToSeal {
        /// The deployment id.
        deployment: String,
    },
    /// The database holds sealed provider keys and no credential key is set.
    #[error(
        "the database holds encrypted provider keys (deployment {deployment:?}) and neither \
         {LITELLM_SALT_KEY} nor {TOLLGATE_SALT_KEY} is set: set it to the key they were encrypted with"
    )]
    NoKeyToOpen {
        /// The deployment id.
        deployment: String,
    },
    /// A clear provider key (written by an earlier version) and no key to encrypt it with.
    #[error(
        "deployment {deployment:?} stores its provider key in clear (written by an earlier \
         version of Tollgate): set {LITELLM_SALT_KEY} (or {TOLLGATE_SALT_KEY}) and start again \
         to encrypt it"
    )]
    ClearWithoutKey {
        /// The deployment id.
        deployment: String,
    },
    /// A sealed provider key does not open with the configured key.
    #[error("cannot decrypt the provider key of deployment {deployment:?} with the key from {key_source}: {source}")]
    Unreadable {
        /// The deployment id.
        deployment: String,
        /// Where the key in use came from.
        key_source: KeySource,
        /// What failed.
        source: SecretError,
    },
    /// The database's key check does not open: it was encrypted under another key.
    #[error(
        "the key from {key_source} is not the key this database's provider keys were encrypted \
         with ({source}); set {LITELLM_SALT_KEY} to the original key"
    )]
    WrongKey {
        /// Where the key in use came from.
        key_source: KeySource,
        /// What failed.
        source: SecretError,
    },
    /// Sealing failed.
    #[error("cannot encrypt the provider key of deployment {deployment:?}: {source}")]
    Seal {
        /// The deployment id.
        deployment: String,
        /// What failed.
        source: SecretError,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(secret: &str) -> CredentialKey {
        CredentialKey::derive(secret, KeySource::Given).unwrap()
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let key = key("salt");
        let first = key.seal("deployment:a:api_key", "sk-secret").unwrap();
        let second = key.seal("deployment:a:api_key", "sk-secret").unwrap();
        assert!(first.starts_with("enc:v1:"), "{first}");
        assert!(!first.contains("sk-secret"));
        assert_ne!(first, second);
        assert!(is_sealed(&first));
        assert!(!is_sealed("sk-secret"));
        assert_eq!(
            key.open("deployment:a:api_key", &first).unwrap(),
            "sk-secret"
        );
        assert_eq!(
            key.open("deployment:a:api_key", &second).unwrap(),
            "sk-secret"
        );
        // 24-byte nonce + 9-byte text + 16-byte tag, base64url without padding.
        assert_eq!(
            first.len(),
            "enc:v1:".len() + (24 + 9 + 16usize).div_ceil(3) * 4 - 2
        );
    }

    #[test]
    fn another_key_another_field_or_an_altered_value_does_not_open() {
        let sealed = key("salt")
            .seal("deployment:a:api_key", "sk-secret")
            .unwrap();
        assert!(matches!(
            key("other").open("deployment:a:api_key", &sealed),
            Err(SecretError::WrongKey)
        ));
        assert!(matches!(
            key("salt").open("deployment:b:api_key", &sealed),
            Err(SecretError::WrongKey)
        ));
        // A character in the middle: all six of its bits are data (the last one's low bits are
        // padding a decoder may ignore, so changing it need not change the bytes).
        let mut altered = sealed.into_bytes();
        let middle = "enc:v1:".len() + 40;
        altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(matches!(
            key("salt").open("deployment:a:api_key", &altered),
            Err(SecretError::WrongKey)
        ));
    }

    #[test]
    fn malformed_and_future_formats_are_errors() {
        let key = key("salt");
        assert!(matches!(
            key.open("c", "enc:v1:!!"),
            Err(SecretError::Malformed("not base64url"))
        ));
        assert!(matches!(
            key.open("c", "enc:v1:AAAA"),
            Err(SecretError::Malformed("too short"))
        ));
        match key.open("c", "enc:v2:AAAA") {
            Err(SecretError::UnknownFormat(format)) => assert_eq!(format, "v2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_come_from_either_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(CredentialKey::from_env(&env(&[])).unwrap().is_none());
        let litellm = CredentialKey::from_env(&env(&[(LITELLM_SALT_KEY, "s")]))
            .unwrap()
            .unwrap();
        assert_eq!(litellm.source(), &KeySource::Env(LITELLM_SALT_KEY));
        let tollgate = CredentialKey::from_env(&env(&[(TOLLGATE_SALT_KEY, "s")]))
            .unwrap()
            .unwrap();
        assert_eq!(tollgate.source(), &KeySource::Env(TOLLGATE_SALT_KEY));
        // The same secret under either name is the same key.
        let sealed = litellm.seal("c", "v").unwrap();
        assert_eq!(tollgate.open("c", &sealed).unwrap(), "v");
        assert!(CredentialKey::from_env(&env(&[
            (LITELLM_SALT_KEY, "s"),
            (TOLLGATE_SALT_KEY, "s")
        ]))
        .unwrap()
        .is_some());
        assert!(matches!(
            CredentialKey::from_env(&env(&[(LITELLM_SALT_KEY, "s"), (TOLLGATE_SALT_KEY, "t")])),
            Err(SecretError::ConflictingKeys)
        ));
        match CredentialKey::from_env(&env(&[(LITELLM_SALT_KEY, "")])) {
            Err(error) => assert_eq!(error.to_string(), "LITELLM_SALT_KEY is set but empty"),
            Ok(_) => panic!("an empty key was accepted"),
        }
    }

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.key");
        let created = CredentialKey::from_key_file(&path).unwrap();
        let sealed = created.seal("c", "v").unwrap();
        let again = CredentialKey::from_key_file(&path).unwrap();
        assert_eq!(again.open("c", &sealed).unwrap(), "v");
        assert_eq!(again.source(), &KeySource::File(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 43, "32 random bytes in base64url");
    }

    #[test]
    fn debug_shows_no_key() {
        let key = key("very-secret-salt");
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            "CredentialKey { source: Given, key: \"<redacted>\" }"
        );
    }
}
