//! Key types and key handling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PkiError;

/// Algorithm of every key this PKI generates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: the default, accepted by every TLS stack.
    #[default]
    EcdsaP256,
    /// Ed25519: smaller and faster; some older TLS clients do not accept it.
    Ed25519,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
        }
    }

    pub(crate) fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    pub(crate) fn generate(self) -> Result<rcgen::KeyPair, PkiError> {
        rcgen::KeyPair::generate_for(self.algorithm())
            .map_err(PkiError::crypto("generate a private key"))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" => Ok(KeyType::EcdsaP256),
            "ed25519" => Ok(KeyType::Ed25519),
            _ => Err(PkiError::InvalidName {
                what: "key type",
                input: s.to_string(),
                why: "use ecdsa-p256 or ed25519".into(),
            }),
        }
    }
}

/// Parses a PEM private key (PKCS#8), naming `what` in the error.
pub(crate) fn parse_key(pem: &str, what: &str) -> Result<rcgen::KeyPair, PkiError> {
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        return Err(PkiError::bad_input(
            what,
            "the private key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)",
        ));
    }
    rcgen::KeyPair::from_pem(pem).map_err(|e| {
        PkiError::bad_input(
            what,
            format!("not a PKCS#8 ECDSA P-256 or Ed25519 private key ({e})"),
        )
    })
}

/// Whether `key` is the private half of the public key in certificate `cert_der`.
pub(crate) fn key_matches_cert(key: &rcgen::KeyPair, cert_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(cert_der) {
        Ok((_, cert)) => cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        Err(_) => false,
    }
}
