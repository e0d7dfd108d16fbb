//! The little DER this crate writes itself.
//!
//! rcgen keys a distinguished name by attribute type, so a subject can hold one OU at most.
//! A client certificate needs one OU per role, so we let rcgen build and sign the certificate
//! with a CN-only subject, then replace the subject with our own encoding and sign the new
//! TBSCertificate with the same issuer key:
//!
//! ```text
//! rcgen cert = SEQ { tbs = SEQ { [0] v3, serial, alg, issuer, validity, SUBJECT, spki, [3] ext }, alg, sig }
//!                                                                   ^ replaced     -> tbs' -> sign(tbs') -> cert'
//! ```

use crate::error::PkiError;

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_UTF8: u8 = 0x0c;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xa0;

const OID_CN: [u8; 3] = [0x55, 0x04, 0x03];
const OID_O: [u8; 3] = [0x55, 0x04, 0x0a];
const OID_OU: [u8; 3] = [0x55, 0x04, 0x0b];

pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// One DER element split off the front of some input.
#[derive(Debug)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    /// The whole element, header included.
    pub whole: &'a [u8],
    pub content: &'a [u8],
    /// The input after the element.
    pub rest: &'a [u8],
}

/// Splits one TLV off `data`.
pub(crate) fn split_tlv(data: &[u8]) -> Option<Tlv<'_>> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2usize)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*data.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > data.len() {
        return None;
    }
    Some(Tlv {
        tag,
        whole: &data[..end],
        content: &data[header..end],
        rest: &data[end..],
    })
}

fn attribute(oid: &[u8], value: &str) -> Vec<u8> {
    let mut seq = tlv(TAG_OID, oid);
    seq.extend(tlv(TAG_UTF8, value.as_bytes()));
    tlv(TAG_SET, &tlv(TAG_SEQUENCE, &seq))
}

/// `O=<org>, OU=<each unit>, CN=<cn>`, one attribute per RDN, in that order.
pub(crate) fn name(org: &str, units: &[String], cn: &str) -> Vec<u8> {
    let mut rdns = attribute(&OID_O, org);
    for unit in units {
        rdns.extend(attribute(&OID_OU, unit));
    }
    rdns.extend(attribute(&OID_CN, cn));
    tlv(TAG_SEQUENCE, &rdns)
}

/// Replaces the subject of `cert_der` with `subject_der` and re-signs it with `issuer_key`
/// (which must be the key that signed it: the signature algorithm is kept).
pub(crate) fn replace_subject(
    cert_der: &[u8],
    subject_der: &[u8],
    issuer_key: &impl rcgen::SigningKey,
) -> Result<Vec<u8>, PkiError> {
    let malformed = || PkiError::bad_input("a freshly built certificate", "unexpected DER layout");
    let cert = split_tlv(cert_der).ok_or_else(malformed)?;
    if cert.tag != TAG_SEQUENCE {
        return Err(malformed());
    }
    let tbs = split_tlv(cert.content).ok_or_else(malformed)?;
    let alg = split_tlv(tbs.rest).ok_or_else(malformed)?.whole;
    let tbs = tbs.content;
    let mut elements = Vec::new();
    let mut cursor = tbs;
    while !cursor.is_empty() {
        let e = split_tlv(cursor).ok_or_else(malformed)?;
        elements.push((e.tag, e.whole));
        cursor = e.rest;
    }
    let subject_index = if elements.first().map(|e| e.0) == Some(TAG_VERSION) {
        5
    } else {
        4
    };
    if elements.len() <= subject_index || elements[subject_index].0 != TAG_SEQUENCE {
        return Err(malformed());
    }
    let mut new_tbs_content = Vec::with_capacity(tbs.len() + subject_der.len());
    for (i, (_, whole)) in elements.iter().enumerate() {
        if i == subject_index {
            new_tbs_content.extend_from_slice(subject_der);
        } else {
            new_tbs_content.extend_from_slice(whole);
        }
    }
    let new_tbs = tlv(TAG_SEQUENCE, &new_tbs_content);
    let signature = issuer_key
        .sign(&new_tbs)
        .map_err(PkiError::crypto("sign the certificate"))?;
    let mut bits = vec![0u8];
    bits.extend(signature);
    let mut body = new_tbs;
    body.extend_from_slice(alg);
    body.extend(tlv(TAG_BIT_STRING, &bits));
    Ok(tlv(TAG_SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let t = split_tlv(&long).unwrap();
        assert_eq!(
            (t.tag, t.whole.len(), t.content.len(), t.rest.len()),
            (0x04, 304, 300, 0)
        );
        assert!(split_tlv(&[0x30, 0x05, 1]).is_none());
        assert!(split_tlv(&[0x30, 0x80]).is_none());
        assert!(split_tlv(&[]).is_none());
    }

    #[test]
    fn names_parse_back_with_every_unit() {
        let der = name("OpenShell Edge", &["admin".into(), "dev".into()], "alice");
        let (_, parsed) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        let ous: Vec<_> = parsed
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(ous, ["admin", "dev"]);
        assert_eq!(
            parsed.iter_common_name().next().unwrap().as_str().unwrap(),
            "alice"
        );
    }

    use x509_parser::prelude::FromDer;
}
