//! TLS for tests: a throw-away certificate authority, and a TLS-terminating proxy that puts
//! `https://` (and optionally an `Authorization` check) in front of an HTTP server.
//!
//! Contract:
//! * [`TestPki::generate`] makes, with the `openssl` command, a CA, a server certificate for
//!   `127.0.0.1`/`localhost` and a client certificate signed by it, and an unrelated second CA
//!   (for "wrong CA" tests). Files live in a scratch directory removed on `Drop`.
//! * [`TlsProxy::start`] listens on a free loopback port with the given certificate, forwards
//!   every HTTP/1.1 request to the upstream unchanged and streams the answers back. With
//!   `expect_authorization` set, a request whose `Authorization` header differs gets
//!   `401 Unauthorized` (as Elasticsearch answers) and is counted in [`TlsProxy::rejected`]; so
//!   tests can prove credentials are sent against a server (osmem) that ignores them. It runs
//!   on its own thread and runtime and stops on `Drop`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use super::process;

/// A CA, a server and a client certificate signed by it, and an unrelated CA.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates the files with the `openssl` command (≈0.2 s). Blocking.
    pub fn generate() -> Result<Self> {
        let pki = TestPki {
            dir: process::scratch_dir("pki")?,
        };
        let d = &pki.dir;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                        "-days",
                        "3",
                        "-subj",
                        &format!("/CN=cdc test {ca}"),
                        "-addext",
                        "basicConstraints=critical,CA:TRUE",
                        "-addext",
                        "keyUsage=critical,keyCertSign,cRLSign",
                    ],
                ]
                .concat(),
            )?;
        }
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        for (leaf, cn) in [("server", "localhost"), ("client", "cdc")] {
            openssl(
                d,
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{leaf}.key"),
                        "-out",
                        &format!("{leaf}.csr"),
                        "-subj",
                        &format!("/CN={cn}"),
                    ],
                ]
                .concat(),
            )?;
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{leaf}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "3",
                    "-out",
                    &format!("{leaf}.pem"),
                    "-extfile",
                    "leaf.ext",
                ],
            )?;
        }
        Ok(pki)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// A CA that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running `openssl` (install the openssl package)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What the proxy presents and checks.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// Answer 401 unless the `Authorization` header is exactly this.
    pub expect_authorization: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    rejected: AtomicU64,
}

/// A running TLS-terminating proxy; see the module doc.
#[derive(Debug)]
pub struct TlsProxy {
    url: String,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Starts a proxy to `upstream` (`http://host:port`). Blocking until it listens.
    pub fn start(upstream: &str, opts: ProxyOptions) -> Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("the upstream must be an http:// URL")?
            .trim_end_matches('/')
            .to_string();
        let config = Arc::new(server_config(&opts)?);
        let counters = Arc::new(Counters::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Bound here (std, not tokio) so this works from inside a test's runtime too.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::Builder::new().name("tls-proxy".into()).spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                loop {
                    let (tcp, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let (acceptor, upstream, c, expect) = (
                        acceptor.clone(),
                        upstream.clone(),
                        c.clone(),
                        opts.expect_authorization.clone(),
                    );
                    tokio::spawn(async move {
                        // A failed handshake (the client distrusts us) just ends the connection.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = serve(tls, &upstream, expect.as_deref(), &c).await;
                        }
                    });
                }
            })
        })?;
        Ok(TlsProxy {
            url,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests passed on to the upstream.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }

    /// Requests answered 401 for a wrong or missing `Authorization` header.
    pub fn rejected(&self) -> u64 {
        self.counters.rejected.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config(opts: &ProxyOptions) -> Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&opts.cert)
        .with_context(|| format!("reading {}", opts.cert.display()))?
        .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&opts.key).with_context(|| format!("reading {}", opts.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &opts.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)? {
                roots.add(c?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(certs, key)?)
}

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Forwards requests of one client connection; answers stream back from a second task.
async fn serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    upstream: &str,
    expect: Option<&str>,
    counters: &Counters,
) -> Result<()> {
    let (client_r, client_w) = tokio::io::split(tls);
    let client_w = Arc::new(tokio::sync::Mutex::new(client_w));
    let mut client_r = BufReader::new(client_r);
    let (mut up_r, mut up_w) = TcpStream::connect(upstream).await?.into_split();
    let back = {
        let client_w = client_w.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client_w.lock().await.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_w.lock().await.shutdown().await;
        })
    };
    let result = async {
        loop {
            let mut head = Vec::new();
            loop {
                let n = client_r.read_until(b'\n', &mut head).await?;
                if n == 0 {
                    return Ok(()); // the client closed the connection
                }
                if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                    break;
                }
                if head.len() > MAX_HEAD {
                    bail!("request head too large");
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let header = |name: &str| {
                text.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            if let Some(want) = expect {
                if header("authorization").as_deref() != Some(want) {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let body = r#"{"error":{"type":"security_exception","reason":"unable to authenticate user"},"status":401}"#;
                    let resp = format!(
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let mut w = client_w.lock().await;
                    w.write_all(resp.as_bytes()).await?;
                    w.shutdown().await?;
                    return Ok(());
                }
            }
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            up_w.write_all(&head).await?;
            let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            if chunked {
                loop {
                    let mut line = Vec::new();
                    client_r.read_until(b'\n', &mut line).await?;
                    up_w.write_all(&line).await?;
                    let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim().split(';').next().unwrap_or(""), 16)?;
                    if size == 0 {
                        // Trailers up to the empty line.
                        loop {
                            let mut t = Vec::new();
                            client_r.read_until(b'\n', &mut t).await?;
                            up_w.write_all(&t).await?;
                            if t == b"\r\n" || t.is_empty() {
                                break;
                            }
                        }
                        break;
                    }
                    let mut chunk = (&mut client_r).take(size as u64 + 2);
                    tokio::io::copy(&mut chunk, &mut up_w).await?;
                }
            } else if let Some(len) = header("content-length") {
                let len: u64 = len.parse()?;
                let mut body = (&mut client_r).take(len);
                tokio::io::copy(&mut body, &mut up_w).await?;
            }
        }
    }
    .await;
    back.abort();
    result
}
