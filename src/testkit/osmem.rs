//! `osmem-server`, an in-memory OpenSearch-compatible server, as the tests' Elasticsearch.
//!
//! Contract: [`OsmemServer::start`] returns once the server has announced its URL (it prints
//! one JSON line with `url` when it listens). The server dies with this process (`-parent-pid`
//! and a parent-death signal) and is killed on `Drop`. Code under test must only rely on the
//! documented Elasticsearch 8 / OpenSearch 2 REST API, never on osmem's own behaviour.
//!
//! The binary is found via `OSMEM_SERVER_BIN`, then `osmem-server` on `PATH`, then the one
//! bundled in the `osmem-server` Python package (asked from `python3`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::process;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STDERR_LINES: usize = 40;

/// A running `osmem-server` owned by this process.
#[derive(Debug)]
pub struct OsmemServer {
    child: Child,
    url: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl OsmemServer {
    /// Starts a server on a free loopback port. Blocking.
    pub fn start() -> Result<Self> {
        let binary = binary()?;
        let mut cmd = Command::new(&binary);
        cmd.args(["-addr", "127.0.0.1:0", "-no-stdin-watch", "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = process::spawn_tied(cmd).with_context(|| format!("spawning {}", binary.display()))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        // Both pipes are drained for the server's whole life so it never blocks on a full pipe;
        // the last stderr lines are kept for error messages.
        keep_tail(child.stderr.take().expect("piped"), stderr.clone());
        let (url_tx, url_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::Builder::new().name("osmem-stdout".into()).spawn(move || {
            let mut url_tx = Some(url_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let url = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("url")?.as_str().map(str::to_owned));
                if let (Some(url), Some(tx)) = (url, url_tx.take()) {
                    let _ = tx.send(url);
                }
            }
        })?;
        let url = match url_rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let reason = match e {
                    mpsc::RecvTimeoutError::Timeout => format!("no URL within {READY_TIMEOUT:?}"),
                    mpsc::RecvTimeoutError::Disconnected => format!("exited ({status})"),
                };
                bail!("osmem-server did not start: {reason}; stderr tail:\n{}", join(&stderr));
            }
        };
        Ok(Self {
            child,
            url: url.trim_end_matches('/').to_owned(),
            stderr,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41461` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        join(&self.stderr)
    }
}

impl Drop for OsmemServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keep_tail(pipe: impl Read + Send + 'static, tail: Arc<Mutex<VecDeque<String>>>) {
    let _ = std::thread::Builder::new().name("osmem-stderr".into()).spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == STDERR_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
}

fn join(lines: &Mutex<VecDeque<String>>) -> String {
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
    lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
}

fn binary() -> Result<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| process::find_program("OSMEM_SERVER_BIN", &["osmem-server"], &[]).or_else(from_python))
        .clone()
        .ok_or_else(|| anyhow!("osmem-server not found: `pip install osmem-server`, or set OSMEM_SERVER_BIN"))
}

/// The binary bundled in the Python package, which does not put it on `PATH`.
fn from_python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, osmem_server; sys.stdout.write(osmem_server.resolve_binary())",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?);
    (out.status.success() && path.is_file()).then_some(path)
}
