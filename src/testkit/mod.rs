//! Test and demo support: real servers, an Elasticsearch helper and sample data. Not used by the
//! indexer itself.
//!
//! Contract:
//! * [`MariaDbServer`] and [`OsmemServer`] are real child processes on free loopback ports. They
//!   die with the process that started them (parent-death signal, plus `-parent-pid` for osmem),
//!   and an owned server is killed, and its data directory removed, on `Drop`.
//! * [`shared_mysql`] and [`shared_es`] start one server of each kind per test process, or point
//!   at external ones when `CDC_MYSQL_URL` (optionally `CDC_MYSQL_ROOT_URL`) or `ES_URL`
//!   (optionally `ES_USER`/`ES_PASSWORD`) are set. They are started with `std::process` and
//!   blocking waits, so they are not tied to any test's tokio runtime. Tests sharing them must
//!   isolate themselves with their own database name and index prefix ([`unique_name`]).
//! * Lifecycle methods (`start`, `stop`, `restart`, …) block the calling thread; everything that
//!   talks to a server over the network ([`EsClient`], [`MariaDbServer::root_conn`]) is async and
//!   belongs to the caller's runtime, so create such clients inside each test.
//! * Tests wait with [`wait_until`] (a polled condition with a deadline), never a fixed sleep.
//! * [`sample`] generates the demo data set and [`workload`] random write transactions, both
//!   deterministic per seed.

mod es;
mod es_proxy;
mod mariadb;
mod osmem;
mod process;
pub mod sample;
pub mod tls;
pub mod workload;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};

pub use es::{EsClient, EVENT_LOG_INDEX_BODY, ORDERS_INDEX_BODY};
pub use es_proxy::{EsProxy, Faults, ProxyStats};
pub use mariadb::MariaDbServer;
pub use osmem::OsmemServer;

/// The MySQL/MariaDB server tests run against: one this process owns, or an external one.
#[derive(Debug)]
pub struct MySqlTarget {
    url: String,
    root_url: String,
    server: Option<MariaDbServer>,
}

impl MySqlTarget {
    /// `CDC_MYSQL_URL` (with `CDC_MYSQL_ROOT_URL` for administration, defaulting to the same URL)
    /// when set, else a freshly started [`MariaDbServer`]. Blocking.
    pub fn from_env_or_start() -> Result<Self> {
        match std::env::var("CDC_MYSQL_URL") {
            Ok(url) if !url.is_empty() => {
                let root_url = std::env::var("CDC_MYSQL_ROOT_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| url.clone());
                Ok(Self {
                    url,
                    root_url,
                    server: None,
                })
            }
            _ => {
                let server = MariaDbServer::start()?;
                Ok(Self {
                    url: server.url(),
                    root_url: server.root_url(),
                    server: Some(server),
                })
            }
        }
    }

    /// URL for the indexer: a user with replication and `SELECT` rights.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// URL of an account that may create databases and write the tables.
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    /// A new connection as [`root_url`](Self::root_url), on the caller's runtime.
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        connect(&self.root_url).await
    }

    /// The owned server, `None` for an external one.
    pub fn server(&self) -> Option<&MariaDbServer> {
        self.server.as_ref()
    }
}

/// The Elasticsearch-compatible cluster tests run against: an owned osmem or an external one.
#[derive(Debug)]
pub struct EsTarget {
    url: String,
    credentials: Option<(String, String)>,
    server: Option<OsmemServer>,
}

impl EsTarget {
    /// `ES_URL` (basic auth from `ES_USER`/`ES_PASSWORD`) when set, else a fresh
    /// [`OsmemServer`]. Blocking.
    pub fn from_env_or_start() -> Result<Self> {
        match std::env::var("ES_URL") {
            Ok(url) if !url.is_empty() => {
                let credentials = match (std::env::var("ES_USER"), std::env::var("ES_PASSWORD")) {
                    (Ok(user), Ok(password)) if !user.is_empty() => Some((user, password)),
                    _ => None,
                };
                Ok(Self {
                    url,
                    credentials,
                    server: None,
                })
            }
            _ => Ok(Self::from_server(OsmemServer::start()?)),
        }
    }

    /// Wraps an owned server.
    pub fn from_server(server: OsmemServer) -> Self {
        Self {
            url: server.url().to_owned(),
            credentials: None,
            server: Some(server),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Basic-auth user and password, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A new client on the caller's runtime (do not keep one in a static: its connections
    /// belong to the runtime that first used it).
    pub fn client(&self) -> Result<EsClient> {
        EsClient::new(self)
    }

    /// The owned server, `None` for an external cluster.
    pub fn server(&self) -> Option<&OsmemServer> {
        self.server.as_ref()
    }
}

/// The per-process MySQL/MariaDB target, started on first use. Panics if it cannot start.
pub fn shared_mysql() -> &'static MySqlTarget {
    static SHARED: OnceLock<MySqlTarget> = OnceLock::new();
    SHARED.get_or_init(|| {
        let target = MySqlTarget::from_env_or_start().expect("starting the shared MariaDB server");
        if let Some(server) = &target.server {
            process::kill_at_exit(server.pid(), Some(server.datadir().to_owned()));
        }
        target
    })
}

/// The per-process Elasticsearch target, started on first use. Panics if it cannot start.
pub fn shared_es() -> &'static EsTarget {
    static SHARED: OnceLock<EsTarget> = OnceLock::new();
    SHARED.get_or_init(|| {
        let target = EsTarget::from_env_or_start().expect("starting the shared osmem server");
        if let Some(server) = &target.server {
            process::kill_at_exit(Some(server.pid()), None);
        }
        target
    })
}

/// Opens a connection to `url`.
pub async fn connect(url: &str) -> Result<mysql_async::Conn> {
    let opts = mysql_async::Opts::from_url(url).with_context(|| format!("bad MySQL URL {url:?}"))?;
    mysql_async::Conn::new(opts)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// A name no other test (in this or another process) uses: lowercase ASCII letters, digits and
/// `_`, so it is valid as a database name and as an index prefix.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // Time and pid keep names apart across runs against a long-lived external server.
    format!("{prefix}_{}_{}_{n}", secs % 1_000_000, std::process::id())
}

/// Polls `condition` every `poll_interval` until it returns `Ok`, and returns that value.
///
/// An `Err` means "not yet"; after `timeout` the last such error is returned, so write conditions
/// whose errors describe what was observed (e.g. `anyhow::ensure!(n == 200, "count is {n}")`).
/// The condition is always tried at least once, and a try that hangs is cut off at the deadline.
pub async fn wait_until<T, F, Fut>(timeout: Duration, poll_interval: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let remaining = deadline.saturating_duration_since(Instant::now()).max(poll_interval);
        let last = match tokio::time::timeout(remaining, condition()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the condition did not answer within {remaining:?}"),
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!(
                "condition not met within {timeout:?} ({tries} tries); last result"
            )));
        }
        tokio::time::sleep(poll_interval.min(deadline - Instant::now())).await;
    }
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_first_ok_value() {
        // GIVEN a condition that succeeds on its third try
        let mut calls = 0;
        // WHEN polling it
        let value = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            let n = calls;
            async move {
                anyhow::ensure!(n >= 3, "only {n} calls");
                Ok(n * 10)
            }
        })
        .await
        .unwrap();
        // THEN its value comes back once it holds
        assert_eq!(value, 30);
    }

    #[tokio::test]
    async fn wait_until_times_out_with_the_last_observation() {
        // GIVEN a condition that never holds
        let started = Instant::now();
        // WHEN polling it with a short deadline
        let err = wait_until(Duration::from_millis(100), Duration::from_millis(10), || async {
            Err::<(), _>(anyhow!("count is 7"))
        })
        .await
        .unwrap_err();
        // THEN it gives up near the deadline and says what it last saw
        assert!(started.elapsed() < Duration::from_secs(2));
        let message = format!("{err:#}");
        assert!(message.contains("count is 7") && message.contains("100ms"), "{message}");
    }

    #[tokio::test]
    async fn wait_until_cuts_off_a_hanging_condition() {
        let err = wait_until(Duration::from_millis(50), Duration::from_millis(10), || async {
            std::future::pending::<Result<()>>().await
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
    }

    #[test]
    fn unique_names_are_distinct_and_valid_identifiers() {
        let a = unique_name("E2E-Orders");
        let b = unique_name("E2E-Orders");
        assert_ne!(a, b);
        assert!(a.starts_with("e2e_orders_"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert!(a.len() < 64);
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("mysql://cdc:cdc-secret@127.0.0.1:3307"),
            "mysql://cdc:***@127.0.0.1:3307"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1:3307/db"),
            "mysql://root@127.0.0.1:3307/db"
        );
        assert_eq!(redact("http://h:9200"), "http://h:9200");
    }
}
