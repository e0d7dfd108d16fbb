//! Black-box tests of `openshell pki`: the real binary, run in a temp directory with its own
//! HOME, XDG_CONFIG_HOME and XDG_STATE_HOME. Assumes `cargo build --workspace --bins` ran.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openshell_pki::PkiDir;
use openshell_tests::cli::{CliUser, Run};

/// One isolated user (the shared `CliUser` harness), running commands from its temp dir so
/// relative paths such as `--bundle alice.pem` land there.
struct User {
    cli: CliUser,
    /// Leave XDG_STATE_HOME unset (to test the HOME fallback).
    no_xdg_state: bool,
}

impl User {
    fn new() -> User {
        User {
            cli: CliUser::new(),
            no_xdg_state: false,
        }
    }

    fn root(&self) -> PathBuf {
        self.cli.path("")
    }

    fn home(&self) -> PathBuf {
        self.cli.path("home")
    }

    fn config(&self) -> PathBuf {
        self.cli.path("xdg")
    }

    fn state(&self) -> PathBuf {
        self.cli.path("state/openshell")
    }

    fn pki(&self) -> PathBuf {
        self.cli.default_pki_dir()
    }

    fn pki_dir(&self) -> PkiDir {
        PkiDir::new(self.pki())
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut cmd = self.cli.command();
        cmd.args(args).current_dir(self.root());
        if self.no_xdg_state {
            cmd.env_remove("XDG_STATE_HOME");
        }
        let out = cmd.output().expect("cannot run openshell");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        };
        // Never print a private key, whatever the command.
        assert!(
            !run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"),
            "a private key was printed by {args:?}"
        );
        run
    }

    /// Runs and asserts success.
    fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "{args:?} failed\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r
    }

    /// Runs and asserts failure with `code`, returning stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "{args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
        r.stderr
    }

    fn init(&self) {
        let r = self.ok(&["pki", "init"]);
        assert!(r.stderr.starts_with("✓ "), "{}", r.stderr);
    }
}

fn mode(p: impl AsRef<Path>) -> u32 {
    let p = p.as_ref();
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn init_writes_the_pki_with_private_modes_and_refuses_to_overwrite() {
    let u = User::new();
    let r = u.ok(&[
        "pki",
        "init",
        "--san",
        "gw.example.com",
        "--san",
        "10.0.0.5",
    ]);
    assert!(r.stderr.starts_with("✓ Created a PKI in "), "{}", r.stderr);
    assert!(r.stderr.contains("gw.example.com") && r.stderr.contains("10.0.0.5"));
    let pki = u.pki();
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(pki.join("ca.key")), 0o600);
    assert_eq!(mode(pki.join("server/tls.key")), 0o600);
    assert_eq!(mode(pki.join("server")), 0o700);
    for f in [
        "ca.crt",
        "server/tls.crt",
        "crl.pem",
        "index.json",
        "ca-bundle.pem",
    ] {
        assert_eq!(mode(pki.join(f)), 0o644, "{f}");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["certificates"][0]["kind"], "server");
    assert_eq!(index["key_type"], "ecdsa-p256");

    let ca_before = std::fs::read(pki.join("ca.crt")).unwrap();
    let err = u.fails(&["pki", "init"], 1);
    assert!(
        err.contains(&pki.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca_before);

    u.ok(&["pki", "init", "--force", "--key-type", "ed25519"]);
    assert_ne!(std::fs::read(pki.join("ca.crt")).unwrap(), ca_before);
    // Nothing left beside the PKI directory (no staging or backup directories).
    let siblings: Vec<_> = std::fs::read_dir(pki.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings, ["pki"]);
    let out = u.ok(&[
        "pki",
        "inspect",
        pki.join("ca.crt").to_str().unwrap(),
        "-o",
        "json",
    ]);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["key_type"], "ed25519");
    assert_eq!(info["is_ca"], true);
}

#[test]
fn bad_flags_are_refused_before_anything_is_written() {
    let u = User::new();
    for (args, why) in [
        (
            vec!["--san", "bad name"],
            "invalid subject alternative name 'bad name'",
        ),
        (vec!["--san", "https://gw"], "not a URL"),
        (vec!["--ca-validity", "-3d"], "negative"),
        (vec!["--server-validity", "10x"], "unknown unit 'x'"),
        (vec!["--ca-validity", "0d"], "longer than zero"),
        (vec!["--ca-validity", ""], "empty"),
        (vec!["--ca-validity", "99999999999999999999y"], "too large"),
        (vec!["--key-type", "rsa"], "rsa"),
    ] {
        let mut full = vec!["pki", "init"];
        full.extend(args);
        let err = u.fails(&full, 2);
        assert!(err.contains(why), "{full:?}: {err}");
    }
    let err = u.fails(
        &[
            "pki",
            "init",
            "--ca-validity",
            "30d",
            "--server-validity",
            "1y",
        ],
        1,
    );
    assert!(err.contains("outlive the CA"), "{err}");
    assert!(!u.state().exists(), "a failed init left files behind");
}

#[test]
fn commands_without_a_pki_say_how_to_create_one() {
    let u = User::new();
    for args in [
        vec!["pki", "list"],
        vec!["pki", "issue", "alice", "--bundle", "a.pem"],
        vec!["pki", "revoke", "alice"],
        vec!["pki", "rotate-server"],
        vec!["pki", "rotate-ca"],
    ] {
        let err = u.fails(&args, 1);
        assert!(err.contains("openshell pki init --dir"), "{args:?}: {err}");
    }
    assert!(!u.root().join("a.pem").exists());
}

#[test]
fn issue_writes_bundles_and_gateway_credentials_and_guards_valid_ones() {
    let u = User::new();
    u.init();

    // --bundle: one 0600 file the gateway registry can import; the serial on stdout.
    let r = u.ok(&[
        "pki",
        "issue",
        "alice",
        "--role",
        "admin",
        "--role",
        "viewer",
        "--bundle",
        "alice.pem",
    ]);
    let serial = r.stdout.trim().to_string();
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{serial}"
    );
    assert!(
        r.stderr.starts_with("✓ Issued a certificate for 'alice'"),
        "{}",
        r.stderr
    );
    let file = u.root().join("alice.pem");
    assert_eq!(mode(&file), 0o600);
    let bundle = openshell_pki::read_bundle(&file).unwrap();
    let who = bundle.describe().unwrap();
    assert_eq!(
        (who.cn.as_str(), who.serial.to_string()),
        ("alice", serial.clone())
    );
    assert_eq!(count_certs(&bundle.ca_pem), 1);

    // A still-valid bundle is not replaced without --force; the message names it.
    let err = u.fails(&["pki", "issue", "alice", "--bundle", "alice.pem"], 1);
    assert!(
        err.contains("'alice'")
            && err.contains(&serial)
            && err.contains("expires")
            && err.contains("--force"),
        "{err}"
    );
    let again = u.ok(&["pki", "issue", "alice", "--bundle", "alice.pem", "--force"]);
    assert_ne!(again.stdout.trim(), serial);

    // --gateway NAME: the registry's mtls directory.
    let r = u.ok(&["pki", "issue", "bob", "--gateway", "prod"]);
    let mtls = u.config().join("openshell/gateways/prod/mtls");
    assert!(
        r.stderr.contains(&mtls.display().to_string()),
        "{}",
        r.stderr
    );
    assert_eq!(mode(&mtls), 0o700);
    assert_eq!(mode(mtls.join("tls.key")), 0o600);
    assert_eq!(mode(mtls.join("tls.crt")), 0o644);
    assert_eq!(mode(mtls.join("ca.crt")), 0o644);
    let ca = std::fs::read(u.pki().join("ca.crt")).unwrap();
    assert_eq!(std::fs::read(mtls.join("ca.crt")).unwrap(), ca);
    let err = u.fails(&["pki", "issue", "bob", "-g", "prod"], 1);
    assert!(err.contains("'bob'") && err.contains("--force"), "{err}");
    let err = u.fails(&["pki", "issue", "bob", "-g", "../escape"], 1);
    assert!(err.contains("invalid gateway name"), "{err}");
    assert!(!u.config().join("openshell/escape").exists());

    // --out DIR: three files, other files in the directory untouched.
    let out = u.root().join("creds");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    u.ok(&[
        "pki",
        "issue",
        "carol",
        "--out",
        "creds",
        "--validity",
        "1d12h",
    ]);
    assert_eq!(mode(out.join("tls.key")), 0o600);
    assert!(out.join("keep.txt").exists() && out.join("ca.crt").exists());
    let info = u.ok(&["pki", "inspect", "creds", "-o", "json"]);
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(info["subject_cn"], "carol");
    assert_eq!(info["key_matches"], true);
    assert_eq!(info["chains_to_ca"], true);

    // Destination rules and bad input.
    let err = u.fails(&["pki", "issue", "dave"], 1);
    assert!(
        err.contains("--gateway NAME, --out DIR, --bundle FILE"),
        "{err}"
    );
    let err = u.fails(&["pki", "issue", "dave", "-g", "x", "--bundle", "d.pem"], 1);
    assert!(err.contains("mutually exclusive"), "{err}");
    let err = u.fails(
        &[
            "pki",
            "issue",
            "dave",
            "--bundle",
            "d.pem",
            "--validity",
            "-3d",
        ],
        2,
    );
    assert!(err.contains("negative"), "{err}");
    let err = u.fails(&["pki", "issue", "sandbox:x", "--bundle", "d.pem"], 1);
    assert!(err.contains("reserved"), "{err}");
    let err = u.fails(
        &[
            "pki",
            "issue",
            "dave",
            "--bundle",
            "d.pem",
            "--validity",
            "20y",
        ],
        1,
    );
    assert!(err.contains("outlive the CA"), "{err}");
    assert!(!u.root().join("d.pem").exists());
}

#[test]
fn list_shows_status_in_every_format() {
    let u = User::new();
    u.init();
    let alice = u
        .ok(&[
            "pki", "issue", "alice", "--role", "admin", "--bundle", "a.pem",
        ])
        .stdout;
    let alice = alice.trim();
    u.ok(&[
        "pki",
        "issue",
        "bob",
        "--validity",
        "1d",
        "--bundle",
        "b.pem",
    ]);

    let table = u.ok(&["pki", "list"]).stdout;
    let header = table.lines().next().unwrap();
    for col in ["SERIAL", "SUBJECT", "ROLES", "KIND", "NOT AFTER", "STATUS"] {
        assert!(header.contains(col), "{header}");
    }
    let alice_line = table.lines().find(|l| l.starts_with(alice)).unwrap();
    assert!(
        alice_line.contains("admin")
            && alice_line.contains("user")
            && alice_line.ends_with("valid"),
        "{alice_line}"
    );
    // One day of life left: expiring soon.
    let bob_line = table.lines().find(|l| l.contains(" bob ")).unwrap();
    assert!(bob_line.ends_with("expiring soon"), "{bob_line}");

    u.ok(&["pki", "revoke", alice, "--reason", "key-compromise"]);
    let json: serde_json::Value =
        serde_json::from_str(&u.ok(&["pki", "list", "-o", "json"]).stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let a = rows.iter().find(|r| r["serial"] == alice).unwrap();
    assert_eq!(a["status"], "revoked");
    assert_eq!(a["reason"], "key-compromise");
    assert_eq!(a["roles"][0], "admin");
    assert!(a["revoked_at"].is_string());
    let server = rows.iter().find(|r| r["kind"] == "server").unwrap();
    assert_eq!(server["status"], "valid");

    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&u.ok(&["pki", "list", "-o", "yaml"]).stdout).unwrap();
    assert_eq!(yaml.as_sequence().unwrap().len(), 3);
}

#[test]
fn revoke_updates_the_crl_by_serial_or_user() {
    let u = User::new();
    u.init();
    let s1 = u
        .ok(&["pki", "issue", "erin", "--bundle", "e1.pem"])
        .stdout
        .trim()
        .to_string();
    let s2 = u
        .ok(&["pki", "issue", "erin", "--out", "e2"])
        .stdout
        .trim()
        .to_string();
    let s3 = u
        .ok(&["pki", "issue", "frank", "--bundle", "f.pem"])
        .stdout
        .trim()
        .to_string();
    let crl_before = std::fs::read(u.pki().join("crl.pem")).unwrap();

    let err = u.fails(&["pki", "revoke", "nobody"], 1);
    assert!(
        err.contains("'nobody'") && err.contains("openshell pki list"),
        "{err}"
    );
    let err = u.fails(&["pki", "revoke", "0123456789abcdef0123"], 1);
    assert!(err.contains("no certificate"), "{err}");

    let r = u.ok(&["pki", "revoke", "erin"]);
    let mut revoked: Vec<&str> = r.stdout.lines().collect();
    revoked.sort();
    let mut want = vec![s1.as_str(), s2.as_str()];
    want.sort();
    assert_eq!(revoked, want);
    assert!(r.stderr.starts_with("✓ Revoked"), "{}", r.stderr);
    assert_ne!(std::fs::read(u.pki().join("crl.pem")).unwrap(), crl_before);
    assert_eq!(mode(u.pki().join("crl.pem")), 0o644);

    let set = u.pki_dir().revoked_serials().unwrap();
    assert_eq!(set.len(), 2);
    assert!(!set.contains(&openshell_pki::Serial::parse(&s3).unwrap()));
    assert_eq!(u.pki_dir().crl_ders().unwrap().len(), 1);

    // Uppercase, colon-separated serials are the same serial.
    let colon: String = {
        let padded = if s3.len() % 2 == 1 {
            format!("0{s3}")
        } else {
            s3.clone()
        };
        padded
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":")
    };
    assert_eq!(u.ok(&["pki", "revoke", &colon]).stdout.trim(), s3);
    let err = u.fails(&["pki", "revoke", &s3], 1);
    assert!(err.contains("already revoked"), "{err}");

    let info = u.ok(&["pki", "inspect", "f.pem", "-o", "json"]).stdout;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["revoked"], true);
    assert_eq!(info["status"], "revoked");
}

#[test]
fn inspect_reports_files_and_directories_and_refuses_garbage() {
    let u = User::new();
    u.init();
    let r = u.ok(&["pki", "inspect", u.pki().to_str().unwrap()]);
    for want in [
        "openshell-gateway",
        "serverAuth",
        "localhost",
        "host.docker.internal",
        "SHA-256",
        "Issued by CA     yes",
        "Key matches      yes",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    std::fs::write(
        u.root().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = u.fails(&["pki", "inspect", "junk.pem"], 1);
    assert!(err.contains("junk.pem"), "{err}");
    std::fs::write(u.root().join("noise"), [0u8, 159, 146, 150]).unwrap();
    let err = u.fails(&["pki", "inspect", "noise"], 1);
    assert!(err.contains("noise"), "{err}");
    let err = u.fails(&["pki", "inspect", "missing.pem"], 1);
    assert!(err.contains("missing.pem"), "{err}");

    // A certificate from another PKI does not chain to this one.
    let other = User::new();
    other.init();
    other.ok(&["pki", "issue", "mallory", "--bundle", "m.pem"]);
    let m = other.root().join("m.pem");
    let info = u
        .ok(&["pki", "inspect", m.to_str().unwrap(), "-o", "json"])
        .stdout;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["chains_to_ca"], false);
    assert_eq!(info["subject_cn"], "mallory");
}

#[test]
fn rotations_keep_the_gateway_and_old_clients_working() {
    let u = User::new();
    u.ok(&["pki", "init", "--san", "gw.one"]);
    u.ok(&["pki", "issue", "old", "--bundle", "old.pem"]);

    let r = u.ok(&[
        "pki",
        "rotate-server",
        "--san",
        "gw.two",
        "--validity",
        "90d",
    ]);
    assert!(
        r.stderr.starts_with("✓ Re-issued the gateway certificate"),
        "{}",
        r.stderr
    );
    let server = u
        .ok(&[
            "pki",
            "inspect",
            u.pki().join("server/tls.crt").to_str().unwrap(),
            "-o",
            "json",
        ])
        .stdout;
    let server: serde_json::Value = serde_json::from_str(&server).unwrap();
    let sans: Vec<&str> = server["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        sans.contains(&"gw.one") && sans.contains(&"gw.two") && sans.contains(&"localhost"),
        "{sans:?}"
    );
    assert_eq!(mode(u.pki().join("server/tls.key")), 0o600);

    let old_ca = std::fs::read_to_string(u.pki().join("ca.crt")).unwrap();
    let r = u.ok(&["pki", "rotate-ca", "--overlap", "2w"]);
    assert!(r.stderr.starts_with("✓ New CA"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Re-issue before then for: old"),
        "{}",
        r.stderr
    );
    assert_ne!(
        std::fs::read_to_string(u.pki().join("ca.crt")).unwrap(),
        old_ca
    );
    // Both CAs trusted for clients during the overlap; the server chain carries the cross
    // certificate; the old key is kept owner-only.
    let bundle = String::from_utf8(u.pki_dir().client_ca_bundle().unwrap()).unwrap();
    assert_eq!(count_certs(&bundle), 2);
    assert!(bundle.contains(old_ca.trim()));
    assert_eq!(
        count_certs(&std::fs::read_to_string(u.pki().join("server/tls.crt")).unwrap()),
        2
    );
    assert_eq!(u.pki_dir().crl_ders().unwrap().len(), 2);
    for entry in std::fs::read_dir(u.pki().join("retired")).unwrap() {
        let dir = entry.unwrap().path();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(dir.join("ca.key")), 0o600);
    }
    let info = u.ok(&["pki", "inspect", "old.pem", "-o", "json"]).stdout;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["chains_to_ca"], true);
    // The old CA's certificates can still be revoked during the overlap.
    u.ok(&["pki", "revoke", "old"]);

    let err = u.fails(&["pki", "rotate-ca", "--overlap", "5q"], 2);
    assert!(err.contains("unknown unit 'q'"), "{err}");
}

#[test]
fn default_pki_dir_falls_back_to_home() {
    let mut u = User::new();
    u.no_xdg_state = true;
    u.ok(&["pki", "init"]);
    let pki = u.home().join(".local/state/openshell/gateway/pki");
    assert!(pki.join("ca.crt").is_file());
    assert_eq!(mode(pki.join("ca.key")), 0o600);
    // --dir overrides the default everywhere.
    let custom = u.root().join("custom");
    u.ok(&["pki", "init", "--dir", custom.to_str().unwrap()]);
    u.ok(&[
        "pki",
        "issue",
        "x",
        "--dir",
        custom.to_str().unwrap(),
        "--bundle",
        "x.pem",
    ]);
    let list = u
        .ok(&[
            "pki",
            "list",
            "--dir",
            custom.to_str().unwrap(),
            "-o",
            "json",
        ])
        .stdout;
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let default_list = u.ok(&["pki", "list", "-o", "json"]).stdout;
    let rows: serde_json::Value = serde_json::from_str(&default_list).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
}
