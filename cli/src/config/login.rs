//! Browser login for edge gateways: the token comes back to a one-shot loopback listener.
//!
//! ```text
//! CLI                                   browser                      gateway's auth proxy
//!  bind 127.0.0.1:0
//!  open <ep>/auth/connect?callback=http://127.0.0.1:<port>/callback&state=<random>
//!                                        ---- sign in ---------------->
//!                                        <--- redirect to callback ----
//!  <-- GET/POST /callback?token=..&state=..
//!  state == ours? store edge_token (0600) : answer 400, keep waiting
//!  --> "you can close this window"
//! ```
//!
//! The random `state` ties the callback to this login: any other page that makes the
//! browser hit the callback cannot plant a token, because it cannot know the state. Nor can
//! it end the login: a callback with another state is answered with an error page and
//! ignored, and the CLI keeps waiting for the real one.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::endpoint::Endpoint;
use super::env::Env;
use crate::CliError;

/// Largest callback request accepted (headers plus body).
const MAX_REQUEST: usize = 64 * 1024;
/// Time one connection has to send its request; a stalled one must not block the login.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses to wait for a browser sign-in that nobody can do: without a terminal on stdin
/// (a script, CI, a service) the wait would last the whole login timeout for nothing.
/// `asked` (`--browser`) waits anyway; `extra` is one more way out for the hint.
pub fn ensure_attended(
    asked: bool,
    endpoint: &Endpoint,
    extra: Option<&str>,
) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if asked || std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut hint = "Run it in a terminal, or pass --browser to print the sign-in URL and wait for the sign-in anyway".to_string();
    if let Some(extra) = extra {
        hint.push('\n');
        hint.push_str(extra);
    }
    Err(CliError::hint(
        format!(
            "{endpoint} needs a browser sign-in (edge authentication), and stdin is not a terminal: not waiting for one"
        ),
        hint,
    ))
}

/// Runs the browser flow against `endpoint` and returns the token it delivered.
pub async fn browser_login(endpoint: &Endpoint, env: &Env) -> Result<String, CliError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
        CliError::msg(format!(
            "cannot listen on 127.0.0.1 for the login callback: {e}"
        ))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::msg(format!("cannot read the callback address: {e}")))?
        .port();
    let state = random_state()?;
    let url =
        format!("{endpoint}/auth/connect?callback=http://127.0.0.1:{port}/callback&state={state}");
    let opened = !env.no_browser && open_browser(&url);
    if opened {
        eprintln!("Opening your browser to sign in. If it does not open, visit:");
    } else {
        eprintln!("Open this URL in a browser to sign in:");
    }
    eprintln!("  {url}");
    eprintln!(
        "Waiting for the login to finish (up to {} s)...",
        env.login_timeout.as_secs()
    );
    match tokio::time::timeout(env.login_timeout, accept_callback(&listener, &state)).await {
        Ok(result) => result,
        Err(_) => Err(CliError::hint(
            format!(
                "login timed out after {} s without a callback from the browser",
                env.login_timeout.as_secs()
            ),
            "Retry, and finish signing in within the time limit (OPENSHELL_LOGIN_TIMEOUT_SECS)",
        )),
    }
}

/// Stores `token` as the gateway's `edge_token` (0600 in a 0700 directory).
pub fn store_token(path: &Path, token: &str) -> Result<(), CliError> {
    openshell_pki::fs::write_secret(path, format!("{token}\n").as_bytes())?;
    Ok(())
}

fn random_state() -> Result<String, CliError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CliError::msg(format!("cannot read random bytes from /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts `xdg-open URL` detached; false when there is no opener.
fn open_browser(url: &str) -> bool {
    std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// What one callback request said.
#[derive(Debug, PartialEq, Eq)]
enum Callback {
    /// Not `/callback` (favicon, probes): answered 404, keep waiting.
    Other,
    Params(Vec<(String, String)>),
}

/// Serves the listener until one request settles the login. Each connection is handled in
/// its own task: a browser's idle speculative connection must not hold up the real callback.
async fn accept_callback(listener: &TcpListener, state: &str) -> Result<String, CliError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<String, CliError>>(4);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(|e| {
                    CliError::msg(format!("login callback listener failed: {e}"))
                })?;
                let tx = tx.clone();
                let state = state.to_string();
                tokio::spawn(async move {
                    if let Some(outcome) = handle_connection(stream, &state).await {
                        let _ = tx.send(outcome).await;
                    }
                });
            }
            Some(outcome) = rx.recv() => return outcome,
        }
    }
}

/// Answers one connection. `None` when it was not this login's callback (malformed, other
/// path, another state): the login goes on waiting.
async fn handle_connection(mut stream: TcpStream, state: &str) -> Option<Result<String, CliError>> {
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => {
            let _ = respond(&mut stream, 400, "Bad request.").await;
            return None;
        }
    };
    let params = match parse_callback(&request) {
        Some(Callback::Params(p)) => p,
        Some(Callback::Other) => {
            let _ = respond(&mut stream, 404, "Not found.").await;
            return None;
        }
        None => {
            let _ = respond(&mut stream, 400, "Bad request.").await;
            return None;
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("state") != Some(state) {
        // Any web page the user visits can make the browser request this URL, and a stale
        // tab can replay an old login's callback: neither may end this login, or anyone
        // could cancel it at will. Only the answer carrying our state settles it.
        let _ = respond(
            &mut stream,
            400,
            "Login refused: this callback does not belong to the login the CLI is waiting for. \
             Finish signing in in the window the CLI opened.",
        )
        .await;
        eprintln!(
            "⚠ Ignored a login callback that does not carry this login's state (a stale or forged callback); still waiting"
        );
        return None;
    }
    if let Some(err) = get("error") {
        let _ = respond(&mut stream, 400, "Login failed. You can close this window.").await;
        return Some(Err(CliError::msg(format!(
            "login failed at the gateway: {err}"
        ))));
    }
    let token = get("token").unwrap_or("").trim().to_string();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        let _ = respond(&mut stream, 400, "Login failed: no usable token.").await;
        return Some(Err(CliError::msg(
            "login failed: the callback carried no usable token",
        )));
    }
    let _ = respond(
        &mut stream,
        200,
        "Signed in to OpenShell. You can close this window and return to the terminal.",
    )
    .await;
    Some(Ok(token))
}

/// Reads one HTTP/1.x request (head plus a Content-Length body) up to [`MAX_REQUEST`].
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let body_len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if head_end + 4 + body_len > MAX_REQUEST {
                return Err(std::io::Error::other("request too large"));
            }
            if buf.len() >= head_end + 4 + body_len {
                buf.truncate(head_end + 4 + body_len);
                return Ok(buf);
            }
        }
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the request line and, for POST, a form-encoded body. `None` for malformed input.
fn parse_callback(request: &[u8]) -> Option<Callback> {
    let head_end = find(request, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&request[..head_end]).ok()?;
    let body = &request[head_end + 4..];
    let mut parts = head.lines().next()?.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return Some(Callback::Other);
    }
    let mut params = parse_form(query)?;
    match method {
        "GET" => {}
        "POST" => params.extend(parse_form(std::str::from_utf8(body).ok()?)?),
        _ => return None,
    }
    Some(Callback::Params(params))
}

fn parse_form(text: &str) -> Option<Vec<(String, String)>> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn respond(stream: &mut TcpStream, status: u16, message: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>OpenShell</title></head>\
         <body><p>{message}</p></body></html>"
    );
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_post_callbacks() {
        let req = b"GET /callback?token=a%2Bb&state=s1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_callback(req),
            Some(Callback::Params(vec![
                ("token".into(), "a+b".into()),
                ("state".into(), "s1".into())
            ]))
        );
        let req = b"POST /callback HTTP/1.1\r\nContent-Length: 15\r\n\r\ntoken=t&state=s";
        assert_eq!(
            parse_callback(req),
            Some(Callback::Params(vec![
                ("token".into(), "t".into()),
                ("state".into(), "s".into())
            ]))
        );
        assert_eq!(
            parse_callback(b"GET /favicon.ico HTTP/1.1\r\n\r\n"),
            Some(Callback::Other)
        );
        assert_eq!(
            parse_callback(b"GET /callback?x=%zz HTTP/1.1\r\n\r\n"),
            None
        );
    }

    #[test]
    fn state_is_random_hex() {
        let a = random_state().unwrap();
        assert_eq!(a.len(), 48);
        assert_ne!(a, random_state().unwrap());
    }
}
