//! `gateways/<name>/metadata.json`: one registration, pretty JSON, fields as upstream.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::AuthMode;
use super::endpoint::{Endpoint, PortDefault, Scheme};

/// The stored form of a registration. Fields this CLI does not use (upstream's
/// `remote_host`, `resolved_host`, ...) are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayMetadata {
    pub name: String,
    /// `https://host:port` or `http://host:port`.
    pub gateway_endpoint: String,
    /// False for loopback endpoints and `--local` registrations.
    #[serde(default)]
    pub is_remote: bool,
    /// Port of a gateway this machine deployed itself; 0 for `gateway add` (as upstream).
    #[serde(default)]
    pub gateway_port: u16,
    /// Absent means `mtls` for https and `plaintext` for http (as upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<AuthMode>,
    /// Which path (`quic` or `tcp`) last reached the gateway; written by the transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_last_used: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why a metadata file could not be used.
#[derive(Debug)]
pub enum MetadataError {
    Read(std::io::Error),
    Parse(String),
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataError::Read(e) => write!(f, "cannot read it: {e}"),
            MetadataError::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl GatewayMetadata {
    /// A fresh registration as `gateway add` writes it.
    pub fn new(name: &str, endpoint: &Endpoint, is_remote: bool, auth: AuthMode) -> Self {
        GatewayMetadata {
            name: name.to_string(),
            gateway_endpoint: endpoint.to_string(),
            is_remote,
            gateway_port: 0,
            auth_mode: Some(auth),
            transport_last_used: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Reads and validates one file: it must parse, and its endpoint must be a valid URL.
    pub fn load(path: &Path) -> Result<(GatewayMetadata, Endpoint), MetadataError> {
        let bytes = std::fs::read(path).map_err(MetadataError::Read)?;
        let meta: GatewayMetadata = serde_json::from_slice(&bytes)
            .map_err(|e| MetadataError::Parse(format!("invalid JSON: {e}")))?;
        let endpoint = Endpoint::parse(&meta.gateway_endpoint, PortDefault::Standard)
            .map_err(|e| MetadataError::Parse(e.to_string()))?;
        Ok((meta, endpoint))
    }

    /// The effective auth mode: the stored one, else derived from the scheme.
    pub fn auth(&self, endpoint: &Endpoint) -> AuthMode {
        self.auth_mode.unwrap_or(match endpoint.scheme {
            Scheme::Https => AuthMode::Mtls,
            Scheme::Http => AuthMode::Plaintext,
        })
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upstream_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        std::fs::write(
            &path,
            r#"{"name":"cf","gateway_endpoint":"https://gw.example.com","is_remote":true,
               "gateway_port":0,"auth_mode":"cloudflare_jwt","remote_host":"me@box"}"#,
        )
        .unwrap();
        let (meta, ep) = GatewayMetadata::load(&path).unwrap();
        assert_eq!(meta.auth(&ep), AuthMode::Edge);
        assert_eq!(ep.to_string(), "https://gw.example.com:443");
        let again: serde_json::Value = serde_json::from_slice(&meta.to_json()).unwrap();
        assert_eq!(again["remote_host"], "me@box");
        assert_eq!(again["auth_mode"], "edge");
    }

    #[test]
    fn absent_auth_follows_scheme() {
        let ep = Endpoint::parse_input("http://127.0.0.1:1").unwrap();
        let mut meta = GatewayMetadata::new("x", &ep, false, AuthMode::Plaintext);
        meta.auth_mode = None;
        assert_eq!(meta.auth(&ep), AuthMode::Plaintext);
        let ep = Endpoint::parse_input("https://h").unwrap();
        assert_eq!(meta.auth(&ep), AuthMode::Mtls);
    }

    #[test]
    fn corrupt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            GatewayMetadata::load(&path),
            Err(MetadataError::Parse(_))
        ));
        std::fs::write(
            &path,
            r#"{"name":"x","gateway_endpoint":"https://x","auth_mode":"oidc"}"#,
        )
        .unwrap();
        assert!(GatewayMetadata::load(&path).is_err());
    }
}
