//! `Nginx`: a real nginx (Debian's package) as an authenticating reverse proxy in front of a
//! gateway's TCP path, configured and started per test, stopped on drop.
//!
//! It plays the edge of an identity provider: `/auth/connect` "signs the user in" and sends
//! the browser back to the CLI's callback with a token; every other request needs
//! `authorization: Bearer <token>`, is forwarded to the gateway over gRPC with TLS and the
//! proxy's own client certificate (role `edge-proxy`), and names the user in
//! `x-openshell-user`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// What the proxy needs.
pub struct NginxConfig<'a> {
    /// Certificate and key nginx serves to clients (PEM files).
    pub server_cert: &'a Path,
    pub server_key: &'a Path,
    /// The proxy's client certificate and key towards the gateway, and the CA that signed
    /// the gateway's certificate.
    pub proxy_cert: &'a Path,
    pub proxy_key: &'a Path,
    pub gateway_ca: &'a Path,
    pub gateway: SocketAddr,
    /// The one token this identity provider hands out, and the user it stands for.
    pub token: &'a str,
    pub user: &'a str,
    /// More users the proxy authenticates: (token, user, roles as `x-openshell-roles`).
    pub extra_users: &'a [(&'a str, &'a str, &'a str)],
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "nginx is not installed: run scripts/test (it installs Debian's nginx) or apt-get install nginx"
    );
}

impl Nginx {
    pub fn start(cfg: &NginxConfig<'_>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let mut users = String::new();
        let mut roles = String::new();
        for (token, user, role_list) in cfg.extra_users {
            users.push_str(&format!("        \"Bearer {token}\" \"{user}\";\n"));
            roles.push_str(&format!("        \"Bearer {token}\" \"{role_list}\";\n"));
        }
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_authorization $edge_user {{
        "Bearer {token}" "{user}";
{users}        default "";
    }}
    map $http_authorization $edge_roles {{
{roles}        default "";
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_protocols TLSv1.3;
        location = /auth/connect {{
            return 302 "$arg_callback?token={token}&state=$arg_state";
        }}
        location / {{
            if ($edge_user = "") {{
                return 401;
            }}
            grpc_set_header x-openshell-user $edge_user;
            grpc_set_header x-openshell-roles $edge_roles;
            grpc_pass grpcs://{gateway};
            grpc_ssl_certificate {proxy_cert};
            grpc_ssl_certificate_key {proxy_key};
            grpc_ssl_trusted_certificate {gateway_ca};
            grpc_ssl_verify on;
            grpc_ssl_name localhost;
            grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3;
        }}
    }}
}}
"#,
            token = cfg.token,
            user = cfg.user,
            server_cert = cfg.server_cert.display(),
            server_key = cfg.server_key.display(),
            proxy_cert = cfg.proxy_cert.display(),
            proxy_key = cfg.proxy_key.display(),
            gateway_ca = cfg.gateway_ca.display(),
            gateway = cfg.gateway,
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, addr, dir }
    }

    /// nginx's error log so far (for assertion messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them (still holding
        // the listening socket). Kill only if it does not stop in time.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
