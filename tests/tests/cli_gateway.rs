//! `openshell gateway ...` against a temp HOME, XDG_CONFIG_HOME and system layer: the real
//! binary, asserting exit codes, stdout, stderr, files and modes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use openshell_tests::{CliUser, Run};
use serde_json::Value;

/// One isolated user (the shared `CliUser` harness) plus the registry helpers these tests
/// use.
struct Sandbox(CliUser);

impl std::ops::Deref for Sandbox {
    type Target = CliUser;
    fn deref(&self) -> &CliUser {
        &self.0
    }
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox(CliUser::new())
    }

    /// The hidden `gateway resolve` output.
    fn resolve(&self, args: &[&str], envs: &[(&str, &str)]) -> Value {
        let mut all = vec!["gateway", "resolve"];
        all.extend_from_slice(args);
        self.run_with(&all, envs).ok().json()
    }

    fn add_plain(&self, name: &str, port: u16) {
        self.run(&[
            "gateway",
            "add",
            &format!("http://127.0.0.1:{port}"),
            "--local",
            "--name",
            name,
        ])
        .ok();
    }

    fn write_system(&self, name: &str, endpoint: &str) {
        let dir = self.path("system/gateways").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = serde_json::json!({
            "name": name, "gateway_endpoint": endpoint, "is_remote": true, "gateway_port": 0
        });
        std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    }

    fn active(&self) -> Option<String> {
        std::fs::read_to_string(self.user_root().join("active_gateway"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn metadata(sb: &Sandbox, name: &str) -> Value {
    let text = std::fs::read_to_string(sb.gw_dir(name).join("metadata.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

// ---------------------------------------------------------------------------------------
// add

#[test]
fn add_plaintext_writes_metadata_and_activates() {
    let sb = Sandbox::new();
    let r = sb
        .run(&[
            "gateway",
            "add",
            "http://127.0.0.1:8080",
            "--local",
            "--name",
            "local",
        ])
        .ok();
    assert!(
        r.stderr
            .contains("✓ Gateway 'local' added and set as active"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("  Endpoint: http://127.0.0.1:8080"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("  Type: local"), "{}", r.stderr);
    assert!(r.stderr.contains("  Auth: plaintext"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    let meta = metadata(&sb, "local");
    assert_eq!(meta["name"], "local");
    assert_eq!(meta["gateway_endpoint"], "http://127.0.0.1:8080");
    assert_eq!(meta["is_remote"], false);
    assert_eq!(meta["gateway_port"], 0);
    assert_eq!(meta["auth_mode"], "plaintext");
    // Pretty JSON, as upstream.
    let raw = std::fs::read_to_string(sb.gw_dir("local").join("metadata.json")).unwrap();
    assert!(raw.contains("\n  \"name\": \"local\""), "{raw}");
    assert_eq!(sb.active().as_deref(), Some("local"));
    assert_eq!(mode(&sb.gw_dir("local")), 0o700);
}

#[test]
fn add_normalises_endpoint_and_defaults() {
    let sb = Sandbox::new();
    // No port: 17670. Loopback host: default name `openshell`.
    sb.run(&["gateway", "add", "http://127.0.0.1/"]).ok();
    assert_eq!(
        metadata(&sb, "openshell")["gateway_endpoint"],
        "http://127.0.0.1:17670"
    );
    // Remote host: default name is the host; not loopback and no --local: remote.
    let r = sb.run(&["gateway", "add", "HTTP://10.1.2.3"]).ok();
    assert!(r.stderr.contains("  Type: remote"), "{}", r.stderr);
    let meta = metadata(&sb, "10.1.2.3");
    assert_eq!(meta["gateway_endpoint"], "http://10.1.2.3:17670");
    assert_eq!(meta["is_remote"], true);
    assert_eq!(sb.active().as_deref(), Some("10.1.2.3"));
}

#[test]
fn add_rejects_malformed_urls_and_names() {
    let sb = Sandbox::new();
    for bad in [
        "https://host:99999",
        "ftp://host",
        "https://",
        "https://host/some/path",
        "https://user@host",
        "http://[::1",
    ] {
        let r = sb.run(&["gateway", "add", bad, "--name", "x"]).fails();
        assert!(
            r.stderr
                .contains(&format!("invalid gateway endpoint '{bad}'")),
            "{bad}: {}",
            r.stderr
        );
    }
    for bad in ["../evil", "a/b", "..", "has space"] {
        let r = sb
            .run(&["gateway", "add", "http://127.0.0.1:1", "--name", bad])
            .fails();
        assert!(
            r.stderr.contains("invalid gateway name"),
            "{bad}: {}",
            r.stderr
        );
    }
    assert!(!sb.user_root().join("gateways").exists());
    assert!(!sb.path("xdg/evil").exists());
}

#[test]
fn add_existing_user_entry_is_refused_with_upstream_text() {
    let sb = Sandbox::new();
    sb.add_plain("dev", 1);
    let r = sb
        .run(&["gateway", "add", "http://127.0.0.1:2", "--name", "dev"])
        .fails();
    assert!(
        r.stderr.contains(
            "Gateway 'dev' already exists.\nRemove it first with: openshell gateway remove dev\nOr choose a different name with: --name <name>"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(
        metadata(&sb, "dev")["gateway_endpoint"],
        "http://127.0.0.1:1"
    );
}

#[test]
fn add_auth_flag_conflicts_are_refused() {
    let sb = Sandbox::new();
    let r = sb
        .run(&["gateway", "add", "http://127.0.0.1:1", "--auth", "mtls"])
        .fails();
    assert!(
        r.stderr.contains("needs an https:// endpoint"),
        "{}",
        r.stderr
    );
    let r = sb
        .run(&["gateway", "add", "https://gw.test", "--auth", "plaintext"])
        .fails();
    assert!(
        r.stderr.contains("needs an http:// endpoint"),
        "{}",
        r.stderr
    );
    let r = sb
        .run(&[
            "gateway",
            "add",
            "http://127.0.0.1:1",
            "--bundle",
            "/nonexistent",
        ])
        .fails();
    assert!(
        r.stderr.contains("--bundle needs an https:// endpoint"),
        "{}",
        r.stderr
    );
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--auth",
            "edge",
            "--bundle",
            "/nonexistent",
        ])
        .fails();
    assert!(
        r.stderr.contains("cannot be combined with --auth edge"),
        "{}",
        r.stderr
    );
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--auth",
            "edge",
            "--local",
        ])
        .fails();
    assert!(
        r.stderr.contains("cannot be combined with --auth edge"),
        "{}",
        r.stderr
    );
    assert!(!sb.user_root().join("gateways").exists());
    // Usage errors are exit 2 (clap).
    let r = sb.run(&["gateway", "add", "https://gw.test", "--auth", "bogus"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(sb.run(&["gateway", "add"]).code, 2);
    // As upstream: the CLI does not start or stop gateways; these must not parse.
    for sub in ["start", "stop", "destroy"] {
        assert_eq!(sb.run(&["gateway", sub]).code, 2, "gateway {sub}");
    }
}

#[test]
fn unwritable_config_dir_is_named() {
    let sb = Sandbox::new();
    // Root ignores chmod, so make the directory impossible: its parent is a regular file.
    let blocker = sb.path("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let xdg = blocker.join("xdg");
    let r = sb.run_with(
        &["gateway", "add", "http://127.0.0.1:1", "--name", "x"],
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
    );
    let r = r.fails();
    assert!(
        r.stderr
            .contains(&xdg.join("openshell").display().to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("cannot create"), "{}", r.stderr);
}

#[test]
fn home_is_used_without_xdg_config_home() {
    let sb = Sandbox::new();
    let mut cmd = sb.command();
    cmd.env_remove("XDG_CONFIG_HOME")
        .args(["gateway", "add", "http://127.0.0.1:5", "--name", "h"]);
    assert!(cmd.output().unwrap().status.success());
    assert!(
        sb.path("home/.config/openshell/gateways/h/metadata.json")
            .is_file()
    );
}

// ---------------------------------------------------------------------------------------
// mTLS bundles (minted per test with openssl)

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(sb: &Sandbox) -> Pki {
        let dir = sb.path("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ossl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("these tests need the openssl command to mint certificates");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=test-ca",
            "-days",
            "2",
        ]);
        ossl(&ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=alice",
        ]);
        ossl(&csr);
        ossl(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "1",
        ]);
        ossl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other.key",
        ]);
        Pki { dir }
    }

    fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.dir.join(f)).unwrap()
    }

    /// A bundle file made of the named parts, in that order.
    fn bundle(&self, file: &str, parts: &[&str]) -> PathBuf {
        let text: String = parts.iter().map(|p| self.read(p)).collect();
        let path = self.dir.join(file);
        std::fs::write(&path, text).unwrap();
        // It holds a private key: owner-only, or the CLI refuses it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

#[test]
fn add_with_bundle_installs_mtls_files() {
    let sb = Sandbox::new();
    let pki = Pki::new(&sb);
    // Order does not matter: key first, client cert, then the CA.
    let bundle = pki.bundle("b.pem", &["client.key", "client.crt", "ca.crt"]);
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test:9443",
            "--name",
            "prod",
            "--bundle",
            bundle.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stderr.contains("✓ TLS certificates present"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("  Type: remote"), "{}", r.stderr);
    let mtls = sb.gw_dir("prod").join("mtls");
    assert_eq!(mode(&mtls), 0o700);
    assert_eq!(mode(&mtls.join("tls.key")), 0o600);
    assert_eq!(
        std::fs::read_to_string(mtls.join("ca.crt")).unwrap(),
        pki.read("ca.crt")
    );
    assert_eq!(
        std::fs::read_to_string(mtls.join("tls.crt")).unwrap(),
        pki.read("client.crt")
    );
    assert_eq!(
        std::fs::read_to_string(mtls.join("tls.key")).unwrap(),
        pki.read("client.key")
    );
    assert_eq!(metadata(&sb, "prod")["auth_mode"], "mtls");
    let resolved = sb.resolve(&[], &[]);
    assert_eq!(resolved["auth"], "mtls");
    assert_eq!(resolved["mtls_dir"], mtls.to_str().unwrap());
    // No staging leftovers beside mtls/.
    let names: Vec<String> = std::fs::read_dir(sb.gw_dir("prod"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        {
            let mut n = names.clone();
            n.sort();
            n
        },
        vec!["metadata.json", "mtls"],
        "{names:?}"
    );
}

#[test]
fn partial_or_missing_bundle_is_refused() {
    let sb = Sandbox::new();
    let pki = Pki::new(&sb);
    let no_key = pki.bundle("nokey.pem", &["ca.crt", "client.crt"]);
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "p",
            "--bundle",
            no_key.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr
            .contains("expected exactly one private key, found 0"),
        "{}",
        r.stderr
    );
    let one_cert = pki.bundle("onecert.pem", &["client.crt", "client.key"]);
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "p",
            "--bundle",
            one_cert.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("no CA certificate in the bundle"),
        "{}",
        r.stderr
    );
    let wrong_key = pki.bundle("wrongkey.pem", &["ca.crt", "client.crt", "other.key"]);
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "p",
            "--bundle",
            wrong_key.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("does not belong"), "{}", r.stderr);
    // A bundle others can read is refused with the fix.
    let open = pki.bundle("open.pem", &["ca.crt", "client.crt", "client.key"]);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "p",
            "--bundle",
            open.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains(&format!("chmod 600 {}", open.display())),
        "{}",
        r.stderr
    );
    let missing = sb.path("nope.pem");
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "p",
            "--bundle",
            missing.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr
            .contains(&format!("invalid mTLS bundle {}", missing.display())),
        "{}",
        r.stderr
    );
    // Nothing was registered, nothing activated.
    assert!(!sb.gw_dir("p").join("metadata.json").exists());
    assert!(!sb.gw_dir("p").join("mtls").exists());
    assert_eq!(sb.active(), None);

    // --local https without a bundle for that name.
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://127.0.0.1:17670",
            "--local",
            "--name",
            "p",
        ])
        .fails();
    assert!(
        r.stderr
            .contains("mTLS certificates for gateway 'p' were not found."),
        "{}",
        r.stderr
    );
    // A partial mtls dir is named file by file.
    std::fs::create_dir_all(sb.gw_dir("p").join("mtls")).unwrap();
    std::fs::write(sb.gw_dir("p").join("mtls/ca.crt"), pki.read("ca.crt")).unwrap();
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://127.0.0.1:17670",
            "--auth",
            "mtls",
            "--name",
            "p",
        ])
        .fails();
    assert!(
        r.stderr.contains("tls.crt, tls.key missing"),
        "{}",
        r.stderr
    );
}

#[test]
fn placed_bundle_is_used_and_valid_bundle_needs_force() {
    let sb = Sandbox::new();
    let pki = Pki::new(&sb);
    // Direct mTLS: certificates placed by hand, then the bare https add picks mtls.
    let mtls = sb.gw_dir("direct").join("mtls");
    std::fs::create_dir_all(&mtls).unwrap();
    std::fs::write(mtls.join("ca.crt"), pki.read("ca.crt")).unwrap();
    std::fs::write(mtls.join("tls.crt"), pki.read("client.crt")).unwrap();
    std::fs::write(mtls.join("tls.key"), pki.read("client.key")).unwrap();
    let r = sb
        .run(&["gateway", "add", "https://gw.test", "--name", "direct"])
        .ok();
    assert!(
        r.stderr.contains("✓ TLS certificates present"),
        "{}",
        r.stderr
    );
    assert_eq!(metadata(&sb, "direct")["auth_mode"], "mtls");

    // remove keeps mtls/; re-adding with a bundle must not clobber valid certs silently.
    sb.run(&["gateway", "remove", "direct"]).ok();
    assert!(mtls.join("tls.key").is_file());
    let bundle = pki.bundle("b.pem", &["ca.crt", "client.crt", "client.key"]);
    let add = |force: bool| {
        let mut args = vec![
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "direct",
            "--bundle",
            bundle.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        sb.run(&args)
    };
    let r = add(false).fails();
    assert!(
        r.stderr
            .contains("already holds a valid certificate for 'alice'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    add(true).ok();
    assert_eq!(mode(&mtls.join("tls.key")), 0o600);

    // http:// for a name that has certificates: warn, still plaintext.
    sb.run(&["gateway", "remove", "direct"]).ok();
    let r = sb
        .run(&["gateway", "add", "http://127.0.0.1:9", "--name", "direct"])
        .ok();
    assert!(
        r.stderr
            .contains("⚠ mTLS certificates found for gateway 'direct'. Did you mean to use https?"),
        "{}",
        r.stderr
    );
    assert_eq!(metadata(&sb, "direct")["auth_mode"], "plaintext");

    // An explicit --auth edge wins over certificates that are present.
    sb.run(&["gateway", "remove", "direct"]).ok();
    let r = sb
        .run_with(
            &[
                "gateway",
                "add",
                "https://gw.test",
                "--name",
                "direct",
                "--auth",
                "edge",
                "--browser",
            ],
            &[("OPENSHELL_LOGIN_TIMEOUT_SECS", "1")],
        )
        .fails();
    assert!(r.stderr.contains("/auth/connect?callback="), "{}", r.stderr);
    assert!(r.stderr.contains("login timed out"), "{}", r.stderr);
    assert!(
        mtls.join("tls.key").is_file(),
        "certificates untouched by the rollback"
    );
}

// ---------------------------------------------------------------------------------------
// edge browser login (the test is the browser)

/// A running `openshell` whose stderr is read line by line.
struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Live {
    fn spawn(sb: &Sandbox, args: &[&str], envs: &[(&str, &str)]) -> Live {
        let mut cmd = sb.command();
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Live::spawn_command(cmd, args)
    }

    fn spawn_command(mut cmd: Command, args: &[&str]) -> Live {
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Live {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The login URL printed on stderr: (callback port, state).
    fn login_url(&mut self, endpoint: &str) -> (u16, String) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no login URL on stderr; saw {:?}", self.seen));
            self.seen.push(line.clone());
            let Some(url) = line
                .trim()
                .strip_prefix(&format!("{endpoint}/auth/connect?"))
            else {
                continue;
            };
            let mut port = None;
            let mut state = None;
            for pair in url.split('&') {
                if let Some(cb) = pair.strip_prefix("callback=http://127.0.0.1:") {
                    port = cb.strip_suffix("/callback").map(|p| p.parse().unwrap());
                } else if let Some(s) = pair.strip_prefix("state=") {
                    state = Some(s.to_string());
                }
            }
            return (port.expect("callback port"), state.expect("state"));
        }
    }

    fn finish(mut self) -> Run {
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let mut stderr = self.seen.join("\n");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            stderr.push('\n');
            stderr.push_str(&line);
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

/// Sends one raw HTTP request to the callback listener and returns the response.
fn browser(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn add_https_runs_browser_login_and_stores_token() {
    let sb = Sandbox::new();
    let mut live = Live::spawn(
        &sb,
        &[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "cloud",
            "--browser",
        ],
        &[],
    );
    let (port, state) = live.login_url("https://gw.test:17670");
    assert!(state.len() >= 32, "state too short: {state}");
    // A browser's idle speculative connection must not hold up the callback.
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = std::time::Instant::now();
    // Unrelated requests (favicon) do not end the login.
    let r = browser(port, "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = browser(
        port,
        &format!("GET /callback?token=tok%2Ben-123&state={state} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("close this window"), "{r}");
    assert!(
        // A one-at-a-time server would wait out the idle connection's 10 s read timeout.
        started.elapsed() < Duration::from_secs(8),
        "callback was held up"
    );
    let run = live.finish().ok();
    assert!(
        run.stderr
            .contains("✓ Gateway 'cloud' added and set as active"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("  Type: cloud"), "{}", run.stderr);
    assert!(run.stderr.contains("  Auth: edge"), "{}", run.stderr);
    let token = sb.gw_dir("cloud").join("edge_token");
    assert_eq!(
        std::fs::read_to_string(&token).unwrap().trim(),
        "tok+en-123"
    );
    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(&sb.gw_dir("cloud")), 0o700);
    assert_eq!(metadata(&sb, "cloud")["auth_mode"], "edge");
    assert_eq!(sb.active().as_deref(), Some("cloud"));
    let resolved = sb.resolve(&[], &[]);
    assert_eq!(resolved["auth"], "edge");
    assert_eq!(resolved["edge_token_path"], token.to_str().unwrap());
}

#[test]
fn login_post_callback_and_logout() {
    let sb = Sandbox::new();
    // An upstream registration (cloudflare_jwt) reads as edge.
    let dir = sb.gw_dir("cf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metadata.json"),
        r#"{"name":"cf","gateway_endpoint":"https://cf.test:8443","is_remote":true,"gateway_port":0,"auth_mode":"cloudflare_jwt"}"#,
    )
    .unwrap();
    let mut live = Live::spawn(&sb, &["gateway", "login", "cf", "--browser"], &[]);
    let (port, state) = live.login_url("https://cf.test:8443");
    let body = format!("state={state}&token=posted");
    let r = browser(
        port,
        &format!(
            "POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let run = live.finish().ok();
    assert!(
        run.stderr.contains("✓ Authenticated to gateway 'cf'"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("edge_token"))
            .unwrap()
            .trim(),
        "posted"
    );

    let r = sb.run(&["gateway", "logout", "cf"]).ok();
    assert!(
        r.stderr.contains("✓ Logged out of gateway 'cf'"),
        "{}",
        r.stderr
    );
    assert!(!dir.join("edge_token").exists());

    // Other modes: upstream's messages.
    sb.add_plain("plain", 3);
    let r = sb.run(&["gateway", "login", "plain"]).fails();
    assert!(
        r.stderr.contains(
            "Gateway 'plain' does not use edge or OIDC authentication.\nOnly edge-authenticated and OIDC gateways support browser login."
        ),
        "{}",
        r.stderr
    );
    let r = sb.run(&["gateway", "logout"]).ok(); // default: the active gateway (plain)
    assert!(
        r.stderr.contains(
            "Gateway 'plain' uses plaintext authentication — no stored credentials to clear."
        ),
        "{}",
        r.stderr
    );
    let r = sb.run(&["gateway", "login", "ghost"]).fails();
    assert!(
        r.stderr.contains("Unknown gateway 'ghost'."),
        "{}",
        r.stderr
    );
}

#[test]
fn wrong_state_is_ignored_and_the_login_goes_on() {
    // Any page the user visits can make the browser hit the callback; a wrong state used to
    // abort the login (anyone could cancel it). It is refused and the real one still lands.
    let sb = Sandbox::new();
    sb.add_plain("before", 4);
    let mut live = Live::spawn(
        &sb,
        &[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "cloud",
            "--browser",
        ],
        &[],
    );
    let (port, state) = live.login_url("https://gw.test:17670");
    for forged in [
        format!("GET /callback?token=evil&state={state}x HTTP/1.1\r\nHost: x\r\n\r\n"),
        "GET /callback?token=evil HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        "GET /callback?error=access_denied&state=stale HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ] {
        let r = browser(port, &forged);
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.contains("does not belong"), "{r}");
    }
    assert!(
        live.child.try_wait().unwrap().is_none(),
        "a forged callback ended the login"
    );
    assert!(!sb.gw_dir("cloud").join("edge_token").exists());
    let r = browser(
        port,
        &format!("GET /callback?token=real&state={state} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let run = live.finish().ok();
    assert!(
        run.stderr.contains("Ignored a login callback"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(sb.gw_dir("cloud").join("edge_token"))
            .unwrap()
            .trim(),
        "real"
    );
    assert_eq!(sb.active().as_deref(), Some("cloud"));
}

#[test]
fn interrupted_login_leaves_no_trace() {
    let sb = Sandbox::new();
    sb.add_plain("before", 4);
    let mut live = Live::spawn(
        &sb,
        &[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "cloud",
            "--browser",
        ],
        &[],
    );
    live.login_url("https://gw.test:17670");
    live.child.kill().unwrap(); // the user gives up (SIGKILL: no chance to clean up)
    live.child.wait().unwrap();
    assert!(!sb.gw_dir("cloud").join("metadata.json").exists());
    assert_eq!(sb.active().as_deref(), Some("before"));
    let list = sb.run(&["gateway", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn browser_is_opened_with_the_login_url() {
    let sb = Sandbox::new();
    // A stand-in `xdg-open` that records the URL it was asked to open.
    let bin_dir = sb.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let opened = sb.path("opened-url");
    let opener = bin_dir.join("xdg-open");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = sb.command();
    cmd.env_remove("OPENSHELL_NO_BROWSER").env("PATH", &path);
    let mut live = Live::spawn_command(
        cmd,
        &[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "cloud",
            "--browser",
        ],
    );
    let (port, state) = live.login_url("https://gw.test:17670");
    let url = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_to_string(&opened)
                .ok()
                .filter(|u| !u.is_empty())
        })
        .expect("xdg-open was not run");
    assert_eq!(
        url,
        format!(
            "https://gw.test:17670/auth/connect?callback=http://127.0.0.1:{port}/callback&state={state}"
        )
    );
    browser(
        port,
        &format!("GET /callback?token=t&state={state} HTTP/1.1\r\n\r\n"),
    );
    let run = live.finish().ok();
    assert!(
        run.stderr.contains("Opening your browser"),
        "{}",
        run.stderr
    );
}

#[test]
fn gateway_side_error_or_missing_token_fails_the_login() {
    let sb = Sandbox::new();
    for (query, expect) in [
        (
            "error=access_denied",
            "login failed at the gateway: access_denied",
        ),
        ("token=", "no usable token"),
    ] {
        let mut live = Live::spawn(
            &sb,
            &[
                "gateway",
                "add",
                "https://gw.test",
                "--name",
                "cloud",
                "--browser",
            ],
            &[],
        );
        let (port, state) = live.login_url("https://gw.test:17670");
        let r = browser(
            port,
            &format!("GET /callback?{query}&state={state} HTTP/1.1\r\n\r\n"),
        );
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let run = live.finish().fails();
        assert!(run.stderr.contains(expect), "{}", run.stderr);
        assert!(!sb.gw_dir("cloud").join("metadata.json").exists());
    }
}

/// Nobody at the terminal: a gateway that needs a browser sign-in is an error at once, not
/// a wait of the whole login timeout (300 s by default), for `add` and `login` alike.
#[test]
fn without_a_terminal_nothing_waits_for_a_browser() {
    let sb = Sandbox::new();
    sb.add_plain("before", 4);
    let started = std::time::Instant::now();
    // Unresolvable: whether it wants a certificate is unknown, so both ways out are named.
    let r = sb
        .run(&["gateway", "add", "https://gw.test", "--name", "cloud"])
        .fails();
    assert!(r.stderr.contains("Cannot tell whether"), "{}", r.stderr);
    assert!(
        r.stderr.contains("stdin is not a terminal") && r.stderr.contains("--browser"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("openshell pki issue <user> --gateway cloud"),
        "{}",
        r.stderr
    );
    let r = sb
        .run(&[
            "gateway",
            "add",
            "https://gw.test",
            "--name",
            "cloud",
            "--auth",
            "edge",
        ])
        .fails();
    assert!(r.stderr.contains("stdin is not a terminal"), "{}", r.stderr);
    assert!(!r.stderr.contains("pki issue"), "{}", r.stderr);
    assert!(!sb.gw_dir("cloud").exists());
    assert_eq!(sb.active().as_deref(), Some("before"));

    let dir = sb.gw_dir("edge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metadata.json"),
        r#"{"name":"edge","gateway_endpoint":"https://edge.test:8443","is_remote":true,"gateway_port":0,"auth_mode":"cloudflare_jwt"}"#,
    )
    .unwrap();
    let r = sb.run(&["gateway", "login", "edge"]).fails();
    assert!(r.stderr.contains("stdin is not a terminal"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// `gateway add https://...` of a direct mTLS gateway with no client bundle: the gateway's
/// request for a client certificate gives it away, and the command names the missing
/// bundle and the `pki issue` that makes it, within seconds, browser or not (it used to
/// wait up to 300 s for a browser sign-in that could never work).
#[test]
fn an_mtls_gateway_without_a_bundle_is_named_at_once() {
    let sb = Sandbox::new();
    sb.run(&["pki", "init"]).ok();
    let gw = openshell_tests::Gateway::builder()
        .pki(&sb.default_pki_dir())
        .spawn();
    let mtls = sb.gw_dir("prod").join("mtls");
    let endpoint = gw.endpoint();
    for extra in [&[][..], &["--browser"][..]] {
        let started = std::time::Instant::now();
        let mut args = vec!["gateway", "add", &endpoint, "--name", "prod"];
        args.extend_from_slice(extra);
        let r = sb.run(&args).fails();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            r.stderr.contains("asks for a client certificate")
                && r.stderr.contains("direct mTLS gateway"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&mtls.display().to_string()),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains("openshell pki issue <user> --gateway prod"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("/auth/connect"), "{}", r.stderr);
        assert!(!sb.gw_dir("prod").exists());
        assert_eq!(sb.active(), None);
    }
    // The fix it names works.
    sb.run(&["pki", "issue", "alice", "--gateway", "prod"]).ok();
    sb.run(&["gateway", "add", &gw.endpoint(), "--name", "prod"])
        .ok();
    sb.run(&["status"]).ok();
}

#[test]
fn login_timeout_rolls_back_to_no_active_gateway() {
    let sb = Sandbox::new();
    let live = Live::spawn(
        &sb,
        &["gateway", "add", "gw.test", "--name", "cloud", "--browser"],
        &[("OPENSHELL_LOGIN_TIMEOUT_SECS", "1")],
    );
    let run = live.finish().fails();
    assert!(
        run.stderr.contains("login timed out after 1 s"),
        "{}",
        run.stderr
    );
    assert!(!sb.gw_dir("cloud").exists());
    assert_eq!(sb.active(), None);
}

// ---------------------------------------------------------------------------------------
// resolution

#[test]
fn resolution_order_flag_env_active() {
    let sb = Sandbox::new();
    sb.add_plain("a", 1);
    sb.add_plain("b", 2);
    sb.run(&["gateway", "select", "a"]).ok();

    assert_eq!(sb.resolve(&[], &[])["name"], "a");
    assert_eq!(sb.resolve(&[], &[("OPENSHELL_GATEWAY", "b")])["name"], "b");
    assert_eq!(sb.resolve(&[], &[("OPENSHELL_GATEWAY", "")])["name"], "a");
    assert_eq!(
        sb.resolve(&["-g", "a"], &[("OPENSHELL_GATEWAY", "b")])["name"],
        "a"
    );
    let r = sb.resolve(&["-g", "b"], &[]);
    assert_eq!(r["endpoint"], "http://127.0.0.1:2");
    assert_eq!(r["auth"], "plaintext");
    assert_eq!(r["source"], "user");
    assert_eq!(
        r["user_dir"],
        sb.gw_dir("b").to_str().unwrap(),
        "per-user dir for the transport"
    );

    // --gateway-endpoint beats everything; keeps the registered name (trailing / ignored).
    let r = sb.resolve(
        &["--gateway-endpoint", "http://127.0.0.1:2/", "-g", "a"],
        &[],
    );
    assert_eq!(r["name"], "b");
    assert_eq!(r["source"], "user");
    // OPENSHELL_GATEWAY_ENDPOINT stands in for the flag (as upstream); the flag wins.
    let r = sb.resolve(&[], &[("OPENSHELL_GATEWAY_ENDPOINT", "http://127.0.0.1:2")]);
    assert_eq!(r["name"], "b");
    let r = sb.resolve(
        &["--gateway-endpoint", "http://127.0.0.1:1"],
        &[("OPENSHELL_GATEWAY_ENDPOINT", "http://127.0.0.1:2")],
    );
    assert_eq!(r["name"], "a");
    let r = sb.resolve(&["--gateway-endpoint", "http://127.0.0.1:7777"], &[]);
    assert_eq!(r["name"], "http://127.0.0.1:7777");
    assert_eq!(r["source"], "endpoint");
    assert_eq!(r["auth"], "plaintext");
    let r = sb
        .run(&["gateway", "resolve", "--gateway-endpoint", "ftp://x"])
        .fails();
    assert!(
        r.stderr.contains("invalid gateway endpoint"),
        "{}",
        r.stderr
    );
}

#[test]
fn endpoint_flag_prefers_the_active_registration() {
    let sb = Sandbox::new();
    sb.add_plain("one", 5);
    sb.add_plain("two", 5); // same endpoint; `two` is now active
    let r = sb.resolve(&["--gateway-endpoint", "http://127.0.0.1:5"], &[]);
    assert_eq!(r["name"], "two");
    sb.run(&["gateway", "select", "one"]).ok();
    let r = sb.resolve(&["--gateway-endpoint", "http://127.0.0.1:5"], &[]);
    assert_eq!(r["name"], "one");
}

#[test]
fn upstream_metadata_keeps_its_meaning() {
    let sb = Sandbox::new();
    // Written by the upstream CLI: no port (the URL's standard one), no auth_mode, extra
    // fields this CLI does not use.
    let dir = sb.gw_dir("up");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metadata.json"),
        r#"{"name":"up","gateway_endpoint":"https://gw.example.com/","is_remote":true,"gateway_port":0,"remote_host":"me@box"}"#,
    )
    .unwrap();
    std::fs::write(sb.user_root().join("active_gateway"), "  up  \n").unwrap();
    let r = sb.resolve(&[], &[]);
    assert_eq!(r["name"], "up");
    assert_eq!(r["endpoint"], "https://gw.example.com:443");
    assert_eq!(r["auth"], "mtls");
    let r = sb.resolve(&["--gateway-endpoint", "https://gw.example.com"], &[]);
    assert_eq!(r["name"], "up");
    assert_eq!(r["endpoint"], "https://gw.example.com:443");
}

#[test]
fn unknown_and_missing_gateway_errors_match_upstream() {
    let sb = Sandbox::new();
    let r = sb.run(&["gateway", "resolve"]).fails();
    assert!(
        r.stderr.contains(
            "No active gateway.\nSet one with: openshell gateway select <name>\nOr register one with: openshell gateway add <endpoint>"
        ),
        "{}",
        r.stderr
    );
    let r = sb.run(&["gateway", "resolve", "-g", "nope"]).fails();
    assert!(
        r.stderr.contains(
            "Unknown gateway 'nope'.\nRegister it first: openshell gateway add <endpoint> --name nope\nOr list available gateways: openshell gateway select"
        ),
        "{}",
        r.stderr
    );
    let r = sb
        .run_with(&["gateway", "resolve"], &[("OPENSHELL_GATEWAY", "envgw")])
        .fails();
    assert!(
        r.stderr.contains("Unknown gateway 'envgw'."),
        "{}",
        r.stderr
    );
}

#[test]
fn system_layer_is_read_shadowed_and_not_removable() {
    let sb = Sandbox::new();
    sb.write_system("corp", "https://corp.test:443");
    sb.write_system("shared", "https://shared-sys.test");
    std::fs::write(sb.path("system/active_gateway"), "corp\n").unwrap();

    // No user active file: the system one applies.
    let r = sb.resolve(&[], &[]);
    assert_eq!(r["name"], "corp");
    assert_eq!(r["source"], "system");
    assert_eq!(r["auth"], "mtls"); // https without auth_mode
    assert_eq!(r["endpoint"], "https://corp.test:443");
    // Per-user material stays in the user layer.
    assert_eq!(
        r["mtls_dir"],
        sb.gw_dir("corp").join("mtls").to_str().unwrap()
    );

    // A user entry of the same name shadows the system one.
    sb.run(&["gateway", "add", "http://127.0.0.1:6", "--name", "shared"])
        .ok();
    let r = sb.resolve(&["-g", "shared"], &[]);
    assert_eq!(r["source"], "user");
    assert_eq!(r["endpoint"], "http://127.0.0.1:6");
    // ...and the user active file now wins over the system one.
    assert_eq!(sb.resolve(&[], &[])["name"], "shared");

    let list = sb.run(&["gateway", "list", "-o", "json"]).ok().json();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["name"], "corp");
    assert_eq!(items[0]["source"], "system");
    assert_eq!(items[0]["active"], false);
    assert_eq!(items[1]["name"], "shared");
    assert_eq!(items[1]["source"], "user");
    assert_eq!(items[1]["active"], true);

    let r = sb.run(&["gateway", "remove", "corp"]).fails();
    assert!(
        r.stderr.contains(
            "Gateway registration 'corp' is installed by the system and cannot be removed from user config.\nRegister a per-user gateway with the same name to override it, or select another gateway."
        ),
        "{}",
        r.stderr
    );
    assert!(sb.path("system/gateways/corp/metadata.json").is_file());

    // Removing the shadowing user entry reveals the system one again.
    let r = sb.run(&["gateway", "remove", "shared"]).ok();
    assert!(r.stderr.contains("visible again"), "{}", r.stderr);
    let r = sb.resolve(&["-g", "shared"], &[]);
    assert_eq!(r["source"], "system");
    // The user active file pointed at `shared` and was cleared: the system active applies.
    assert_eq!(sb.active(), None);
    assert_eq!(sb.resolve(&[], &[])["name"], "corp");

    // Selecting a system entry persists it in the user layer.
    sb.run(&["gateway", "select", "shared"]).ok();
    assert_eq!(sb.active().as_deref(), Some("shared"));
}

#[test]
fn relative_or_empty_system_dir_warns_and_falls_back() {
    let sb = Sandbox::new();
    sb.add_plain("u", 1);
    for value in ["relative/dir", ""] {
        let r = sb
            .run_with(
                &["gateway", "list"],
                &[("OPENSHELL_SYSTEM_GATEWAY_DIR", value)],
            )
            .ok();
        assert!(
            r.stderr.contains("OPENSHELL_SYSTEM_GATEWAY_DIR")
                && r.stderr.contains("/etc/openshell"),
            "{value:?}: {}",
            r.stderr
        );
        assert!(r.stdout.contains("u "), "{}", r.stdout);
    }
    // Absolute: no warning.
    let r = sb.run(&["gateway", "list"]).ok();
    assert!(
        !r.stderr.contains("OPENSHELL_SYSTEM_GATEWAY_DIR"),
        "{}",
        r.stderr
    );
}

#[test]
fn corrupt_metadata_is_reported_with_the_fix() {
    let sb = Sandbox::new();
    sb.add_plain("good", 1);
    let bad = sb.gw_dir("broken").join("metadata.json");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "{ this is not json").unwrap();

    let r = sb.run(&["gateway", "resolve", "-g", "broken"]).fails();
    assert!(
        r.stderr.contains(&bad.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert!(
        r.stderr.contains("openshell gateway remove broken"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("openshell gateway add <endpoint> --name broken"),
        "{}",
        r.stderr
    );

    // One broken entry does not hide the others.
    let r = sb.run(&["gateway", "list"]).ok();
    assert!(r.stdout.contains("good"), "{}", r.stdout);
    assert!(!r.stdout.contains("broken"), "{}", r.stdout);
    assert!(
        r.stderr.contains(&bad.display().to_string()),
        "{}",
        r.stderr
    );

    let r = sb.run(&["gateway", "select"]).ok();
    assert_eq!(r.stderr.matches("is corrupt").count(), 1, "{}", r.stderr);
    assert!(r.stdout.contains("good"), "{}", r.stdout);

    // Bad endpoint inside valid JSON is corrupt too.
    std::fs::write(&bad, r#"{"name":"broken","gateway_endpoint":"ftp://x"}"#).unwrap();
    let r = sb.run(&["gateway", "select", "broken"]).fails();
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);

    // The advertised fix works.
    sb.run(&["gateway", "remove", "broken"]).ok();
    sb.run(&["gateway", "add", "http://127.0.0.1:2", "--name", "broken"])
        .ok();
    assert_eq!(sb.resolve(&[], &[])["name"], "broken");
}

// ---------------------------------------------------------------------------------------
// select, list, remove

#[test]
fn select_persists_and_warns_about_the_env_override() {
    let sb = Sandbox::new();
    sb.add_plain("a", 1);
    sb.add_plain("b", 2);
    let r = sb.run(&["gateway", "select", "a"]).ok();
    assert!(
        r.stderr.contains("✓ Active gateway set to 'a'"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("OPENSHELL_GATEWAY"), "{}", r.stderr);
    assert_eq!(sb.active().as_deref(), Some("a"));

    let r = sb
        .run_with(&["gateway", "select", "b"], &[("OPENSHELL_GATEWAY", "a")])
        .ok();
    assert!(
        r.stderr.contains(
            "✓ Active gateway set to 'b'\n⚠ OPENSHELL_GATEWAY=a is set and will override this selection.\n  Unset it or run: export OPENSHELL_GATEWAY=b\n"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(sb.active().as_deref(), Some("b"), "selection still saved");
    // Same name in the env: no warning.
    let r = sb
        .run_with(&["gateway", "select", "b"], &[("OPENSHELL_GATEWAY", "b")])
        .ok();
    assert!(!r.stderr.contains('⚠'), "{}", r.stderr);

    let r = sb.run(&["gateway", "select", "zzz"]).fails();
    assert!(
        r.stderr.contains("No gateway metadata found for 'zzz'."),
        "{}",
        r.stderr
    );
    assert_eq!(sb.active().as_deref(), Some("b"));
}

#[test]
fn select_without_name_off_a_terminal_lists_and_hints() {
    let sb = Sandbox::new();
    sb.add_plain("a", 1);
    let r = sb.run(&["gateway", "select"]).ok();
    assert!(r.stdout.contains("NAME"), "{}", r.stdout);
    assert!(r.stdout.contains("* a"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("Select a gateway with: openshell gateway select <name>"),
        "{}",
        r.stderr
    );
}

/// Runs `openshell gateway select` on a pseudo-terminal (util-linux `script`) typing `input`.
fn select_on_tty(sb: &Sandbox, input: &str) -> Run {
    let bin = openshell_tests::bin("openshell");
    let template = sb.command();
    let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = template
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} gateway select", bin.display()),
            "/dev/null",
        ])
        .envs(envs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs util-linux `script` to provide a terminal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn select_without_name_on_a_terminal_prompts() {
    let sb = Sandbox::new();
    sb.add_plain("a", 1);
    sb.add_plain("b", 2); // active
    // On a terminal everything arrives on the one pty stream: script's stdout.
    let r = select_on_tty(&sb, "1\n").ok();
    assert!(r.stdout.contains("Select a gateway [1-2]"), "{}", r.stdout);
    assert!(r.stdout.contains("http://127.0.0.1:2"), "{}", r.stdout);
    assert!(
        r.stdout.contains("✓ Active gateway set to 'a'"),
        "{}",
        r.stdout
    );
    assert_eq!(sb.active().as_deref(), Some("a"));
    let r = select_on_tty(&sb, "b\n").ok();
    assert!(
        r.stdout.contains("✓ Active gateway set to 'b'"),
        "{}",
        r.stdout
    );
    assert_eq!(sb.active().as_deref(), Some("b"));
    let r = select_on_tty(&sb, "\n").ok();
    assert!(
        r.stdout.contains("! Gateway selection cancelled"),
        "{}",
        r.stdout
    );
    assert_eq!(sb.active().as_deref(), Some("b"));
}

#[test]
fn list_table_json_yaml_and_empty() {
    let sb = Sandbox::new();
    let r = sb.run(&["gateway", "list"]).ok();
    assert!(r.stdout.starts_with("No gateways found.\n"), "{}", r.stdout);
    assert!(r.stdout.contains("openshell gateway add"), "{}", r.stdout);
    let r = sb.run(&["gateway", "list", "-o", "json"]).ok();
    assert_eq!(r.json(), serde_json::json!([]));

    sb.add_plain("alpha", 1);
    sb.run(&["gateway", "add", "http://10.0.0.9:80", "--name", "beta"])
        .ok();
    // The transport records which path worked; list shows it.
    let path = sb.gw_dir("alpha").join("metadata.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    meta["transport_last_used"] = "quic".into();
    std::fs::write(&path, meta.to_string()).unwrap();

    let r = sb.run(&["gateway", "list"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    for col in ["NAME", "ENDPOINT", "TYPE", "SOURCE", "AUTH", "TRANSPORT"] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    assert!(lines[1].starts_with("  alpha"), "{}", lines[1]);
    assert!(lines[1].contains("quic"), "{}", lines[1]);
    assert!(lines[2].starts_with("* beta"), "{}", lines[2]);
    assert!(lines[2].contains("remote"), "{}", lines[2]);
    assert!(
        !r.stdout.contains('\u{1b}'),
        "no colour with NO_COLOR / a pipe"
    );

    // -g marks another row as active, without persisting.
    let r = sb.run(&["gateway", "list", "-g", "alpha"]).ok();
    assert!(r.stdout.contains("* alpha"), "{}", r.stdout);
    let r = sb
        .run_with(&["gateway", "list"], &[("OPENSHELL_GATEWAY", "alpha")])
        .ok();
    assert!(r.stdout.contains("* alpha"), "{}", r.stdout);
    assert_eq!(sb.active().as_deref(), Some("beta"));

    let json = sb.run(&["gateway", "list", "-o", "json"]).ok().json();
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "alpha", "endpoint": "http://127.0.0.1:1", "type": "local", "source": "user",
             "auth": "plaintext", "active": false, "is_remote": false, "transport_last_used": "quic"},
            {"name": "beta", "endpoint": "http://10.0.0.9:80", "type": "remote", "source": "user",
             "auth": "plaintext", "active": true, "is_remote": true, "transport_last_used": null}
        ])
    );
    let yaml = sb.run(&["gateway", "list", "--output", "yaml"]).ok();
    let parsed: Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    assert_eq!(parsed, json);
}

#[test]
fn remove_deletes_user_files_and_clears_active() {
    let sb = Sandbox::new();
    sb.add_plain("keep", 1);
    sb.add_plain("gone", 2);
    let dir = sb.gw_dir("gone");
    std::fs::write(dir.join("edge_token"), "t").unwrap();
    std::fs::write(dir.join("transport.json"), "{}").unwrap();
    std::fs::write(dir.join("last_sandbox"), "default\nsb1\n").unwrap();
    std::fs::create_dir_all(dir.join("mtls")).unwrap();
    std::fs::write(dir.join("mtls/ca.crt"), "x").unwrap();

    let r = sb.run(&["gateway", "remove", "gone"]).ok();
    assert!(
        r.stderr.contains("✓ Gateway registration 'gone' removed."),
        "{}",
        r.stderr
    );
    assert!(!dir.join("metadata.json").exists());
    assert!(!dir.join("edge_token").exists());
    assert!(!dir.join("transport.json").exists());
    // As upstream: certificates and the last sandbox stay for a later re-add.
    assert!(dir.join("mtls/ca.crt").exists());
    assert!(dir.join("last_sandbox").exists());
    assert_eq!(sb.active(), None);
    assert!(
        sb.run(&["gateway", "resolve"])
            .fails()
            .stderr
            .contains("No active gateway.")
    );

    // Removing a gateway that is not active leaves the active one alone.
    sb.run(&["gateway", "select", "keep"]).ok();
    sb.add_plain("other", 3);
    sb.run(&["gateway", "select", "keep"]).ok();
    sb.run(&["gateway", "remove", "other"]).ok();
    assert_eq!(sb.active().as_deref(), Some("keep"));
    assert!(!sb.gw_dir("other").exists(), "empty directory cleaned up");

    let r = sb.run(&["gateway", "remove", "ghost"]).fails();
    assert!(r.stderr.contains("Unknown gateway 'ghost'"), "{}", r.stderr);
    // Without NAME: the active gateway.
    sb.run(&["gateway", "remove"]).ok();
    assert!(!sb.gw_dir("keep").join("metadata.json").exists());
}
