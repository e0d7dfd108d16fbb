//! Scenario tests of the whole CA against real files, checked with the rustls verifiers the
//! gateway and the CLI use.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use x509_parser::prelude::*;

use crate::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

struct TestPki {
    _tmp: tempfile::TempDir,
    dir: PkiDir,
    ca: Ca,
}

impl TestPki {
    fn new() -> TestPki {
        TestPki::with(InitOptions::default())
    }

    fn with(opts: InitOptions) -> TestPki {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path().join("pki"));
        let ca = init(&dir, opts).unwrap();
        TestPki { _tmp: tmp, dir, ca }
    }

    fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for der in parse_certificates(&self.dir.client_ca_bundle().unwrap(), "bundle").unwrap() {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let crls = self
            .dir
            .crl_ders()
            .unwrap()
            .into_iter()
            .map(CertificateRevocationListDer::from);
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(crls)
        .build()
        .unwrap()
    }
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    parse_certificates(pem.as_bytes(), "test")
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect()
}

fn client_ok(v: &Arc<dyn ClientCertVerifier>, cert_pem: &str) -> Result<(), rustls::Error> {
    let chain = ders(cert_pem);
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

fn server_ok(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for d in ders(ca_pem) {
        roots.add(d).unwrap();
    }
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let chain = ders(chain_pem);
    v.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from(name.to_string()).unwrap(),
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn init_writes_every_file_owner_only_where_secret() {
    let t = TestPki::new();
    let d = &t.dir;
    assert_eq!(mode(d.path()), 0o700);
    assert_eq!(mode(&d.ca_key_path()), 0o600);
    assert_eq!(mode(&d.server_key_path()), 0o600);
    assert_eq!(mode(d.server_key_path().parent().unwrap()), 0o700);
    for p in [
        d.ca_cert_path(),
        d.server_cert_path(),
        d.crl_path(),
        d.index_path(),
        d.ca_bundle_path(),
    ] {
        assert_eq!(mode(&p), 0o644, "{}", p.display());
    }
    // Nothing else left behind: no staging or temp files beside or inside.
    let parent: Vec<_> = std::fs::read_dir(d.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(parent, ["pki"]);
    let index = d.index().unwrap();
    assert_eq!(index.certificates.len(), 1);
    assert_eq!(index.certificates[0].kind, CertKind::Server);
    assert_eq!(d.crl_ders().unwrap().len(), 1);
    assert!(d.revoked_serials().unwrap().is_empty());
}

#[test]
fn certificate_profiles() {
    let mut t = TestPki::with(InitOptions {
        sans: vec![
            San::parse("gw.example.com").unwrap(),
            San::parse("10.1.2.3").unwrap(),
        ],
        ..Default::default()
    });
    let ca_der = parse_certificates(read(t.dir.ca_cert_path()).as_bytes(), "ca").unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der[0]).unwrap();
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let years =
        (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
    assert!((3650..=3651).contains(&years), "{years}");

    let server = inspect_path(&t.dir.server_cert_path(), Some(&t.dir)).unwrap();
    assert_eq!(server.ekus, ["serverAuth"]);
    for san in [
        "localhost",
        "127.0.0.1",
        "::1",
        "host.docker.internal",
        "host.containers.internal",
        "gw.example.com",
        "10.1.2.3",
    ] {
        assert!(
            server.sans.iter().any(|s| s == san),
            "{san} missing from {:?}",
            server.sans
        );
    }
    if let Some(h) = host_name() {
        assert!(server.sans.contains(&h.to_string()));
    }
    assert!(server.chains_to_ca);
    assert_eq!(server.key_type, "ecdsa-p256");
    assert_eq!(server.key_matches, None);
    let dir_info = inspect_path(t.dir.server_cert_path().parent().unwrap(), Some(&t.dir)).unwrap();
    assert_eq!(dir_info.key_matches, Some(true));
    assert_eq!(
        server_ok(
            t.ca.cert_pem(),
            &read(t.dir.server_cert_path()),
            "gw.example.com"
        ),
        Ok(())
    );
    assert!(
        server_ok(
            t.ca.cert_pem(),
            &read(t.dir.server_cert_path()),
            "evil.example.com"
        )
        .is_err()
    );

    let alice =
        t.ca.issue_client(
            "alice",
            &["admin".into(), "viewer".into()],
            DEFAULT_CLIENT_VALIDITY,
        )
        .unwrap();
    let info = inspect_bytes(alice.cert_pem.as_bytes(), "alice", Some(&t.dir)).unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some("alice"));
    assert_eq!(info.roles, ["admin", "viewer"]);
    assert_eq!(info.ekus, ["clientAuth"]);
    assert!(info.chains_to_ca && !info.revoked && !info.is_ca);
    assert_eq!(info.serial, alice.serial);
    assert_eq!(info.serial.as_bytes().len(), 16);
    let lifetime = alice.entry.not_after - alice.entry.not_before;
    assert_eq!(
        lifetime,
        ::time::Duration::days(90) + ::time::Duration::minutes(1)
    );
    assert!(
        alice.entry.not_before < ::time::OffsetDateTime::now_utc() - ::time::Duration::seconds(30)
    );
    let der = &parse_certificates(alice.cert_pem.as_bytes(), "a").unwrap()[0];
    let want = ring::digest::digest(&ring::digest::SHA256, der);
    assert_eq!(
        info.sha256_fingerprint.replace(':', "").to_lowercase(),
        hex::encode(want)
    );
    assert_eq!(client_ok(&t.client_verifier(), &alice.cert_pem), Ok(()));
    assert!(!format!("{alice:?}").contains("PRIVATE"));
}

#[test]
fn ed25519_pki_works_end_to_end() {
    let mut t = TestPki::with(InitOptions {
        key_type: KeyType::Ed25519,
        ..Default::default()
    });
    let bob = t.ca.issue_client("bob", &[], Duration::days(1)).unwrap();
    assert_eq!(
        inspect_bytes(bob.cert_pem.as_bytes(), "b", None)
            .unwrap()
            .key_type,
        "ed25519"
    );
    assert_eq!(client_ok(&t.client_verifier(), &bob.cert_pem), Ok(()));
    assert_eq!(
        server_ok(
            t.ca.cert_pem(),
            &read(t.dir.server_cert_path()),
            "localhost"
        ),
        Ok(())
    );
}

#[test]
fn revocation_reaches_the_crl_and_the_verifier() {
    let mut t = TestPki::new();
    let alice =
        t.ca.issue_client("alice", &["admin".into()], Duration::days(30))
            .unwrap();
    let bob = t.ca.issue_client("bob", &[], Duration::days(30)).unwrap();
    let (sb_cert, sb_key, sb_serial) =
        t.ca.mint_sandbox_credential("sb-1", Duration::days(1))
            .unwrap();
    assert!(sb_key.contains("PRIVATE KEY"));
    let sb = inspect_bytes(sb_cert.as_bytes(), "sb", Some(&t.dir)).unwrap();
    assert_eq!(sb.subject_cn.as_deref(), Some("sandbox:sb-1"));
    assert_eq!(sb.roles, ["sandbox"]);
    assert_eq!(
        t.dir.lookup(&sb_serial).unwrap().unwrap().kind,
        CertKind::Sandbox
    );
    let v = t.client_verifier();
    assert_eq!(client_ok(&v, &alice.cert_pem), Ok(()));
    assert_eq!(client_ok(&v, &sb_cert), Ok(()));

    let revoked =
        t.ca.revoke(&alice.serial.to_string(), Some("key-compromise"))
            .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(mode(&t.dir.crl_path()), 0o644);
    // The CRL lists exactly alice, with the reason, and is signed by the CA.
    let crl_der = &t.dir.crl_ders().unwrap()[0];
    let (_, crl) = parse_x509_crl(crl_der).unwrap();
    let listed: Vec<Serial> = crl
        .iter_revoked_certificates()
        .map(|r| Serial::from_der_integer(r.raw_serial()).unwrap())
        .collect();
    assert_eq!(listed, std::slice::from_ref(&alice.serial));
    let reason = crl
        .iter_revoked_certificates()
        .next()
        .unwrap()
        .reason_code()
        .unwrap()
        .1;
    assert_eq!(reason, x509_parser::x509::ReasonCode::KeyCompromise);
    let ca_der = parse_certificates(t.ca.cert_pem().as_bytes(), "ca").unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der[0]).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    assert!(crl.crl_number().is_some());

    assert!(t.dir.revoked_serials().unwrap().contains(&alice.serial));
    let v = t.client_verifier();
    assert!(client_ok(&v, &alice.cert_pem).is_err());
    assert_eq!(client_ok(&v, &bob.cert_pem), Ok(()));
    let info = inspect_bytes(alice.cert_pem.as_bytes(), "a", Some(&t.dir)).unwrap();
    assert!(info.revoked);
    assert_eq!(info.status, CertStatus::Revoked);

    // Again: a clear error, nothing changes.
    let err =
        t.ca.revoke(&alice.serial.to_string(), None)
            .unwrap_err()
            .to_string();
    assert!(err.contains("already revoked"), "{err}");
    let err = t.ca.revoke("nobody", None).unwrap_err().to_string();
    assert!(
        err.contains("'nobody'") && err.contains("openshell pki list"),
        "{err}"
    );
    let err =
        t.ca.revoke("0123456789abcdef", None)
            .unwrap_err()
            .to_string();
    assert!(err.contains("no certificate"), "{err}");
}

#[test]
fn revoking_a_user_revokes_every_usable_certificate() {
    let mut t = TestPki::new();
    let a1 = t.ca.issue_client("carol", &[], Duration::days(10)).unwrap();
    let a2 =
        t.ca.issue_client("carol", &["viewer".into()], Duration::days(10))
            .unwrap();
    let other = t.ca.issue_client("dave", &[], Duration::days(10)).unwrap();
    let revoked = t.ca.revoke("carol", Some("left the team")).unwrap();
    let mut serials: Vec<_> = revoked.iter().map(|e| e.serial.clone()).collect();
    serials.sort();
    let mut want = vec![a1.serial, a2.serial];
    want.sort();
    assert_eq!(serials, want);
    let set = t.dir.revoked_serials().unwrap();
    assert_eq!(set.len(), 2);
    assert!(!set.contains(&other.serial));
    let err = t.ca.revoke("carol", None).unwrap_err().to_string();
    assert!(err.contains("already revoked or expired"), "{err}");
    let entry = t
        .dir
        .index()
        .unwrap()
        .certificates
        .into_iter()
        .find(|e| e.subject_cn == "carol")
        .unwrap();
    assert_eq!(entry.reason.as_deref(), Some("left the team"));
}

#[test]
fn ca_rotation_keeps_old_clients_working_for_the_overlap() {
    let mut t = TestPki::with(InitOptions {
        sans: vec![San::parse("gw.internal").unwrap()],
        ..Default::default()
    });
    let old_ca_pem = t.ca.cert_pem().to_string();
    let old_client = t.ca.issue_client("old", &[], Duration::days(30)).unwrap();
    let doomed =
        t.ca.issue_client("doomed", &[], Duration::days(30))
            .unwrap();
    let rotated = t.ca.rotate_ca(Duration::days(7)).unwrap();
    assert_ne!(rotated.old_serial, rotated.new_serial);
    assert_eq!(t.ca.serial(), &rotated.new_serial);
    let new_client = t.ca.issue_client("new", &[], Duration::days(30)).unwrap();

    // Both CAs are trusted for clients, each with its own CRL.
    assert_eq!(
        parse_certificates(&t.dir.client_ca_bundle().unwrap(), "b")
            .unwrap()
            .len(),
        2
    );
    assert_eq!(t.dir.crl_ders().unwrap().len(), 2);
    assert_eq!(
        read(t.dir.ca_bundle_path()).as_bytes(),
        &t.dir.client_ca_bundle().unwrap()[..]
    );
    let v = t.client_verifier();
    assert_eq!(client_ok(&v, &old_client.cert_pem), Ok(()));
    assert_eq!(client_ok(&v, &new_client.cert_pem), Ok(()));

    // Revoking a certificate of the old CA during the overlap works (the old CA signs it).
    t.ca.revoke("doomed", None).unwrap();
    assert!(client_ok(&t.client_verifier(), &doomed.cert_pem).is_err());
    assert_eq!(
        client_ok(&t.client_verifier(), &old_client.cert_pem),
        Ok(())
    );

    // The server certificate comes from the new CA; clients holding only the old ca.crt
    // still verify it through the cross certificate, new clients directly.
    let chain = read(t.dir.server_cert_path());
    assert_eq!(ders(&chain).len(), 2);
    assert_eq!(server_ok(&old_ca_pem, &chain, "gw.internal"), Ok(()));
    assert_eq!(server_ok(t.ca.cert_pem(), &chain, "gw.internal"), Ok(()));
    let info = inspect_path(&t.dir.server_cert_path(), Some(&t.dir)).unwrap();
    assert!(info.chains_to_ca);
    // rotate-server during the overlap keeps the cross certificate.
    t.ca.issue_server(&[], Duration::days(30)).unwrap();
    assert_eq!(
        server_ok(&old_ca_pem, &read(t.dir.server_cert_path()), "gw.internal"),
        Ok(())
    );

    // After the overlap the old CA drops out of the trust bundle on its own.
    let later = ::time::OffsetDateTime::now_utc() + ::time::Duration::days(8);
    let bundle = t.dir.client_ca_bundle_at(later).unwrap();
    let cas = parse_certificates(&bundle, "b").unwrap();
    assert_eq!(cas.len(), 1);
    assert_eq!(
        cas[0],
        parse_certificates(t.ca.cert_pem().as_bytes(), "c").unwrap()[0]
    );
    let change = t.dir.next_trust_change().unwrap().unwrap();
    assert_eq!(change, rotated.old_trusted_until);
    let retired = t.dir.retired_dir(&rotated.old_serial);
    assert_eq!(mode(&retired.join("ca.key")), 0o600);
    assert_eq!(mode(&retired), 0o700);
}

#[test]
fn failed_rotation_changes_nothing() {
    let mut t = TestPki::new();
    let before: Vec<_> = [
        "ca.crt",
        "ca.key",
        "index.json",
        "crl.pem",
        "server/tls.crt",
    ]
    .iter()
    .map(|f| read(t.dir.path().join(f)))
    .collect();
    crate::ca::FAILPOINT.with(|f| f.set(Some("before-commit")));
    let err = t.ca.rotate_ca(Duration::days(1)).unwrap_err().to_string();
    crate::ca::FAILPOINT.with(|f| f.set(None));
    assert!(err.contains("injected"), "{err}");
    let after: Vec<_> = [
        "ca.crt",
        "ca.key",
        "index.json",
        "crl.pem",
        "server/tls.crt",
    ]
    .iter()
    .map(|f| read(t.dir.path().join(f)))
    .collect();
    assert_eq!(before, after);
    assert!(
        !t.dir
            .path()
            .join("retired")
            .join(t.ca.serial().to_string())
            .exists()
    );
    // In memory too, the old CA is still the current one.
    assert_eq!(t.ca.cert_pem(), before[0]);
    // The CA still works.
    t.ca.issue_client("x", &[], Duration::days(1)).unwrap();
}

#[test]
fn failed_init_leaves_nothing_and_keeps_the_old_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = PkiDir::new(tmp.path().join("pki"));
    crate::ca::FAILPOINT.with(|f| f.set(Some("init-before-rename")));
    assert!(init(&dir, InitOptions::default()).is_err());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    crate::ca::FAILPOINT.with(|f| f.set(None));

    let ca = init(&dir, InitOptions::default()).unwrap();
    let old = read(dir.ca_cert_path());
    let err = init(&dir, InitOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("already exists") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    crate::ca::FAILPOINT.with(|f| f.set(Some("init-before-rename")));
    assert!(
        init(
            &dir,
            InitOptions {
                force: true,
                ..Default::default()
            }
        )
        .is_err()
    );
    crate::ca::FAILPOINT.with(|f| f.set(None));
    assert_eq!(read(dir.ca_cert_path()), old);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let replaced = init(
        &dir,
        InitOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(replaced.serial(), ca.serial());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn failed_issue_and_revoke_change_nothing() {
    let mut t = TestPki::new();
    let alice = t.ca.issue_client("alice", &[], Duration::days(1)).unwrap();
    let files = ["index.json", "crl.pem", "ca-bundle.pem"];
    let before: Vec<_> = files.iter().map(|f| read(t.dir.path().join(f))).collect();
    crate::ca::FAILPOINT.with(|f| f.set(Some("before-commit")));
    assert!(t.ca.issue_client("bob", &[], Duration::days(1)).is_err());
    assert!(t.ca.revoke("alice", None).is_err());
    assert!(
        t.ca.mint_sandbox_credential("s", Duration::days(1))
            .is_err()
    );
    assert!(t.ca.issue_server(&[], Duration::days(1)).is_err());
    crate::ca::FAILPOINT.with(|f| f.set(None));
    let after: Vec<_> = files.iter().map(|f| read(t.dir.path().join(f))).collect();
    assert_eq!(before, after);
    // The in-memory state was reloaded: no phantom entries.
    assert_eq!(t.ca.index().certificates.len(), 2);
    assert!(
        t.ca.index()
            .find(&alice.serial)
            .unwrap()
            .revoked_at
            .is_none()
    );
}

#[test]
fn init_never_replaces_a_directory_that_is_not_a_pki() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "x").unwrap();
    let dir = PkiDir::new(tmp.path());
    for force in [false, true] {
        let opts = InitOptions {
            force,
            ..Default::default()
        };
        let err = init(&dir, opts).unwrap_err().to_string();
        assert!(err.contains("holds no PKI"), "{err}");
    }
    assert!(tmp.path().join("precious.txt").exists());
    // An empty existing directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    init(&PkiDir::new(&empty), InitOptions::default()).unwrap();
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let mut t = TestPki::new();
    let err =
        t.ca.issue_client("eve", &[], Duration::parse("11y").unwrap())
            .unwrap_err()
            .to_string();
    assert!(err.contains("outlive the CA"), "{err}");
    assert!(
        t.ca.issue_client("sandbox:x", &[], Duration::days(1))
            .is_err()
    );
    assert!(
        t.ca.issue_client("eve", &["sandbox".into()], Duration::days(1))
            .is_err()
    );
    assert!(
        t.ca.mint_sandbox_credential("../x", Duration::days(1))
            .is_err()
    );
    // Failed attempts are not recorded.
    assert_eq!(t.dir.index().unwrap().certificates.len(), 1);

    // Missing CA.
    let empty = tempfile::tempdir().unwrap();
    let err = Ca::load(&PkiDir::new(empty.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("openshell pki init"), "{err}");

    // A CA key others can read is refused with the fix.
    std::fs::set_permissions(t.dir.ca_key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Ca::load(&t.dir).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(t.dir.ca_key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A key that does not match the certificate.
    let other = TestPki::new();
    std::fs::copy(other.dir.ca_key_path(), t.dir.ca_key_path()).unwrap();
    let err = Ca::load(&t.dir).unwrap_err().to_string();
    assert!(err.contains("does not belong"), "{err}");

    // Garbage key and certificate.
    std::fs::write(t.dir.ca_key_path(), "garbage").unwrap();
    assert!(Ca::load(&t.dir).unwrap_err().to_string().contains("ca.key"));
    std::fs::write(
        t.dir.ca_cert_path(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(Ca::load(&t.dir).unwrap_err().to_string().contains("ca.crt"));
    std::fs::write(t.dir.index_path(), "{").unwrap();
    assert!(
        Ca::load(&t.dir)
            .unwrap_err()
            .to_string()
            .contains("index.json is damaged")
    );
}

#[test]
fn bundles_round_trip_in_any_order_and_install_atomically() {
    let mut t = TestPki::new();
    let alice =
        t.ca.issue_client("alice", &["admin".into()], Duration::days(5))
            .unwrap();
    let bundle = ClientBundle {
        ca_pem: t.ca.cert_pem().to_string(),
        cert_pem: alice.cert_pem.clone(),
        key_pem: alice.key_pem.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("alice.pem");
    write_bundle(&bundle, &file).unwrap();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(read_bundle(&file).unwrap(), bundle);

    // Order does not matter (user demand #4).
    let shuffled = format!("{}{}{}", bundle.key_pem, bundle.cert_pem, bundle.ca_pem);
    assert_eq!(
        ClientBundle::from_pem(shuffled.as_bytes(), "s").unwrap(),
        bundle
    );

    // Wrong key, missing parts, foreign CA, garbage.
    let bob = t.ca.issue_client("bob", &[], Duration::days(5)).unwrap();
    let wrong = format!("{}{}{}", bundle.ca_pem, bundle.cert_pem, bob.key_pem);
    assert!(
        ClientBundle::from_pem(wrong.as_bytes(), "w")
            .unwrap_err()
            .to_string()
            .contains("does not belong")
    );
    let no_key = format!("{}{}", bundle.ca_pem, bundle.cert_pem);
    assert!(
        ClientBundle::from_pem(no_key.as_bytes(), "n")
            .unwrap_err()
            .to_string()
            .contains("one private key")
    );
    let foreign = TestPki::new();
    let alien = format!(
        "{}{}{}",
        foreign.ca.cert_pem(),
        bundle.cert_pem,
        bundle.key_pem
    );
    assert!(
        ClientBundle::from_pem(alien.as_bytes(), "f")
            .unwrap_err()
            .to_string()
            .contains("not issued by")
    );
    assert!(ClientBundle::from_pem(b"\x00\xffjunk", "g").is_err());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        read_bundle(&file)
            .unwrap_err()
            .to_string()
            .contains("chmod 600")
    );

    // Install: modes, and the existing-credential check.
    let mtls = tmp.path().join("gateways/prod/mtls");
    let now = ::time::OffsetDateTime::now_utc();
    bundle::check_replace(&mtls, false, now).unwrap();
    install_bundle(&bundle, &mtls).unwrap();
    assert_eq!(mode(&mtls), 0o700);
    assert_eq!(mode(&mtls.join("tls.key")), 0o600);
    assert_eq!(mode(&mtls.join("tls.crt")), 0o644);
    assert_eq!(read(mtls.join("tls.key")), bundle.key_pem);
    let err = bundle::check_replace(&mtls, false, now)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'alice'")
            && err.contains(&alice.serial.to_string())
            && err.contains("--force"),
        "{err}"
    );
    bundle::check_replace(&mtls, true, now).unwrap();
    // Expired credentials may be replaced without --force.
    bundle::check_replace(&mtls, false, now + ::time::Duration::days(6)).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(mtls.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["mtls"]);
}

#[test]
fn concurrent_changes_are_all_recorded() {
    let t = TestPki::new();
    let crl_before = read(t.dir.crl_path());
    let bundle_before = read(t.dir.ca_bundle_path());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let dir = t.dir.clone();
            std::thread::spawn(move || {
                let mut ca = Ca::load(&dir).unwrap();
                for j in 0..3 {
                    ca.mint_sandbox_credential(&format!("sb-{i}-{j}"), Duration::days(1))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Minting did not touch the files the gateway reloads on.
    assert_eq!(read(t.dir.crl_path()), crl_before);
    assert_eq!(read(t.dir.ca_bundle_path()), bundle_before);
    let index = t.dir.index().unwrap();
    assert_eq!(
        index
            .certificates
            .iter()
            .filter(|e| e.kind == CertKind::Sandbox)
            .count(),
        12
    );
    // The lock file stays (0600); the lock itself is released.
    assert_eq!(mode(&t.dir.lock_path()), 0o600);
}

#[test]
fn inspect_handles_garbage() {
    for input in [
        &b""[..],
        b"garbage",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    ] {
        let err = inspect_bytes(input, "x.pem", None).unwrap_err().to_string();
        assert!(err.contains("x.pem"), "{err}");
    }
    // PEM with leading text that starts with '0' (0x30, the DER SEQUENCE tag) is still PEM.
    let t = TestPki::new();
    let text = format!("0 comment\n{}", read(t.dir.ca_cert_path()));
    assert!(inspect_bytes(text.as_bytes(), "c", None).unwrap().is_ca);
    let by_text = inspect(&read(t.dir.ca_cert_path()), Some(&t.dir)).unwrap();
    let by_path = inspect(t.dir.ca_cert_path().to_str().unwrap(), Some(&t.dir)).unwrap();
    assert_eq!(by_text.serial, by_path.serial);
    assert!(by_text.chains_to_ca);
    let tmp = tempfile::tempdir().unwrap();
    let err = inspect_path(tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("no tls.crt"), "{err}");
}

mod untrusted_input {
    //! The same calls as `fuzz/fuzz_targets/parse_cert.rs`, on random bytes and on
    //! corrupted real certificates and bundles, so the parsers are exercised in every
    //! `cargo test` (cargo-fuzz needs nightly).
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn all_parsers(data: &[u8]) {
        let _ = parse_certificates(data, "fuzz");
        let _ = inspect_bytes(data, "fuzz", None);
        let _ = ClientBundle::from_pem(data, "fuzz");
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = Serial::parse(text);
            let _ = Duration::parse(text);
            let _ = San::parse(text);
        }
    }

    /// A real bundle (PEM) and client certificate (DER), made once.
    fn samples() -> &'static (String, Vec<u8>) {
        static SAMPLES: OnceLock<(String, Vec<u8>)> = OnceLock::new();
        SAMPLES.get_or_init(|| {
            let mut t = TestPki::new();
            let c =
                t.ca.issue_client("fuzz", &["user".into(), "viewer".into()], Duration::days(1))
                    .unwrap();
            let bundle = format!("{}{}{}", t.ca.cert_pem(), c.cert_pem, c.key_pem);
            let der = parse_certificates(c.cert_pem.as_bytes(), "c")
                .unwrap()
                .remove(0);
            (bundle, der)
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            all_parsers(&data);
        }

        #[test]
        fn corrupted_der_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut der = samples().1.clone();
            for (at, byte) in flips {
                let i = at % der.len();
                der[i] ^= byte | 1;
            }
            all_parsers(&der);
            all_parsers(&der[..cut % der.len()]);
        }

        #[test]
        fn corrupted_bundles_never_panic_or_pass(at in any::<usize>(), byte in 1u8..) {
            let mut text = samples().0.clone().into_bytes();
            let i = at % text.len();
            text[i] ^= byte;
            all_parsers(&text);
            // A changed byte inside a signed certificate or the key must not yield a bundle
            // that still checks out with different content.
            if let Ok(b) = ClientBundle::from_pem(&text, "mutated") {
                let original = ClientBundle::from_pem(samples().0.as_bytes(), "o").unwrap();
                prop_assert_eq!(b.describe().unwrap(), original.describe().unwrap());
            }
        }
    }

    #[test]
    fn the_uncorrupted_samples_parse() {
        let (bundle, der) = samples();
        assert!(ClientBundle::from_pem(bundle.as_bytes(), "b").is_ok());
        assert_eq!(
            inspect_bytes(der, "d", None).unwrap().roles,
            ["user", "viewer"]
        );
    }
}

#[test]
fn the_next_change_after_an_overlap_drops_the_old_ca_from_the_files() {
    let mut t = TestPki::new();
    let old = t.ca.issue_client("old", &[], Duration::days(1)).unwrap();
    t.ca.rotate_ca(Duration::from_secs(1).unwrap()).unwrap();
    assert_eq!(count_pem(&read(t.dir.ca_bundle_path())), 2);
    assert_eq!(client_ok(&t.client_verifier(), &old.cert_pem), Ok(()));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The computed bundle already excludes it; the file follows at the next change.
    assert_eq!(
        count_pem(&String::from_utf8(t.dir.client_ca_bundle().unwrap()).unwrap()),
        1
    );
    t.ca.mint_sandbox_credential("after", Duration::days(1))
        .unwrap();
    assert_eq!(count_pem(&read(t.dir.ca_bundle_path())), 1);
    assert_eq!(t.dir.crl_ders().unwrap().len(), 1);
    assert!(client_ok(&t.client_verifier(), &old.cert_pem).is_err());
    assert_eq!(t.dir.next_trust_change().unwrap(), Some(t.ca.not_after()));
}

fn count_pem(text: &str) -> usize {
    text.matches("-----BEGIN ").count()
}

#[test]
fn types_the_gateway_shares_across_tasks_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Ca>();
    check::<PkiDir>();
    check::<PkiError>();
    check::<ClientBundle>();
    check::<CertInfo>();
}

#[test]
fn a_sandbox_renews_with_a_request_for_its_own_key_and_nothing_else_of_it_counts() {
    let mut t = TestPki::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut asked = rcgen::CertificateParams::new(vec!["evil.example".into()]).unwrap();
    asked
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
    let (cert, serial) =
        t.ca.sign_sandbox_csr("sb-2", &csr, Duration::days(1))
            .unwrap();
    let info = inspect_bytes(cert.as_bytes(), "renewed", Some(&t.dir)).unwrap();
    // The name and role are the sandbox's, whatever the request said.
    assert_eq!(info.subject_cn.as_deref(), Some("sandbox:sb-2"));
    assert_eq!(info.roles, ["sandbox"]);
    assert_eq!(
        t.dir.lookup(&serial).unwrap().unwrap().kind,
        CertKind::Sandbox
    );
    // The certificate carries the requester's key.
    let der = ders(&cert).remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        parsed.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(client_ok(&t.client_verifier(), &cert), Ok(()));
    // Garbage, and a request whose signature does not match its key, are refused.
    let err = t.ca.sign_sandbox_csr("sb-2", "nope", Duration::days(1));
    assert!(
        err.unwrap_err().to_string().contains("certificate request"),
        "garbage accepted"
    );
    let tampered = {
        let (tag, mut raw) = crate::pem::blocks(csr.as_bytes(), "csr").unwrap().remove(0);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        crate::pem::encode(&tag, &raw)
    };
    assert!(
        t.ca.sign_sandbox_csr("sb-2", &tampered, Duration::days(1))
            .is_err()
    );
}
