//! The monitoring endpoint: `GET /metrics`, `/healthz` and `/readyz` over plain HTTP/1.1.
//!
//! Contract:
//! * `/metrics` answers the Prometheus text exposition of [`crate::metrics`]; `/healthz` answers
//!   200 while the process runs (the accept loop is a task on the same runtime as the pipeline);
//!   `/readyz` answers 200 when the binlog stream is connected and the sink is making progress,
//!   else 503 with the reason. Other paths get 404, other methods 405.
//! * A deliberately tiny server, one request per connection (`Connection: close`): a request
//!   head is read up to 8 KiB within 5 s, so a slow or hostile client can hold a connection
//!   only briefly; at most 32 connections are served at once; a bad client never affects the
//!   pipeline, since errors end only its own connection. Prometheus, curl and kubelet probes
//!   need nothing more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on metrics.listen = {addr}: {source}; pick a free address or set metrics.listen = \"\" to disable")]
    Bind { addr: String, source: std::io::Error },
}

/// Binds the listener (so a taken port fails the start) and serves it on a background task.
pub async fn start(addr: &str) -> Result<SocketAddr, HealthError> {
    let bind_err = |source| HealthError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tokio::spawn(serve(listener));
    tracing::info!(addr = %local, "metrics endpoint listening");
    Ok(local)
}

async fn serve(listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the limit: refuse rather than queue
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = handle(stream).await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(h) => h?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = respond(&head);
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head.starts_with("HEAD ") {
        out.extend_from_slice(&body);
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_HEAD {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Status line, content type and body for a request head.
fn respond(head: &str) -> (&'static str, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return ("400 Bad Request", TEXT, b"bad request\n".to_vec());
    }
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, b"only GET\n".to_vec());
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::get().render(),
        ),
        "/healthz" => ("200 OK", TEXT, b"ok\n".to_vec()),
        "/readyz" => {
            let m = crate::metrics::get();
            m.refresh();
            match m.ready() {
                Ok(()) => ("200 OK", TEXT, b"ready\n".to_vec()),
                Err(why) => (
                    "503 Service Unavailable",
                    TEXT,
                    format!("not ready: {why}\n").into_bytes(),
                ),
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            b"not found; try /metrics, /healthz or /readyz\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_errors() {
        let addr = start("127.0.0.1:0").await.unwrap();
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("cdc_build_info{version="), "{r}");
        let r = get(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        // No binlog stream in a unit test: not ready, with the reason.
        let r = get(addr, "GET /readyz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("not connected"), "{r}");
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get(addr, "garbage\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        let r = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
    }

    #[tokio::test]
    async fn a_taken_port_names_the_key() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let e = start(&addr).await.unwrap_err().to_string();
        assert!(e.contains("metrics.listen"), "{e}");
    }
}
