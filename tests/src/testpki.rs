//! `TestPki`: certificates minted per test with rcgen, laid out like `openshell pki init`
//! makes them, plus the odd ones the rejection tests need (expired, foreign CA, a server
//! certificate used as a client certificate, a key that does not match).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// PEM material a client presents and trusts.
#[derive(Debug, Clone)]
pub struct ClientCreds {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Lowercase hex, no leading zeros.
    pub serial: String,
}

impl ClientCreds {
    /// Writes `ca.crt`, `tls.crt`, `tls.key` (0600) into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("tls.crt"), &self.cert_pem).unwrap();
        write_key(&dir.join("tls.key"), &self.key_pem);
    }

    /// The transport-level client material.
    pub fn material(&self) -> openshell_transport::tls::ClientMaterial {
        openshell_transport::tls::ClientMaterial::from_pem(
            self.ca_pem.as_bytes(),
            Some((self.cert_pem.as_bytes(), self.key_pem.as_bytes())),
        )
        .unwrap()
    }
}

fn write_key(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(365);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x10;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// A CA with a server certificate for localhost/127.0.0.1 in a temp directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: Ca,
    revoked: Mutex<Vec<SerialNumber>>,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("OpenShell Test CA");
        let pki = TestPki {
            dir,
            ca,
            revoked: Mutex::new(Vec::new()),
        };
        std::fs::write(pki.dir().join("ca.crt"), &pki.ca.pem).unwrap();
        write_key(&pki.dir().join("ca.key"), &pki.ca.key.serialize_pem());
        let (cert, key) = pki.server_pem(&["localhost", "127.0.0.1", "::1"]);
        std::fs::create_dir_all(pki.dir().join("server")).unwrap();
        std::fs::write(pki.dir().join("server/tls.crt"), cert).unwrap();
        write_key(&pki.dir().join("server/tls.key"), &key);
        pki.write_crl();
        pki
    }

    /// The PKI directory (`--pki-dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    fn server_pem(&self, sans: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "openshell-gateway");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial().0);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca.issuer()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Re-issues the server certificate in place (rotation), returning its PEM.
    pub fn rotate_server(&self) -> String {
        let (cert, key) = self.server_pem(&["localhost", "127.0.0.1", "::1"]);
        // Key first, then certificate: the gateway retries until the pair matches.
        write_key(&self.dir().join("server/tls.key"), &key);
        std::fs::write(self.dir().join("server/tls.crt"), &cert).unwrap();
        cert
    }

    /// A client certificate valid from now-1h to now+`days`.
    pub fn client(&self, user: &str, roles: &[&str]) -> ClientCreds {
        let now = OffsetDateTime::now_utc();
        self.client_valid(
            user,
            roles,
            now - Duration::hours(1),
            now + Duration::days(30),
        )
    }

    /// A client certificate with explicit validity (e.g. already expired).
    pub fn client_valid(
        &self,
        user: &str,
        roles: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> ClientCreds {
        issue_client(&self.ca, user, roles, not_before, not_after)
    }

    /// A client certificate from a different CA, presented with this gateway's CA as trust.
    pub fn foreign_client(&self, user: &str) -> ClientCreds {
        let other = Ca::new("Some Other CA");
        let now = OffsetDateTime::now_utc();
        let mut creds = issue_client(
            &other,
            user,
            &[],
            now - Duration::hours(1),
            now + Duration::days(1),
        );
        creds.ca_pem = self.ca.pem.clone();
        creds
    }

    /// The gateway's server certificate and key presented as a client certificate.
    pub fn server_as_client(&self) -> ClientCreds {
        ClientCreds {
            ca_pem: self.ca.pem.clone(),
            cert_pem: std::fs::read_to_string(self.dir().join("server/tls.crt")).unwrap(),
            key_pem: std::fs::read_to_string(self.dir().join("server/tls.key")).unwrap(),
            serial: String::new(),
        }
    }

    /// Adds `serial` to the CRL and rewrites `crl.pem` atomically.
    pub fn revoke(&self, serial: &str) {
        let bytes = hex::decode(serial).unwrap();
        self.revoked
            .lock()
            .unwrap()
            .push(SerialNumber::from_slice(&bytes));
        self.write_crl();
    }

    fn write_crl(&self) {
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .revoked
            .lock()
            .unwrap()
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: s.clone(),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(7),
            crl_number: random_serial().0,
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca.issuer()).unwrap();
        let tmp = self.dir().join(".crl.pem.tmp");
        std::fs::write(&tmp, crl.pem().unwrap()).unwrap();
        std::fs::rename(tmp, self.dir().join("crl.pem")).unwrap();
    }

    /// A path inside the PKI dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }
}

fn issue_client(
    ca: &Ca,
    user: &str,
    roles: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> ClientCreds {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, user);
    for r in roles {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, *r);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    let (serial, hex_serial) = random_serial();
    params.serial_number = Some(serial);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer()).unwrap();
    ClientCreds {
        ca_pem: ca.pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: hex_serial.trim_start_matches('0').to_string(),
    }
}
