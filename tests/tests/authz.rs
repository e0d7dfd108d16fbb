//! Authorization end to end, on a real gateway driving Docker: four identities (an admin,
//! two users, a viewer) against every RPC and tunnel kind, directly on QUIC, directly on
//! TCP, and through each identity's connection agent: one table of expected outcomes.
//! Edge-proxy users (a real nginx) get their roles from the proxy. A user revoked
//! mid-session loses an open tunnel within 2 s. Bad identities are refused with one line
//! and change nothing. The audit log records the cases with the right subject and result,
//! and holds none of the secrets the test used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::*;
use openshell_tests::nginx::{Nginx, NginxConfig};
use openshell_tests::{CliUser, SandboxEnv};
use openshell_transport::{
    ClientConfig, Connection, Connector, Endpoint, PathHint, TunnelTarget, tls::ClientMaterial,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a call came to, as far as authorization is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum E {
    /// Served.
    Ok,
    /// NOT_FOUND (or 404 for a tunnel): missing, or someone else's.
    Missing,
    /// PERMISSION_DENIED (or 403): the role lacks the right.
    Denied,
    /// INVALID_ARGUMENT: past authorization, refused for its input.
    Invalid,
    /// UNIMPLEMENTED: past authorization, not built yet (policies, inference, exec RPC).
    Unimpl,
    /// A watch that opened and showed nothing (someone else's sandbox, like a missing one).
    Quiet,
}

const SECRET_A: &str = "sk-authz-secret-7c1f0e";
const SECRET_B: &str = "sk-authz-rotated-93ab22";
const HTTP_PORT: u16 = 8080;

/// Columns of the matrix, in the order they run: admin, user alice, user bob, viewer.
const WHO: [&str; 4] = ["root", "alice", "bob", "vera"];

#[derive(Debug, Clone, Copy)]
enum Call {
    Info,
    WhoAmI,
    Ping,
    ListMine,
    ListAll,
    GetAlice,
    GetMissing,
    LogsAlice,
    WatchAlice,
    CreateBadName,
    StopMissing,
    StopBob,
    StartBob,
    DeleteBob,
    DeleteMissing,
    ExecAlice,
    SshSessionAlice,
    CreateOwnProvider,
    CreateSharedProvider,
    GetAliceProvider,
    GetSharedProvider,
    ListProviders,
    UpdateAliceProvider,
    UpdateSharedProvider,
    DeleteBobProvider,
    SetPolicyAlice,
    GetPolicyAlice,
    SetInference,
    GetInference,
    TunnelEcho,
    TunnelSshAlice,
    TunnelPortAlice,
    TunnelSshMissing,
}

use E::*;

/// The matrix: for each call, the outcome for root (admin), alice, bob (users) and vera
/// (viewer); `None` where the call would destroy what later cases need (those run in the
/// final sequence instead).
fn matrix() -> Vec<(Call, [Option<E>; 4])> {
    let all = |e: E| [Some(e); 4];
    vec![
        (Call::Info, all(Ok)),
        (Call::WhoAmI, all(Ok)),
        (Call::Ping, all(Ok)),
        (Call::ListMine, all(Ok)),
        (
            Call::ListAll,
            [Some(Ok), Some(Denied), Some(Denied), Some(Ok)],
        ),
        (
            Call::GetAlice,
            [Some(Ok), Some(Ok), Some(Missing), Some(Ok)],
        ),
        (Call::GetMissing, all(Missing)),
        (
            Call::LogsAlice,
            [Some(Ok), Some(Ok), Some(Missing), Some(Ok)],
        ),
        (
            Call::WatchAlice,
            [Some(Ok), Some(Ok), Some(Quiet), Some(Ok)],
        ),
        (
            Call::CreateBadName,
            [Some(Invalid), Some(Invalid), Some(Invalid), Some(Denied)],
        ),
        (
            Call::StopMissing,
            [Some(Missing), Some(Missing), Some(Missing), Some(Denied)],
        ),
        (Call::StopBob, [None, Some(Missing), None, Some(Denied)]),
        (Call::StartBob, [None, Some(Missing), None, Some(Denied)]),
        (Call::DeleteBob, [None, Some(Missing), None, Some(Denied)]),
        (
            Call::DeleteMissing,
            [Some(Missing), Some(Missing), Some(Missing), Some(Denied)],
        ),
        (
            Call::ExecAlice,
            [Some(Unimpl), Some(Unimpl), Some(Unimpl), Some(Denied)],
        ),
        (
            Call::SshSessionAlice,
            [Some(Unimpl), Some(Unimpl), Some(Unimpl), Some(Denied)],
        ),
        (
            Call::CreateOwnProvider,
            [Some(Ok), Some(Ok), Some(Ok), Some(Denied)],
        ),
        (
            Call::CreateSharedProvider,
            [Some(Ok), Some(Denied), Some(Denied), Some(Denied)],
        ),
        (
            Call::GetAliceProvider,
            [Some(Ok), Some(Ok), Some(Missing), Some(Ok)],
        ),
        (Call::GetSharedProvider, all(Ok)),
        (Call::ListProviders, all(Ok)),
        (
            Call::UpdateAliceProvider,
            [Some(Ok), Some(Ok), Some(Missing), Some(Denied)],
        ),
        (
            Call::UpdateSharedProvider,
            [Some(Ok), Some(Denied), Some(Denied), Some(Denied)],
        ),
        (
            Call::DeleteBobProvider,
            [None, Some(Missing), Some(Ok), Some(Denied)],
        ),
        (
            Call::SetPolicyAlice,
            [Some(Unimpl), Some(Unimpl), Some(Unimpl), Some(Denied)],
        ),
        (Call::GetPolicyAlice, all(Unimpl)),
        (
            Call::SetInference,
            [Some(Unimpl), Some(Denied), Some(Denied), Some(Denied)],
        ),
        (Call::GetInference, all(Unimpl)),
        (
            Call::TunnelEcho,
            [Some(Ok), Some(Ok), Some(Ok), Some(Denied)],
        ),
        (
            Call::TunnelSshAlice,
            [Some(Ok), Some(Ok), Some(Missing), Some(Denied)],
        ),
        (
            Call::TunnelPortAlice,
            [Some(Ok), Some(Ok), Some(Missing), Some(Denied)],
        ),
        (
            Call::TunnelSshMissing,
            [Some(Missing), Some(Missing), Some(Missing), Some(Denied)],
        ),
    ]
}

fn class(s: &tonic::Status) -> E {
    match s.code() {
        tonic::Code::NotFound => Missing,
        tonic::Code::PermissionDenied => Denied,
        tonic::Code::InvalidArgument => Invalid,
        tonic::Code::Unimplemented => Unimpl,
        other => panic!("unexpected status {other:?}: {}", s.message()),
    }
}

fn tunnel_class(e: &openshell_transport::TransportError) -> E {
    let text = e.to_string();
    if text.contains("404") || text.contains("does not exist") {
        Missing
    } else if text.contains("403") || text.contains("cannot") {
        Denied
    } else {
        panic!("unexpected tunnel refusal: {text}")
    }
}

/// What `who` gets for `call` on `conn`; `tag` keeps object names apart between paths.
async fn run(call: Call, conn: &Connection, who: &str, tag: &str) -> (E, String) {
    let mut api = OpenShellClient::new(conn.channel());
    let rpc = |r: Result<String, tonic::Status>| match r {
        Result::Ok(detail) => (Ok, detail),
        Err(s) => (class(&s), s.message().to_string()),
    };
    let names = |l: &[Sandbox]| -> String {
        let mut n: Vec<String> = l
            .iter()
            .map(|s| s.meta.clone().unwrap_or_default().name)
            .collect();
        n.sort();
        n.join(",")
    };
    let provider = |who: &str| format!("p-{who}-{tag}");
    let shared = format!("team-{tag}");
    match call {
        Call::Info => rpc(api
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .map(|r| r.into_inner().caller.unwrap_or_default().subject)),
        Call::WhoAmI => rpc(api
            .get_current_user(GetCurrentUserRequest {})
            .await
            .map(|r| r.into_inner().subject)),
        Call::Ping => {
            let mut d = openshell_proto::diagnostics_client::DiagnosticsClient::new(conn.channel());
            rpc(d.ping(PingRequest::default()).await.map(|_| String::new()))
        }
        Call::ListMine | Call::ListAll => rpc(api
            .list_sandboxes(ListSandboxesRequest {
                all: matches!(call, Call::ListAll),
                ..Default::default()
            })
            .await
            .map(|r| names(&r.into_inner().sandboxes))),
        Call::GetAlice => rpc(api
            .get_sandbox(GetSandboxRequest {
                name: "alice-box".into(),
            })
            .await
            .map(|r| r.into_inner().meta.unwrap_or_default().owner)),
        Call::GetMissing => rpc(api
            .get_sandbox(GetSandboxRequest {
                name: "no-such-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::LogsAlice => {
            let r = api
                .get_sandbox_logs(GetSandboxLogsRequest {
                    name: "alice-box".into(),
                    tail: 1,
                    ..Default::default()
                })
                .await;
            match r {
                Result::Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Some(line) = stream.message().await.transpose() {
                        if let Err(s) = line {
                            return (class(&s), s.message().to_string());
                        }
                    }
                    (Ok, String::new())
                }
                Err(s) => (class(&s), s.message().to_string()),
            }
        }
        Call::WatchAlice => {
            let r = api
                .watch_sandboxes(WatchSandboxesRequest {
                    name: "alice-box".into(),
                    ..Default::default()
                })
                .await;
            match r {
                Result::Ok(stream) => {
                    let mut stream = stream.into_inner();
                    match tokio::time::timeout(Duration::from_millis(1500), stream.message()).await
                    {
                        Result::Ok(Result::Ok(Some(e))) => (
                            Ok,
                            e.sandbox.unwrap_or_default().meta.unwrap_or_default().name,
                        ),
                        Result::Ok(Err(s)) => (class(&s), s.message().to_string()),
                        _ => (Quiet, String::new()),
                    }
                }
                Err(s) => (class(&s), s.message().to_string()),
            }
        }
        Call::CreateBadName => rpc(api
            .create_sandbox(CreateSandboxRequest {
                name: "Bad Name!".into(),
                ..Default::default()
            })
            .await
            .map(|_| String::new())),
        Call::StopMissing => rpc(api
            .stop_sandbox(StopSandboxRequest {
                name: "no-such-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::StopBob => rpc(api
            .stop_sandbox(StopSandboxRequest {
                name: "bob-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::StartBob => rpc(api
            .start_sandbox(StartSandboxRequest {
                name: "bob-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::DeleteBob => rpc(api
            .delete_sandbox(DeleteSandboxRequest {
                name: "bob-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::DeleteMissing => rpc(api
            .delete_sandbox(DeleteSandboxRequest {
                name: "no-such-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::ExecAlice => {
            let start = ExecRequest {
                msg: Some(exec_request::Msg::Start(ExecStart {
                    sandbox: "alice-box".into(),
                    command: vec!["true".into()],
                    ..Default::default()
                })),
            };
            rpc(api
                .exec_sandbox(futures::stream::iter(vec![start]))
                .await
                .map(|_| String::new()))
        }
        Call::SshSessionAlice => rpc(api
            .create_ssh_session(CreateSshSessionRequest {
                sandbox: "alice-box".into(),
            })
            .await
            .map(|_| String::new())),
        Call::CreateOwnProvider => rpc(api
            .create_provider(CreateProviderRequest {
                name: provider(who),
                r#type: "generic".into(),
                credentials: [("API_KEY".to_string(), SECRET_A.to_string())].into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().meta.unwrap_or_default().owner)),
        Call::CreateSharedProvider => rpc(api
            .create_provider(CreateProviderRequest {
                name: shared.clone(),
                r#type: "generic".into(),
                shared: true,
                credentials: [("API_KEY".to_string(), SECRET_A.to_string())].into(),
                ..Default::default()
            })
            .await
            .map(|_| String::new())),
        Call::GetAliceProvider => rpc(api
            .get_provider(GetProviderRequest {
                name: provider("alice"),
            })
            .await
            .map(|r| r.into_inner().credential_keys.join(","))),
        Call::GetSharedProvider => rpc(api
            .get_provider(GetProviderRequest {
                name: shared.clone(),
            })
            .await
            .map(|r| r.into_inner().shared.to_string())),
        Call::ListProviders => rpc(api
            .list_providers(ListProvidersRequest::default())
            .await
            .map(|r| {
                let mut n: Vec<String> = r
                    .into_inner()
                    .providers
                    .into_iter()
                    .map(|p| p.meta.unwrap_or_default().name)
                    .filter(|n| n.ends_with(tag))
                    .collect();
                n.sort();
                n.join(",")
            })),
        Call::UpdateAliceProvider | Call::UpdateSharedProvider => rpc(api
            .update_provider(UpdateProviderRequest {
                name: if matches!(call, Call::UpdateAliceProvider) {
                    provider("alice")
                } else {
                    shared.clone()
                },
                credentials: [("API_KEY".to_string(), SECRET_B.to_string())].into(),
                ..Default::default()
            })
            .await
            .map(|_| String::new())),
        Call::DeleteBobProvider => rpc(api
            .delete_provider(DeleteProviderRequest {
                name: provider("bob"),
            })
            .await
            .map(|_| String::new())),
        Call::SetPolicyAlice => rpc(api
            .set_sandbox_policy(SetSandboxPolicyRequest {
                sandbox: "alice-box".into(),
                document: "version: 1\n".into(),
                global: false,
            })
            .await
            .map(|_| String::new())),
        Call::GetPolicyAlice => rpc(api
            .get_sandbox_policy(GetSandboxPolicyRequest {
                sandbox: "alice-box".into(),
                ..Default::default()
            })
            .await
            .map(|_| String::new())),
        Call::SetInference => rpc(api
            .set_inference(SetInferenceRequest {
                provider: shared.clone(),
                model: "m".into(),
                ..Default::default()
            })
            .await
            .map(|_| String::new())),
        Call::GetInference => rpc(api
            .get_inference(GetInferenceRequest::default())
            .await
            .map(|_| String::new())),
        Call::TunnelEcho => tunnel(conn, &TunnelTarget::Echo, b"ping", b"ping").await,
        Call::TunnelSshAlice => {
            tunnel(
                conn,
                &TunnelTarget::SandboxSsh("alice-box".into()),
                b"",
                b"SSH-2.0",
            )
            .await
        }
        Call::TunnelPortAlice => {
            tunnel(
                conn,
                &TunnelTarget::SandboxPort("alice-box".into(), HTTP_PORT),
                b"GET / HTTP/1.0\r\n\r\n",
                b"HTTP/1.",
            )
            .await
        }
        Call::TunnelSshMissing => {
            tunnel(
                conn,
                &TunnelTarget::SandboxSsh("no-such-box".into()),
                b"",
                b"SSH-2.0",
            )
            .await
        }
    }
}

/// Opens a tunnel, writes `send`, and expects the answer to start with `expect`.
async fn tunnel(
    conn: &Connection,
    target: &TunnelTarget,
    send: &[u8],
    expect: &[u8],
) -> (E, String) {
    let mut io = match conn.open_tunnel(target).await {
        Result::Ok(io) => io,
        Err(e) => return (tunnel_class(&e), e.to_string()),
    };
    io.write_all(send).await.unwrap();
    let mut got = vec![0u8; expect.len()];
    tokio::time::timeout(Duration::from_secs(20), io.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no answer through {target}"))
        .unwrap_or_else(|e| panic!("tunnel {target} broke: {e}"));
    assert_eq!(got, expect, "through {target}");
    (Ok, String::new())
}

/// One identity: its CLI user (registered gateway `local`, credentials in mtls/).
struct Identity {
    name: &'static str,
    user: CliUser,
}

impl Identity {
    fn mtls(&self) -> PathBuf {
        self.user.gw_dir("local").join("mtls")
    }

    fn material(&self) -> ClientMaterial {
        let read = |f: &str| std::fs::read(self.mtls().join(f)).unwrap();
        ClientMaterial::from_pem(&read("ca.crt"), Some((&read("tls.crt"), &read("tls.key"))))
            .unwrap()
    }

    fn config(&self, endpoint: &str, hint: PathHint) -> ClientConfig {
        let mut cfg = ClientConfig::new(Endpoint::parse(endpoint).unwrap(), Some(self.material()));
        cfg.hint = hint;
        cfg
    }
}

/// Issues `name` a certificate (with `roles`) from the environment's PKI and registers the
/// gateway for a fresh CLI user.
fn identity(s: &SandboxEnv, name: &'static str, roles: &[&str]) -> Identity {
    let user = CliUser::new();
    let mtls = user.gw_dir("local").join("mtls");
    let mut args = vec!["pki", "issue", name, "--out", mtls.to_str().unwrap()];
    for r in roles {
        args.extend(["--role", r]);
    }
    s.u.run(&args).ok();
    let port = s.gw.as_ref().unwrap().addr.port();
    user.register(port);
    Identity { name, user }
}

fn audit_lines(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
        .collect()
}

fn has_audit(lines: &[serde_json::Value], want: &[(&str, &str)]) -> bool {
    lines.iter().any(|l| {
        want.iter()
            .all(|(k, v)| l[*k].as_str().is_some_and(|x| x.contains(v)))
    })
}

/// Mints a client certificate the PKI would refuse to issue (unknown role, no common
/// name), signed by the gateway's own CA with openssl, into `dir`.
fn forge(pki: &Path, dir: &Path, subject: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let sh = format!(
        "set -e; cd {dir}; cp {pki}/ca.crt ca.crt; \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key \
           -subj '{subject}' -out req.csr 2>/dev/null; \
         printf 'extendedKeyUsage=clientAuth\\n' > ext; \
         openssl x509 -req -in req.csr -CA {pki}/ca.crt -CAkey {pki}/ca.key \
           -set_serial 0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \\n') \
           -days 1 -extfile ext -out tls.crt 2>/dev/null; chmod 600 tls.key",
        dir = dir.display(),
        pki = pki.display()
    );
    let out = Command::new("sh").arg("-c").arg(&sh).output().unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn four_identities_every_rpc_and_tunnel_on_every_path() {
    let s = SandboxEnv::docker();
    // The gateway listens on 0.0.0.0 (so containers reach it); clients dial loopback.
    let endpoint = format!("https://127.0.0.1:{}", s.gw.as_ref().unwrap().addr.port());
    // alice is the environment's own user (a certificate without a role: a user).
    let alice = Identity {
        name: "alice",
        user: CliUser::new(),
    };
    // She works through the environment's registration; copy it for a user of her own.
    std::fs::create_dir_all(alice.mtls()).unwrap();
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(
            s.u.gw_dir("local").join("mtls").join(f),
            alice.mtls().join(f),
        )
        .unwrap();
    }
    alice.user.register(s.gw.as_ref().unwrap().addr.port());
    let ids = [
        identity(&s, "root", &["admin"]),
        alice,
        identity(&s, "bob", &[]),
        identity(&s, "vera", &["viewer"]),
    ];
    for (id, who) in ids.iter().zip(WHO) {
        assert_eq!(id.name, who);
        let me = id.user.run(&["whoami", "-o", "json"]).ok().json();
        assert_eq!(me["subject"], who, "{me}");
        assert_eq!(me["auth"], "mtls", "{me}");
        assert!(
            !me["certificate_serial"].as_str().unwrap().is_empty(),
            "{me}"
        );
    }
    let whoami = ids[3].user.run(&["whoami"]).ok();
    assert!(whoami.stdout.contains("Roles: viewer"), "{}", whoami.stdout);

    // Each user's sandbox serves HTTP on 8080 (the port tunnel's target).
    let serve = format!("exec busybox httpd -f -p {HTTP_PORT} -h /tmp");
    for (id, name) in [(&ids[1], "alice-box"), (&ids[2], "bob-box")] {
        let r = id.user.run(&[
            "sandbox", "create", "--name", name, "--", "sh", "-c", &serve,
        ]);
        assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, s.logs());
    }
    // The viewer's create is refused by role, naming it; nothing is created.
    let r = ids[3]
        .user
        .run(&["sandbox", "create", "--name", "vera-box"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("role viewer cannot create sandboxes"),
        "{}",
        r.stderr
    );
    // OWNER column and -o json; a user lists their own, --all is for admins and viewers.
    let mine = ids[1].user.run(&["sandbox", "list"]).ok().stdout;
    assert!(
        mine.contains("OWNER") && mine.contains("alice-box") && !mine.contains("bob-box"),
        "{mine}"
    );
    let everyone = ids[3]
        .user
        .run(&["sandbox", "list", "--all", "-o", "json"])
        .ok()
        .json();
    let owners: Vec<(String, String)> = everyone
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["owner"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        owners.contains(&("alice-box".into(), "alice".into())),
        "{owners:?}"
    );
    assert!(
        owners.contains(&("bob-box".into(), "bob".into())),
        "{owners:?}"
    );
    assert!(!owners.iter().any(|(n, _)| n == "vera-box"));
    let r = ids[2].user.run(&["sandbox", "list", "--all"]).fails();
    assert!(
        r.stderr
            .contains("role user cannot list other owners' sandboxes"),
        "{}",
        r.stderr
    );
    // Someone else's sandbox answers exactly like a missing one, through the CLI too.
    let theirs = ids[2]
        .user
        .run(&["sandbox", "get", "alice-box"])
        .fails()
        .stderr;
    let missing = ids[2]
        .user
        .run(&["sandbox", "get", "no-box"])
        .fails()
        .stderr;
    assert_eq!(
        theirs.replace("alice-box", "X"),
        missing.replace("no-box", "X")
    );
    // The CLI's tunnel commands (exec, download, upload ride the SSH tunnel) refuse the same
    // way: another user's sandbox does not exist, a viewer has no tunnels at all.
    let r = ids[1]
        .user
        .run(&["sandbox", "exec", "alice-box", "--", "id", "-un"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let same_as_missing = |args: &[&str]| {
        let theirs = ids[2].user.run(args).fails().stderr;
        let named: Vec<&str> = args
            .iter()
            .map(|a| if *a == "alice-box" { "no-box" } else { a })
            .collect();
        let missing = ids[2].user.run(&named).fails().stderr;
        assert_eq!(
            theirs.replace("alice-box", "X"),
            missing.replace("no-box", "X")
        );
        assert!(theirs.contains("not found"), "{theirs}");
    };
    same_as_missing(&["sandbox", "exec", "alice-box", "--", "true"]);
    let dest = ids[2].user.path("dl");
    same_as_missing(&[
        "sandbox",
        "download",
        "alice-box",
        "/etc/hostname",
        dest.to_str().unwrap(),
    ]);
    assert!(!dest.exists());
    let up = ids[3].user.path("up.txt");
    std::fs::write(&up, "x").unwrap();
    let r = ids[3]
        .user
        .run(&["sandbox", "upload", "alice-box", up.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("role viewer cannot open tunnels"),
        "{}",
        r.stderr
    );
    let r = ids[3]
        .user
        .run(&["sandbox", "exec", "alice-box", "--", "true"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("role viewer cannot open tunnels"),
        "{}",
        r.stderr
    );

    // Agents, one per identity (each holds that identity's QUIC connection).
    let sockets: Vec<PathBuf> = ids
        .iter()
        .map(|id| PathBuf::from(id.user.run(&["agent", "start"]).ok().stdout.trim()))
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in ["quic", "tcp", "agent"] {
        let conns: Vec<Connection> = rt.block_on(async {
            let mut v = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let conn = match path {
                    "quic" => Connector::new(id.config(&endpoint, PathHint::QuicOnly))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap(),
                    "tcp" => Connector::new(id.config(&endpoint, PathHint::TcpOnly))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap(),
                    _ => openshell_transport::connect_agent_unchecked(
                        &sockets[i],
                        &Endpoint::parse(&endpoint).unwrap(),
                    )
                    .await
                    .unwrap(),
                };
                v.push(conn);
            }
            v
        });
        assert_eq!(
            conns[1].transport().as_str(),
            if path == "tcp" { "tcp" } else { "quic" }
        );
        for (call, expected) in matrix() {
            for (col, want) in expected.iter().enumerate() {
                let Some(want) = want else { continue };
                let (got, detail) = rt.block_on(run(call, &conns[col], WHO[col], path));
                checked += 1;
                if got != *want {
                    failures.push(format!(
                        "{path}: {} {call:?}: expected {want:?}, got {got:?} ({detail})",
                        WHO[col]
                    ));
                    continue;
                }
                // What the answers say, beyond their codes.
                match (call, col, got) {
                    (Call::Info | Call::WhoAmI, _, Ok) => assert_eq!(detail, WHO[col]),
                    (Call::ListMine, 1, _) => assert_eq!(detail, "alice-box"),
                    (Call::ListMine, 2, _) => assert_eq!(detail, "bob-box"),
                    (Call::ListMine, 0 | 3, _) => assert_eq!(detail, "", "{path} {}", WHO[col]),
                    (Call::ListAll, _, Ok) => assert_eq!(detail, "alice-box,bob-box"),
                    (Call::GetAlice, _, Ok) => assert_eq!(detail, "alice"),
                    (Call::ListProviders, 2, _) => {
                        assert_eq!(detail, format!("p-bob-{path},team-{path}"))
                    }
                    (Call::ListProviders, 3, _) => assert_eq!(
                        detail,
                        format!("p-alice-{path},p-bob-{path},p-root-{path},team-{path}")
                    ),
                    (Call::GetAliceProvider, _, Ok) => assert_eq!(detail, "API_KEY"),
                    (Call::GetSharedProvider, _, Ok) => assert_eq!(detail, "true"),
                    (_, 3, Denied) => assert!(detail.contains("role viewer cannot"), "{detail}"),
                    (Call::UpdateSharedProvider, 1 | 2, Denied) => assert!(
                        detail.contains(
                            "role user cannot change or delete providers of other owners"
                        ),
                        "{detail}"
                    ),
                    _ => {}
                }
            }
        }
        rt.block_on(async {
            for c in &conns {
                c.close().await;
            }
        });
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 300, "only {checked} cases ran");

    // A user revoked mid-session loses an open tunnel within 2 s, directly and through
    // the agent (whose connection carries the same certificate).
    rt.block_on(async {
        let alice = &ids[1];
        let direct = Connector::new(alice.config(&endpoint, PathHint::QuicOnly))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let via_agent = openshell_transport::connect_agent_unchecked(
            &sockets[1],
            &Endpoint::parse(&endpoint).unwrap(),
        )
        .await
        .unwrap();
        let mut tunnels = Vec::new();
        for conn in [&direct, &via_agent] {
            let mut t = conn
                .open_tunnel(&TunnelTarget::SandboxSsh("alice-box".into()))
                .await
                .unwrap();
            let mut banner = [0u8; 7];
            t.read_exact(&mut banner).await.unwrap();
            assert_eq!(&banner, b"SSH-2.0");
            tunnels.push(t);
        }
        s.u.run(&["pki", "revoke", "alice", "--reason", "left the team"])
            .ok();
        let revoked = Instant::now();
        for mut t in tunnels {
            let mut rest = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut rest)).await;
            assert!(ended.is_ok(), "the tunnel outlived the revocation by 5 s");
        }
        let took = revoked.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "tunnels closed {took:?} after the revocation"
        );
    });
    ids[1].user.run(&["--no-agent", "sandbox", "list"]).fails();

    // The destructive half, by those allowed: the admin stops and starts bob's sandbox,
    // its owner deletes it; the admin deletes alice's.
    ids[0].user.run(&["sandbox", "stop", "bob-box"]).ok();
    ids[0].user.run(&["sandbox", "start", "bob-box"]).ok();
    ids[2].user.run(&["sandbox", "delete", "bob-box"]).ok();
    ids[0].user.run(&["sandbox", "delete", "alice-box"]).ok();
    assert_eq!(
        ids[0]
            .user
            .run(&["sandbox", "list", "--all", "-o", "json"])
            .ok()
            .json(),
        serde_json::json!([])
    );

    // The audit log: one line per change and tunnel, refusals included, each with who,
    // how, from where, what and the outcome; no credential value anywhere.
    let lines = audit_lines(s.state_dir());
    for l in &lines {
        for key in ["time", "subject", "auth", "peer", "action", "result"] {
            assert!(l.get(key).is_some(), "audit line without {key}: {l}");
        }
    }
    assert!(has_audit(
        &lines,
        &[
            ("subject", "vera"),
            ("action", "DeleteSandbox"),
            ("result", "denied"),
            ("reason", "role viewer cannot delete sandboxes")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "alice"),
            ("action", "DeleteSandbox"),
            ("target", "sandbox/bob-box"),
            ("result", "error"),
            ("reason", "not found")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "bob"),
            ("action", "DeleteSandbox"),
            ("target", "sandbox/bob-box"),
            ("result", "ok")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "root"),
            ("action", "CreateProvider"),
            ("target", "provider/team-quic"),
            ("result", "ok")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "bob"),
            ("action", "tunnel.open"),
            ("target", "sandbox/alice-box/ssh"),
            ("result", "error")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "alice"),
            ("action", "tunnel.open"),
            ("target", "sandbox/alice-box/port/8080"),
            ("result", "ok"),
            ("auth", "mtls")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "vera"),
            ("action", "tunnel.open"),
            ("result", "denied")
        ]
    ));
    assert!(lines.iter().any(|l| {
        l["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    }));
    let audit_text = std::fs::read_to_string(s.state_dir().join("audit.log")).unwrap();
    let gateway_log = s.logs();
    for secret in [SECRET_A, SECRET_B] {
        assert!(
            !audit_text.contains(secret),
            "a credential value is in the audit log"
        );
        assert!(
            !gateway_log.contains(secret),
            "a credential value is in the gateway's log"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.state_dir().join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Mirrored as structured events in the gateway's own log.
    assert!(
        gateway_log.contains("audit"),
        "no audit events in the gateway log"
    );
}

#[test]
fn edge_proxy_users_get_their_roles_from_the_proxy_and_bad_identities_are_refused() {
    // No compute driver is needed: every case here is decided before one would act (and a
    // second Docker gateway of this test binary would share the first one's id).
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let state = tempfile::tempdir().unwrap();
    let gw = openshell_tests::Gateway::builder()
        .pki(&u.default_pki_dir())
        .state_dir(state.path())
        .spawn();
    let loopback: std::net::SocketAddr = format!("127.0.0.1:{}", gw.addr.port()).parse().unwrap();
    let pki = u.default_pki_dir();
    let proxy = u.path("proxy");
    let admin_proxy = u.path("admin-proxy");
    u.run(&[
        "pki",
        "issue",
        "proxy",
        "--role",
        "edge-proxy",
        "--out",
        proxy.to_str().unwrap(),
    ])
    .ok();
    u.run(&[
        "pki",
        "issue",
        "admin-proxy",
        "--role",
        "edge-proxy",
        "--role",
        "admin",
        "--out",
        admin_proxy.to_str().unwrap(),
    ])
    .ok();
    let start = |creds: &Path, users: &[(&str, &str, &str)]| {
        Nginx::start(&NginxConfig {
            server_cert: &pki.join("server/tls.crt"),
            server_key: &pki.join("server/tls.key"),
            proxy_cert: &creds.join("tls.crt"),
            proxy_key: &creds.join("tls.key"),
            gateway_ca: &pki.join("ca.crt"),
            gateway: loopback,
            token: "t-erin",
            user: "erin",
            extra_users: users,
        })
    };
    let plain = start(
        &proxy,
        &[
            ("t-val", "val", "viewer"),
            ("t-root", "root", "admin"),
            ("t-sbx", "sandbox:abc", ""),
            ("t-typo", "tom", "admn"),
        ],
    );
    let trusted = start(&admin_proxy, &[("t-boss", "boss", "admin")]);
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let through = |nginx: &Nginx, token: &str| -> Connection {
        let mut cfg = ClientConfig::new(
            Endpoint::parse(&format!("https://{}", nginx.addr)).unwrap(),
            Some(ClientMaterial::from_pem(&ca, None).unwrap()),
        );
        cfg.hint = PathHint::TcpOnly;
        cfg.bearer = Some(token.to_string());
        rt.block_on(async { Connector::new(cfg).unwrap().connect().await.unwrap() })
    };
    let erin = through(&plain, "t-erin");
    let val = through(&plain, "t-val");
    let root = through(&plain, "t-root");
    let sbx = through(&plain, "t-sbx");
    let typo = through(&plain, "t-typo");
    let boss = through(&trusted, "t-boss");
    let cases: Vec<(&Connection, &str, Call, E, &str)> = vec![
        // A proxy naming no role makes a user.
        (&erin, "erin", Call::WhoAmI, Ok, "erin"),
        (&erin, "erin", Call::ListAll, Denied, "role user cannot"),
        (&erin, "erin", Call::CreateOwnProvider, Ok, "erin"),
        (
            &erin,
            "erin",
            Call::CreateSharedProvider,
            Denied,
            "role user cannot create shared",
        ),
        // The roles header is honoured.
        (&val, "val", Call::ListAll, Ok, ""),
        (
            &val,
            "val",
            Call::CreateOwnProvider,
            Denied,
            "role viewer cannot create providers",
        ),
        (&val, "val", Call::GetAliceProvider, Missing, ""),
        // Admin only from a proxy whose own certificate is an admin's.
        (
            &root,
            "root",
            Call::WhoAmI,
            Denied,
            "may not grant role admin",
        ),
        (
            &root,
            "root",
            Call::ListAll,
            Denied,
            "may not grant role admin",
        ),
        (&boss, "boss", Call::ListAll, Ok, ""),
        (&boss, "boss", Call::CreateSharedProvider, Ok, ""),
        (&boss, "boss", Call::SetInference, Unimpl, ""),
        // Reserved subjects and unknown roles are refused outright.
        (
            &sbx,
            "sandbox:abc",
            Call::WhoAmI,
            Denied,
            "reserved subject",
        ),
        (&typo, "tom", Call::WhoAmI, Denied, "unknown role 'admn'"),
    ];
    for (conn, who, call, want, text) in cases {
        let (got, detail) = rt.block_on(run(call, conn, who, "edge"));
        assert_eq!(got, want, "{who} {call:?}: {detail}");
        assert!(detail.contains(text), "{who} {call:?}: {detail}");
    }
    let whoami = rt.block_on(async {
        OpenShellClient::new(val.channel())
            .get_current_user(GetCurrentUserRequest {})
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(
        (whoami.subject.as_str(), whoami.auth.as_str()),
        ("val", "edge")
    );
    assert_eq!(whoami.roles, vec!["viewer"]);

    // Certificates the PKI refuses to issue but the CA signed anyway (openssl): an unknown
    // role, and no subject. One clear line each, nothing created, an audit line written.
    let forged = u.path("forged");
    forge(&pki, &forged.join("typo"), "/CN=mallory/OU=dev");
    forge(&pki, &forged.join("nameless"), "/OU=user");
    for (dir, text) in [
        ("typo", "names unknown role 'dev'"),
        ("nameless", "empty subject"),
    ] {
        let read = |f: &str| std::fs::read(forged.join(dir).join(f)).unwrap();
        let material =
            ClientMaterial::from_pem(&read("ca.crt"), Some((&read("tls.crt"), &read("tls.key"))))
                .unwrap();
        let mut cfg = ClientConfig::new(
            Endpoint::parse(&format!("https://{loopback}")).unwrap(),
            Some(material),
        );
        cfg.hint = PathHint::QuicOnly;
        rt.block_on(async {
            let conn = Connector::new(cfg).unwrap().connect().await.unwrap();
            let err = OpenShellClient::new(conn.channel())
                .create_sandbox(CreateSandboxRequest {
                    name: format!("forged-{dir}"),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(err.message().contains(text), "{dir}: {}", err.message());
            assert!(!err.message().contains('\n'), "one line: {}", err.message());
            let t = conn.open_tunnel(&TunnelTarget::Echo).await;
            assert!(t.is_err(), "{dir}: a tunnel opened");
        });
    }
    let lines = audit_lines(state.path());
    assert!(has_audit(
        &lines,
        &[
            ("subject", "mallory"),
            ("action", "CreateSandbox"),
            ("result", "denied"),
            ("reason", "unknown role 'dev'")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("action", "CreateSandbox"),
            ("result", "denied"),
            ("reason", "empty subject")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "mallory"),
            ("action", "tunnel.open"),
            ("result", "denied")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "proxy"),
            ("result", "denied"),
            ("reason", "may not grant role admin")
        ]
    ));
    assert!(has_audit(
        &lines,
        &[
            ("subject", "boss"),
            ("auth", "edge"),
            ("action", "CreateProvider"),
            ("result", "ok")
        ]
    ));
    let listed = rt.block_on(async {
        OpenShellClient::new(boss.channel())
            .list_sandboxes(ListSandboxesRequest {
                all: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .sandboxes
    });
    assert!(listed.is_empty(), "a refused create left {listed:?}");
}
