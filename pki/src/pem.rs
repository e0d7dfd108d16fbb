//! Reading and writing PEM. Input here may be anything a user points us at, so every
//! function returns an error naming the input instead of panicking (fuzzed by
//! `fuzz/fuzz_targets/parse_cert.rs`).

use crate::error::PkiError;

/// Encodes one block with `\n` line endings.
pub(crate) fn encode(tag: &str, der: &[u8]) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(tag, der.to_vec()),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// Every PEM block in `input` as (tag, DER).
pub(crate) fn blocks(input: &[u8], what: &str) -> Result<Vec<(String, Vec<u8>)>, PkiError> {
    let parsed = ::pem::parse_many(input)
        .map_err(|e| PkiError::bad_input(what, format!("not valid PEM ({e})")))?;
    if parsed.is_empty() {
        return Err(PkiError::bad_input(what, "no PEM blocks found"));
    }
    Ok(parsed
        .into_iter()
        .map(|p| (p.tag().to_string(), p.into_contents()))
        .collect())
}

/// The DER of every block tagged `tag`; an error if there is none.
pub(crate) fn blocks_with_tag(
    input: &[u8],
    tag: &str,
    what: &str,
) -> Result<Vec<Vec<u8>>, PkiError> {
    let found: Vec<Vec<u8>> = blocks(input, what)?
        .into_iter()
        .filter(|(t, _)| t == tag)
        .map(|(_, der)| der)
        .collect();
    if found.is_empty() {
        return Err(PkiError::bad_input(what, format!("no {tag} block found")));
    }
    Ok(found)
}

/// Certificates from PEM (`CERTIFICATE` blocks) or a single raw DER certificate. Each one is
/// checked to parse as X.509.
pub fn certificates(input: &[u8], what: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use x509_parser::prelude::FromDer;
    // PEM when it has a BEGIN line (text may start with anything, even '0' = 0x30),
    // else one DER certificate.
    let is_pem = input.windows(11).any(|w| w == b"-----BEGIN ");
    let ders = if !is_pem && input.first() == Some(&0x30) {
        vec![input.to_vec()]
    } else {
        blocks_with_tag(input, "CERTIFICATE", what)?
    };
    for (i, der) in ders.iter().enumerate() {
        match x509_parser::certificate::X509Certificate::from_der(der) {
            Ok(([], _)) => {}
            Ok(_) => {
                return Err(PkiError::bad_input(
                    what,
                    format!("certificate {} has trailing bytes", i + 1),
                ));
            }
            Err(e) => {
                return Err(PkiError::bad_input(
                    what,
                    format!("certificate {} is not valid X.509 ({e})", i + 1),
                ));
            }
        }
    }
    Ok(ders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_naming_the_input() {
        for input in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n",
            b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
            &[0x30, 0x82, 0xff, 0xff, 0x00],
            &[0x30],
        ] {
            let err = certificates(input, "in.pem").unwrap_err().to_string();
            assert!(err.starts_with("cannot read in.pem:"), "{err}");
        }
    }

    #[test]
    fn encode_uses_lf() {
        let text = encode("CERTIFICATE", &[1, 2, 3]);
        assert!(!text.contains('\r'));
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
    }
}
