//! `GatewayName`: a registration name that is always safe to use as one path component.

use std::fmt;

use crate::CliError;

/// Longest accepted name: a full DNS host name (the default name of a remote gateway) fits.
pub const MAX_NAME_LEN: usize = 253;

/// A validated gateway name: `[A-Za-z0-9._-]{1,253}`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayName(String);

impl GatewayName {
    /// Validates `name`, explaining what is wrong.
    pub fn parse(name: &str) -> Result<GatewayName, CliError> {
        let bad = |why: &str| {
            CliError::hint(
                format!("invalid gateway name '{name}': {why}"),
                "Gateway names use letters, digits, '.', '_' and '-' (for example: --name prod)",
            )
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(&format!("longer than {MAX_NAME_LEN} characters")));
        }
        if name == "." || name == ".." {
            return Err(bad("it is not a usable directory name"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(&format!("character {c:?} is not allowed")));
        }
        Ok(GatewayName(name.to_string()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Default name for an endpoint host, as upstream: loopback hosts become `openshell`,
    /// others their host name, with characters a name cannot hold replaced by `-`.
    pub fn default_for_host(host: &str, loopback: bool) -> Result<GatewayName, CliError> {
        if loopback {
            return GatewayName::parse("openshell");
        }
        let cleaned: String = host
            .trim_matches(|c| c == '[' || c == ']')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        GatewayName::parse(&cleaned).map_err(|_| {
            CliError::hint(
                format!("cannot derive a gateway name from host '{host}'"),
                "Choose one with: --name <name>",
            )
        })
    }
}

impl fmt::Display for GatewayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for GatewayName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["prod", "a", "gw-1.example_com", "...x", "A9"] {
            assert_eq!(GatewayName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_paths_and_odd_characters() {
        let too_long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            "a\0b",
            "x:y",
            too_long.as_str(),
        ] {
            assert!(GatewayName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_names() {
        assert_eq!(
            GatewayName::default_for_host("127.0.0.1", true)
                .unwrap()
                .as_str(),
            "openshell"
        );
        assert_eq!(
            GatewayName::default_for_host("gw.example.com", false)
                .unwrap()
                .as_str(),
            "gw.example.com"
        );
        assert_eq!(
            GatewayName::default_for_host("[fd00::1]", false)
                .unwrap()
                .as_str(),
            "fd00--1"
        );
    }
}
