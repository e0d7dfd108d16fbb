//! The certificate authority: creating a PKI, issuing, revoking, rotating.
//!
//! Every change follows the same steps, so two `openshell pki` commands (or the gateway
//! minting a sandbox credential) cannot lose each other's updates:
//!
//! ```text
//! lock (.lock) -> reload CA + index from disk -> build certificates in memory
//!              -> FileSet: write temp files, rename in order, index.json last -> unlock
//! ```
//!
//! `init` instead builds the whole directory beside the target and renames it into place.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use crate::dir::PkiDir;
use crate::duration::Duration;
use crate::error::PkiError;
use crate::fs::{self, DirLock, FileSet};
use crate::index::{CaRecord, CertKind, INDEX_VERSION, Index, IndexEntry, format_time};
use crate::keys::{self, KeyType};
use crate::names::{self, SANDBOX_CN_PREFIX, SANDBOX_OU, San};
use crate::pem;
use crate::serial::Serial;

/// CA certificates: 10 years. Long enough that rotation is a planned event, not a chore.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::days(3650);
/// Gateway certificate: 1 year.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::days(365);
/// User certificates: 90 days, so a lost laptop's credential dies on its own.
pub const DEFAULT_CLIENT_VALIDITY: Duration = Duration::days(90);
/// How long the old CA stays trusted after `rotate-ca`: time to re-issue every user.
pub const DEFAULT_CA_OVERLAP: Duration = Duration::days(30);
/// not_before is set this far in the past so a peer whose clock is slightly behind accepts
/// a certificate minted a moment ago.
const BACKDATE: time::Duration = time::Duration::minutes(1);
const ORG: &str = "OpenShell Edge";
/// How long a change waits for another process holding the PKI lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const SERVER_CN: &str = "openshell-gateway";

/// Options of [`init`]; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Extra server SANs beyond localhost, 127.0.0.1, ::1, host.docker.internal,
    /// host.containers.internal and the host name.
    pub sans: Vec<San>,
    /// Default ECDSA P-256.
    pub key_type: KeyType,
    /// Default [`DEFAULT_CA_VALIDITY`].
    pub ca_validity: Duration,
    /// Default [`DEFAULT_SERVER_VALIDITY`].
    pub server_validity: Duration,
    /// Replace an existing PKI (everything it issued stops working).
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            sans: Vec::new(),
            key_type: KeyType::default(),
            ca_validity: DEFAULT_CA_VALIDITY,
            server_validity: DEFAULT_SERVER_VALIDITY,
            force: false,
        }
    }
}

/// A freshly issued certificate and its private key. `Debug` leaves the key out.
#[derive(Clone)]
pub struct IssuedCert {
    pub serial: Serial,
    pub cert_pem: String,
    pub key_pem: String,
    pub entry: IndexEntry,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("entry", &self.entry)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// What `rotate_ca` did.
#[derive(Debug, Clone)]
pub struct RotatedCa {
    pub old_serial: Serial,
    pub new_serial: Serial,
    /// The old CA stays trusted for client certificates until then.
    pub old_trusted_until: OffsetDateTime,
    pub server: IssuedCert,
}

/// The PKI's current CA, loaded from a directory.
pub struct Ca {
    dir: PkiDir,
    cert_der: Vec<u8>,
    cert_pem: String,
    key: KeyPair,
    index: Index,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("serial", &self.index.current_ca().serial)
            .finish_non_exhaustive()
    }
}

/// A CA trusted right now: its record, certificate DER, and key when it is not the current
/// CA (the current CA's key is `Ca::key`).
type TrustedCa = (CaRecord, Vec<u8>, Option<KeyPair>);

/// A change to the PKI in progress. Only [`Ca::change`] makes one (after taking the lock and
/// reloading the on-disk state) and only [`Ca::commit`] writes one (derived files and
/// `index.json` last), so no code path can skip the lock, build on stale state, or leave
/// `crl.pem` out of date with the index. Dropping it writes nothing and releases the lock.
struct Change {
    files: FileSet,
    /// Set when revocations or the set of CAs changed: `crl.pem` must be re-signed.
    revocations_changed: bool,
    _lock: DirLock,
}

/// Creates a PKI in `dir`: CA, server certificate, empty CRL, index. Refuses an existing PKI
/// unless `opts.force`. Nothing is visible at `dir` until everything is written.
pub fn init(dir: &PkiDir, opts: InitOptions) -> Result<Ca, PkiError> {
    if dir.exists() {
        if !opts.force {
            return Err(PkiError::AlreadyInitialized {
                dir: dir.path().to_path_buf(),
            });
        }
    } else if dir.path().exists() {
        // Not a PKI: never replace (or delete) a directory we did not create, even with
        // --force (`--dir ~ --force` must not take the home directory away).
        let non_empty = std::fs::read_dir(dir.path())
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if non_empty {
            return Err(PkiError::NotAPkiDir {
                dir: dir.path().to_path_buf(),
            });
        }
    }
    if opts.server_validity > opts.ca_validity {
        return Err(PkiError::OutlivesCa {
            requested: opts.server_validity.to_string(),
            ca_expires: format!("after {}", opts.ca_validity),
        });
    }
    let now = OffsetDateTime::now_utc();
    let staging = fs::staging_dir_for(dir.path())?;
    let staged = PkiDir::new(staging.path());
    let (ca_cert, ca_key, ca_record) =
        new_ca(opts.key_type, opts.ca_validity, now, "ca.crt", "ca.key")?;
    let mut index = Index {
        version: INDEX_VERSION,
        key_type: opts.key_type,
        ca_validity_secs: opts.ca_validity.as_secs(),
        crl_number: 0,
        server_sans: opts.sans.clone(),
        cas: vec![ca_record],
        certificates: Vec::new(),
    };
    let mut files = FileSet::new();
    files
        .public(staged.ca_cert_path(), pem::encode("CERTIFICATE", &ca_cert))
        .secret(staged.ca_key_path(), ca_key.serialize_pem());
    files.commit()?;
    let mut ca = Ca {
        dir: staged.clone(),
        cert_pem: pem::encode("CERTIFICATE", &ca_cert),
        cert_der: ca_cert,
        key: ca_key,
        index: index.clone(),
    };
    let server = ca.build_server(&opts.sans, opts.server_validity, now, &[])?;
    index.certificates.push(server.entry.clone());
    ca.index = index;
    let mut files = FileSet::new();
    files
        .public(staged.server_cert_path(), server.cert_pem.clone())
        .secret(staged.server_key_path(), server.key_pem.clone());
    ca.derived_files(&mut files, now, true)?;
    files.commit()?;
    failpoint("init-before-rename")?;
    fs::replace_dir(&staging.keep(), dir.path())?;
    fs::ensure_private_dir(dir.path())?;
    Ca::load(dir)
}

/// A new self-signed CA: (DER, key, index record).
fn new_ca(
    key_type: KeyType,
    validity: Duration,
    now: OffsetDateTime,
    cert_file: &str,
    key_file: &str,
) -> Result<(Vec<u8>, KeyPair, CaRecord), PkiError> {
    let key = key_type.generate()?;
    let (params, serial) = ca_params(validity, now)?;
    let cert = params
        .self_signed(&key)
        .map_err(PkiError::crypto("create the CA certificate"))?;
    let record = CaRecord {
        serial,
        subject: ca_common_name(&params),
        not_before: params.not_before,
        not_after: params.not_after,
        cert_file: cert_file.into(),
        key_file: key_file.into(),
        trusted_until: None,
    };
    Ok((cert.der().to_vec(), key, record))
}

fn ca_params(
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(CertificateParams, Serial), PkiError> {
    let serial = Serial::random()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    // Each CA gets its own name, so during a rotation overlap the two CAs (and their CRLs)
    // are told apart by name as every verifier expects.
    let short = &serial.to_string()[..8];
    dn.push(
        DnType::CommonName,
        format!("OpenShell Edge CA {} {short}", now.date()),
    );
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    params.not_before = now - BACKDATE;
    params.not_after = now + validity.to_time();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok((params, serial))
}

fn ca_common_name(params: &CertificateParams) -> String {
    match params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn reason_code(reason: Option<&str>) -> Option<RevocationReason> {
    let r = reason?.to_ascii_lowercase().replace(['-', '_', ' '], "");
    Some(match r.as_str() {
        "keycompromise" | "compromised" | "lost" | "stolen" => RevocationReason::KeyCompromise,
        "cacompromise" => RevocationReason::CaCompromise,
        "affiliationchanged" | "left" => RevocationReason::AffiliationChanged,
        "superseded" | "replaced" => RevocationReason::Superseded,
        "cessationofoperation" | "retired" | "unused" => RevocationReason::CessationOfOperation,
        "privilegewithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => RevocationReason::Unspecified,
    })
}

impl Ca {
    /// Loads the current CA of `dir`, checking that its key belongs to its certificate.
    pub fn load(dir: &PkiDir) -> Result<Ca, PkiError> {
        dir.require()?;
        let index = dir.index()?;
        let cert_path = dir.ca_cert_path();
        let cert_bytes = fs::read_public(&cert_path)?;
        let cert_der = pem::certificates(&cert_bytes, &cert_path.display().to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| {
                PkiError::bad_input(cert_path.display().to_string(), "no certificate")
            })?;
        let key_path = dir.ca_key_path();
        let key_pem = fs::read_secret(&key_path)?;
        let key = keys::parse_key(
            &String::from_utf8_lossy(&key_pem),
            &key_path.display().to_string(),
        )?;
        if !keys::key_matches_cert(&key, &cert_der) {
            return Err(PkiError::KeyMismatch {
                key: key_path.display().to_string(),
                cert: cert_path.display().to_string(),
            });
        }
        let serial =
            crate::inspect::inspect_bytes(&cert_der, &cert_path.display().to_string(), None)?
                .serial;
        if serial != index.current_ca().serial {
            return Err(PkiError::Corrupt {
                path: dir.index_path(),
                why: format!(
                    "it names CA {} as current but {} holds CA {serial}",
                    index.current_ca().serial,
                    cert_path.display()
                ),
            });
        }
        Ok(Ca {
            dir: dir.clone(),
            cert_pem: pem::encode("CERTIFICATE", &cert_der),
            cert_der,
            key,
            index,
        })
    }

    pub fn dir(&self) -> &PkiDir {
        &self.dir
    }

    /// The index as of the last load or change.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// PEM of the current CA certificate (what a client needs to verify the gateway).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn serial(&self) -> &Serial {
        &self.index.current_ca().serial
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.index.current_ca().not_after
    }

    /// Starts a change: takes the directory lock and reloads everything, so the change builds
    /// on the latest state (another process may have rotated the CA or issued certificates).
    fn change(&mut self) -> Result<Change, PkiError> {
        let lock_path = self.dir.lock_path();
        let lock =
            DirLock::acquire(&lock_path, LOCK_WAIT)?.ok_or(PkiError::Locked { path: lock_path })?;
        *self = Ca::load(&self.dir)?;
        Ok(Change {
            files: FileSet::new(),
            revocations_changed: false,
            _lock: lock,
        })
    }

    /// Finishes a change: adds `crl.pem`, `ca-bundle.pem` and then `index.json` (from
    /// `self.index`) and writes everything. On failure nothing on disk changes and `self` is
    /// reloaded from disk, dropping the in-memory edits.
    fn commit(&mut self, mut change: Change, now: OffsetDateTime) -> Result<(), PkiError> {
        let result = self
            .derived_files(&mut change.files, now, change.revocations_changed)
            .and_then(|()| failpoint("before-commit"))
            .and_then(|()| Ok(change.files.commit()?));
        if result.is_err()
            && let Ok(fresh) = Ca::load(&self.dir)
        {
            *self = fresh;
        }
        result
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)
            .map_err(PkiError::crypto("read the CA certificate"))
    }

    fn leaf_params(
        &self,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<(CertificateParams, Serial), PkiError> {
        let not_after = now + validity.to_time();
        if not_after > self.not_after() {
            return Err(PkiError::OutlivesCa {
                requested: validity.to_string(),
                ca_expires: format_time(self.not_after()),
            });
        }
        let serial = Serial::random()?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        Ok((params, serial))
    }

    /// Signs a client certificate with subject `O=..., OU=<each unit>, CN=<cn>`.
    fn build_client(
        &self,
        cn: &str,
        units: &[String],
        kind: CertKind,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let key = self.index.key_type.generate()?;
        let mut issued = self.build_client_for(cn, units, kind, validity, now, &key)?;
        issued.key_pem = key.serialize_pem();
        Ok(issued)
    }

    /// A client certificate for `public` (the holder keeps the private key; `key_pem` is
    /// left empty).
    fn build_client_for(
        &self,
        cn: &str,
        units: &[String],
        kind: CertKind,
        validity: Duration,
        now: OffsetDateTime,
        public: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedCert, PkiError> {
        let (mut params, serial) = self.leaf_params(validity, now)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(public, &issuer)
            .map_err(PkiError::crypto("sign the client certificate"))?;
        // rcgen holds one OU at most; write the real subject ourselves (see der.rs).
        let der =
            crate::der::replace_subject(cert.der(), &crate::der::name(ORG, units, cn), &&self.key)?;
        Ok(IssuedCert {
            serial: serial.clone(),
            cert_pem: pem::encode("CERTIFICATE", &der),
            key_pem: String::new(),
            entry: IndexEntry {
                serial,
                subject_cn: cn.to_string(),
                roles: units.to_vec(),
                kind,
                issuer: self.serial().clone(),
                sans: Vec::new(),
                not_before: params.not_before,
                not_after: params.not_after,
                revoked_at: None,
                reason: None,
            },
        })
    }

    /// Cross certificates on disk that have not expired (see [`Ca::rotate_ca`]).
    fn current_cross(&self, now: OffsetDateTime) -> Vec<Vec<u8>> {
        let Ok(bytes) = fs::read_public(&self.dir.cross_cert_path()) else {
            return Vec::new();
        };
        pem::certificates(&bytes, "ca-cross.crt")
            .unwrap_or_default()
            .into_iter()
            .filter(|d| {
                crate::inspect::inspect_bytes_at(d, "ca-cross.crt", None, now)
                    .is_ok_and(|i| i.status != crate::index::CertStatus::Expired)
            })
            .collect()
    }

    fn build_server(
        &self,
        extra_sans: &[San],
        validity: Duration,
        now: OffsetDateTime,
        cross: &[Vec<u8>],
    ) -> Result<IssuedCert, PkiError> {
        let (mut params, serial) = self.leaf_params(validity, now)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let sans = names::server_sans(extra_sans);
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORG);
        dn.push(DnType::CommonName, SERVER_CN);
        params.distinguished_name = dn;
        let key = self.index.key_type.generate()?;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(PkiError::crypto("sign the server certificate"))?;
        let mut cert_pem = pem::encode("CERTIFICATE", cert.der());
        // During a CA overlap, clients that only know the old CA verify the new server
        // certificate through the cross certificate (new CA signed by the old one).
        for d in cross {
            cert_pem.push_str(&pem::encode("CERTIFICATE", d));
        }
        Ok(IssuedCert {
            serial: serial.clone(),
            cert_pem,
            key_pem: key.serialize_pem(),
            entry: IndexEntry {
                serial,
                subject_cn: SERVER_CN.into(),
                roles: Vec::new(),
                kind: CertKind::Server,
                issuer: self.serial().clone(),
                sans,
                not_before: params.not_before,
                not_after: params.not_after,
                revoked_at: None,
                reason: None,
            },
        })
    }

    /// Adds `crl.pem` and `ca-bundle.pem` (derived from `self.index`) and then `index.json`
    /// to `files`. Bumps the CRL number.
    /// Adds `crl.pem` and `ca-bundle.pem` (derived from `self.index`) and then `index.json`
    /// to `files`. The derived files are rewritten only when `revocations_changed` or the set
    /// of trusted CAs differs from `ca-bundle.pem` (an overlap ended): the gateway reloads its
    /// TLS configuration when they change, and minting a sandbox credential must not cause
    /// that.
    fn derived_files(
        &mut self,
        files: &mut FileSet,
        now: OffsetDateTime,
        revocations_changed: bool,
    ) -> Result<(), PkiError> {
        let bundle = self.trust_bundle(now)?;
        let on_disk = std::fs::read(self.dir.ca_bundle_path()).ok();
        if revocations_changed || on_disk.as_deref() != Some(bundle.as_bytes()) {
            let crls = self.crls(now)?;
            files
                .public(self.dir.crl_path(), crls)
                .public(self.dir.ca_bundle_path(), bundle);
        }
        files.public(self.dir.index_path(), self.index.to_json());
        Ok(())
    }

    /// The certificate and (for retired CAs) key of every CA trusted at `now`.
    fn trusted_cas(&self, now: OffsetDateTime) -> Result<Vec<TrustedCa>, PkiError> {
        let mut out = Vec::new();
        for ca in self.index.cas.iter().filter(|c| c.is_trusted_at(now)) {
            if ca.is_current() {
                out.push((ca.clone(), self.cert_der.clone(), None));
                continue;
            }
            let cert_path = self.dir.path().join(&ca.cert_file);
            let der = pem::certificates(
                &fs::read_public(&cert_path)?,
                &cert_path.display().to_string(),
            )?
            .remove(0);
            let key_path = self.dir.path().join(&ca.key_file);
            let key = keys::parse_key(
                &String::from_utf8_lossy(&fs::read_secret(&key_path)?),
                &key_path.display().to_string(),
            )?;
            out.push((ca.clone(), der, Some(key)));
        }
        Ok(out)
    }

    /// PEM of every CA trusted at `now` (the contents of `ca-bundle.pem`).
    fn trust_bundle(&self, now: OffsetDateTime) -> Result<String, PkiError> {
        Ok(self
            .trusted_cas(now)?
            .iter()
            .map(|(_, der, _)| pem::encode("CERTIFICATE", der))
            .collect())
    }

    /// One freshly signed CRL per trusted CA (the contents of `crl.pem`); bumps the CRL number.
    fn crls(&mut self, now: OffsetDateTime) -> Result<String, PkiError> {
        self.index.crl_number += 1;
        let mut crls = String::new();
        for (ca, cert_der, key) in self.trusted_cas(now)? {
            let key_ref = key.as_ref().unwrap_or(&self.key);
            let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key_ref)
                .map_err(PkiError::crypto("read a CA certificate"))?;
            let revoked = self
                .index
                .certificates
                .iter()
                .filter(|e| e.issuer == ca.serial)
                .filter_map(|e| {
                    e.revoked_at.map(|at| RevokedCertParams {
                        serial_number: SerialNumber::from_slice(e.serial.as_bytes()),
                        revocation_time: at,
                        reason_code: reason_code(e.reason.as_deref()),
                        invalidity_date: None,
                    })
                })
                .collect();
            let this_update = now - BACKDATE;
            // The CRL changes only when someone revokes; it is valid as long as its CA.
            let next_update = ca.not_after.max(this_update + time::Duration::days(1));
            let params = CertificateRevocationListParams {
                this_update,
                next_update,
                crl_number: SerialNumber::from_slice(&self.index.crl_number.to_be_bytes()),
                issuing_distribution_point: None,
                revoked_certs: revoked,
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let crl = params
                .signed_by(&issuer)
                .map_err(PkiError::crypto("sign the CRL"))?;
            crls.push_str(&pem::encode("X509 CRL", crl.der()));
        }
        Ok(crls)
    }

    /// Issues a user certificate: CN = `user`, one OU per role, clientAuth. Recorded in the
    /// index; the key is returned, never stored in the PKI.
    pub fn issue_client(
        &mut self,
        user: &str,
        roles: &[String],
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        names::check_user(user)?;
        for r in roles {
            names::check_role(r)?;
        }
        let mut roles = roles.to_vec();
        roles.dedup();
        let change = self.change()?;
        let now = OffsetDateTime::now_utc();
        let issued = self.build_client(user, &roles, CertKind::User, validity, now)?;
        self.index.certificates.push(issued.entry.clone());
        self.commit(change, now)?;
        Ok(issued)
    }

    /// Mints a sandbox supervisor's credential: CN `sandbox:<id>`, OU `sandbox`,
    /// clientAuth, recorded as kind `sandbox`. Returns (cert PEM, key PEM, serial).
    pub fn mint_sandbox_credential(
        &mut self,
        sandbox_id: &str,
        validity: Duration,
    ) -> Result<(String, String, Serial), PkiError> {
        let issued = self.issue_sandbox(sandbox_id, validity, None)?;
        Ok((issued.cert_pem, issued.key_pem, issued.serial))
    }

    /// Renews a sandbox supervisor's credential: a certificate like
    /// [`mint_sandbox_credential`](Self::mint_sandbox_credential)'s, from the current CA, for
    /// the key of `csr_pem`. The request's signature is verified (its sender holds the key);
    /// nothing else of it is used, so a request cannot choose its name, roles or validity.
    /// Returns (cert PEM, serial).
    pub fn sign_sandbox_csr(
        &mut self,
        sandbox_id: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<(String, Serial), PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadInput {
                what: "the certificate request".into(),
                why: format!("{e}; send a PKCS#10 request (PEM) signed by the new key"),
            }
        })?;
        let issued = self.issue_sandbox(sandbox_id, validity, Some(&csr.public_key))?;
        Ok((issued.cert_pem, issued.serial))
    }

    /// A sandbox credential for `public`, or for a new key (returned in `key_pem`).
    fn issue_sandbox(
        &mut self,
        sandbox_id: &str,
        validity: Duration,
        public: Option<&rcgen::PublicKey>,
    ) -> Result<IssuedCert, PkiError> {
        names::check_sandbox_id(sandbox_id)?;
        let change = self.change()?;
        let now = OffsetDateTime::now_utc();
        let cn = format!("{SANDBOX_CN_PREFIX}{sandbox_id}");
        let units = [SANDBOX_OU.to_string()];
        let issued = match public {
            Some(key) => {
                self.build_client_for(&cn, &units, CertKind::Sandbox, validity, now, key)?
            }
            None => self.build_client(&cn, &units, CertKind::Sandbox, validity, now)?,
        };
        self.index.certificates.push(issued.entry.clone());
        self.commit(change, now)?;
        Ok(issued)
    }

    /// Re-issues the gateway certificate (`rotate-server`). `extra_sans` are added to the
    /// SANs recorded at `init`; the defaults are always present. Writes `server/tls.{crt,key}`.
    pub fn issue_server(
        &mut self,
        extra_sans: &[San],
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let mut change = self.change()?;
        let now = OffsetDateTime::now_utc();
        for s in extra_sans {
            if !self.index.server_sans.contains(s) {
                self.index.server_sans.push(s.clone());
            }
        }
        let sans = self.index.server_sans.clone();
        let cross = self.current_cross(now);
        let issued = self.build_server(&sans, validity, now, &cross)?;
        self.index.certificates.push(issued.entry.clone());
        change
            .files
            .public(self.dir.server_cert_path(), issued.cert_pem.clone())
            .secret(self.dir.server_key_path(), issued.key_pem.clone());
        self.commit(change, now)?;
        Ok(issued)
    }

    /// Revokes one certificate (by serial) or every usable certificate of a user (by CN) and
    /// rewrites `crl.pem`. Returns the entries revoked.
    pub fn revoke(
        &mut self,
        serial_or_user: &str,
        reason: Option<&str>,
    ) -> Result<Vec<IndexEntry>, PkiError> {
        let mut change = self.change()?;
        change.revocations_changed = true;
        let now = OffsetDateTime::now_utc();
        let query = serial_or_user.trim();
        let by_serial = Serial::parse(query)
            .ok()
            .filter(|s| self.index.find(s).is_some());
        let targets: Vec<usize> = match &by_serial {
            Some(serial) => {
                let i = self
                    .index
                    .certificates
                    .iter()
                    .position(|e| &e.serial == serial)
                    .ok_or_else(|| self.unknown(query))?;
                if let Some(at) = self.index.certificates[i].revoked_at {
                    return Err(PkiError::NothingToRevoke {
                        query: query.into(),
                        why: format!("it was already revoked at {}", format_time(at)),
                    });
                }
                vec![i]
            }
            None => {
                let all: Vec<usize> = self
                    .index
                    .certificates
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.subject_cn == query)
                    .map(|(i, _)| i)
                    .collect();
                if all.is_empty() {
                    return Err(self.unknown(query));
                }
                let usable: Vec<usize> = all
                    .into_iter()
                    .filter(|i| self.index.certificates[*i].is_usable_at(now))
                    .collect();
                if usable.is_empty() {
                    return Err(PkiError::NothingToRevoke {
                        query: query.into(),
                        why: "every certificate of that user is already revoked or expired".into(),
                    });
                }
                usable
            }
        };
        for &i in &targets {
            let e = &mut self.index.certificates[i];
            e.revoked_at = Some(now);
            e.reason = reason.map(str::to_string);
        }
        let revoked = targets
            .iter()
            .map(|&i| self.index.certificates[i].clone())
            .collect();
        self.commit(change, now)?;
        Ok(revoked)
    }

    fn unknown(&self, query: &str) -> PkiError {
        PkiError::UnknownCertificate {
            query: query.into(),
            index: self.dir.index_path(),
        }
    }

    /// Replaces the CA. The new CA issues from now on; the old one stays in the client trust
    /// bundle (and its CRL stays signed) for `overlap`, then drops out. The gateway
    /// certificate is re-issued by the new CA and carries a cross certificate (new CA signed by
    /// the old) during the overlap, so clients that only have the old `ca.crt` still verify it.
    pub fn rotate_ca(&mut self, overlap: Duration) -> Result<RotatedCa, PkiError> {
        let mut change = self.change()?;
        change.revocations_changed = true;
        let now = OffsetDateTime::now_utc();
        let old = self.index.current_ca().clone();
        let old_trusted_until = (now + overlap.to_time()).min(old.not_after);
        let ca_validity =
            Duration::from_secs(self.index.ca_validity_secs).unwrap_or(DEFAULT_CA_VALIDITY);
        let new_key = self.index.key_type.generate()?;
        let (new_params, new_serial) = ca_params(ca_validity, now)?;
        let new_cert = new_params
            .self_signed(&new_key)
            .map_err(PkiError::crypto("create the new CA certificate"))?;
        // Cross certificate: the new CA's name and key, signed by the old CA, valid only
        // for the overlap.
        let mut cross_params = new_params.clone();
        cross_params.serial_number = Some(SerialNumber::from_slice(Serial::random()?.as_bytes()));
        cross_params.not_after = old_trusted_until;
        cross_params.use_authority_key_identifier_extension = true;
        let cross = cross_params
            .signed_by(&new_key, &self.issuer()?)
            .map_err(PkiError::crypto("cross-sign the new CA"))?;

        // The old CA's copy under retired/ is a new file nobody refers to until index.json
        // does, so it is written first and removed again if the change fails.
        let retired = self.dir.retired_dir(&old.serial);
        fs::write_public(&retired.join("ca.crt"), self.cert_pem.as_bytes())?;
        fs::write_secret(&retired.join("ca.key"), self.key.serialize_pem().as_bytes())?;
        let result = self.switch_to_new_ca(
            change,
            &old,
            old_trusted_until,
            new_params,
            new_serial.clone(),
            new_cert.der().to_vec(),
            new_key,
            cross.der().to_vec(),
            now,
        );
        match result {
            Ok(server) => Ok(RotatedCa {
                old_serial: old.serial,
                new_serial,
                old_trusted_until,
                server,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&retired);
                // `self` may already be the new CA in memory: go back to what is on disk.
                if let Ok(fresh) = Ca::load(&self.dir) {
                    *self = fresh;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn switch_to_new_ca(
        &mut self,
        mut change: Change,
        old: &CaRecord,
        old_trusted_until: OffsetDateTime,
        new_params: CertificateParams,
        new_serial: Serial,
        new_cert_der: Vec<u8>,
        new_key: KeyPair,
        cross_der: Vec<u8>,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let rel = |name: &str| format!("retired/{}/{name}", old.serial);
        for ca in &mut self.index.cas {
            if ca.serial == old.serial {
                ca.cert_file = rel("ca.crt");
                ca.key_file = rel("ca.key");
                ca.trusted_until = Some(old_trusted_until);
            }
        }
        self.index.cas.push(CaRecord {
            serial: new_serial,
            subject: ca_common_name(&new_params),
            not_before: new_params.not_before,
            not_after: new_params.not_after,
            cert_file: "ca.crt".into(),
            key_file: "ca.key".into(),
            trusted_until: None,
        });
        // From here on `self` is the new CA (in memory until the commit).
        self.cert_pem = pem::encode("CERTIFICATE", &new_cert_der);
        self.cert_der = new_cert_der;
        self.key = new_key;
        let sans = self.index.server_sans.clone();
        let ca_validity =
            Duration::from_secs(self.index.ca_validity_secs).unwrap_or(DEFAULT_CA_VALIDITY);
        let server = self.build_server(
            &sans,
            DEFAULT_SERVER_VALIDITY.min(ca_validity),
            now,
            std::slice::from_ref(&cross_der),
        )?;
        self.index.certificates.push(server.entry.clone());
        change
            .files
            .public(
                self.dir.cross_cert_path(),
                pem::encode("CERTIFICATE", &cross_der),
            )
            .public(self.dir.ca_cert_path(), self.cert_pem.clone())
            .secret(self.dir.ca_key_path(), self.key.serialize_pem())
            .public(self.dir.server_cert_path(), server.cert_pem.clone())
            .secret(self.dir.server_key_path(), server.key_pem.clone());
        self.commit(change, now)?;
        Ok(server)
    }

    /// Inspects a certificate file or directory against this PKI.
    pub fn inspect(&self, path: &Path) -> Result<crate::inspect::CertInfo, PkiError> {
        crate::inspect::inspect_path(path, Some(&self.dir))
    }
}

#[cfg(test)]
thread_local! {
    /// Names a step at which the current thread's next PKI change fails (rollback tests).
    pub(crate) static FAILPOINT: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// Fails here when a test armed this step; a no-op otherwise.
fn failpoint(_step: &'static str) -> Result<(), PkiError> {
    #[cfg(test)]
    if FAILPOINT.with(|f| f.get()) == Some(_step) {
        return Err(PkiError::bad_input("an injected failure", _step));
    }
    Ok(())
}
