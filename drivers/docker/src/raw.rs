//! Container reads (list and inspect), made without bollard's typed models.
//!
//! Why: bollard deserializes container states into a strict enum, and Podman's service
//! reports states Docker does not have (`stopped`, between a process's exit and its
//! cleanup; `configured`), which fails the whole answer. The driver reads few fields, so
//! these two requests are made directly, over the same endpoint and API version, into
//! lenient models that keep the state as a string. Writes, images, events and logs go
//! through bollard.

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::engine::Endpoint;

/// One entry of the list: all the driver reads from it.
#[derive(Debug, Deserialize)]
pub(crate) struct ContainerRef {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<HashMap<String, String>>,
}

/// `GET /containers/{id}/json`, the fields the driver reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct Inspect {
    pub id: String,
    pub state: State,
    pub config: Config,
    pub host_config: HostConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct State {
    /// `created`, `running`, `exited`, ... and Podman's own (`stopped`, `configured`).
    pub status: String,
    pub exit_code: i64,
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct Config {
    pub image: Option<String>,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct HostConfig {
    pub nano_cpus: Option<i64>,
    pub memory: Option<i64>,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum RawError {
    /// No answer: the runtime is down or unreachable.
    Transport(String),
    /// The runtime answered with an error status, or with something unreadable.
    Answer {
        status: Option<u16>,
        message: String,
    },
}

fn answer(status: Option<u16>, message: String) -> RawError {
    RawError::Answer { status, message }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /v{api}/containers/json?all=1&filters=...` on `endpoint`.
pub(crate) async fn list_containers(
    endpoint: &Endpoint,
    api_version: &str,
    filters: &HashMap<String, Vec<String>>,
    timeout: Duration,
) -> Result<Vec<ContainerRef>, RawError> {
    let filters = serde_json::to_string(filters).map_err(|e| answer(None, e.to_string()))?;
    let uri = format!(
        "/v{api_version}/containers/json?all=1&filters={}",
        encode(&filters)
    );
    get_json(endpoint, &uri, timeout).await
}

/// `GET /v{api}/containers/{id}/json` on `endpoint`.
pub(crate) async fn inspect_container(
    endpoint: &Endpoint,
    api_version: &str,
    container: &str,
    timeout: Duration,
) -> Result<Inspect, RawError> {
    let uri = format!("/v{api_version}/containers/{}/json", encode(container));
    get_json(endpoint, &uri, timeout).await
}

async fn get_json<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    uri: &str,
    timeout: Duration,
) -> Result<T, RawError> {
    match tokio::time::timeout(timeout, get(endpoint, uri)).await {
        Ok(result) => result,
        Err(_) => Err(RawError::Transport(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

async fn get<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    uri: &str,
) -> Result<T, RawError> {
    let transport = |e: &dyn std::fmt::Display| RawError::Transport(e.to_string());
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| answer(None, e.to_string()))?;
    let response = match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| transport(&e))?;
            send(TokioIo::new(stream), request).await?
        }
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| transport(&e))?;
            send(TokioIo::new(stream), request).await?
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| transport(&e))?
        .to_bytes();
    if !status.is_success() {
        // Errors come as {"message": "..."}; show the message alone when they do.
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        return Err(answer(Some(status.as_u16()), message));
    }
    serde_json::from_slice(&body)
        .map_err(|e| answer(None, format!("unreadable answer to {uri}: {e}")))
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, RawError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| RawError::Transport(e.to_string()))?;
    // Drives the connection until the response body is read; ends with it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| RawError::Transport(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_podman_states_and_missing_fields() {
        let c: Inspect = serde_json::from_str(
            r#"{"Id":"abc","State":{"Status":"stopped","ExitCode":5,"Error":""},
                "Config":{"Image":"img","Env":null,"Labels":{"a":"b"}},"HostConfig":{"NanoCpus":0},
                "Extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.id.as_str(), c.state.status.as_str(), c.state.exit_code),
            ("abc", "stopped", 5)
        );
        assert_eq!(c.config.labels.unwrap()["a"], "b");
        assert_eq!(c.config.env, None);
        assert_eq!(c.host_config.memory, None);
    }

    #[test]
    fn encodes_filters() {
        assert_eq!(
            encode(r#"{"label":["a=b"]}"#),
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_transport_error() {
        let e = list_containers(
            &Endpoint::Unix("/nonexistent/openshell.sock".into()),
            "1.41",
            &HashMap::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RawError::Transport(_)), "{e:?}");
    }
}
