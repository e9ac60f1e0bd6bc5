//! A private `mariadbd` with a row-based binary log, for tests and the demo.
//!
//! Contract: [`MariaDbServer::start`] returns only once the server accepts authenticated
//! connections as the indexer's user `cdc`/`cdc-secret` (rights: `REPLICATION SLAVE,
//! REPLICATION CLIENT, SELECT, RELOAD` on `*.*`); `root` has an empty password. The binary log
//! (`<datadir>/mariadb-bin.*`) is ROW-based with FULL row images and FULL row metadata and
//! contains none of the set-up statements, so it starts with what the test does. Lifecycle
//! methods block; `restart` reuses the data directory and port. Dropping the value kills the
//! server and removes its data directory. [`MariaDbServer::start_with_tls`] also offers TLS
//! with given CA, certificate and key files (plaintext stays allowed; users may `REQUIRE SSL`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times `start` tries a new port when another process took the one it picked.
const PORT_ATTEMPTS: usize = 5;

/// Runs before the server listens, on every start (so it must be idempotent). It is kept out of
/// the binary log so that log holds only what tests do.
const INIT_SQL: &str = "\
SET sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc-secret';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT, RELOAD ON *.* TO 'cdc'@'%';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
";

/// A running (or stopped) `mariadbd` owned by this process.
#[derive(Debug)]
pub struct MariaDbServer {
    child: Option<Child>,
    port: u16,
    datadir: PathBuf,
    paused: bool,
    /// `(ca, cert, key)` PEM files the server offers TLS with.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl MariaDbServer {
    /// Initialises a fresh data directory and starts the server on a free loopback port.
    /// Blocking; fails with the tail of `error.log` if the server does not come up.
    pub fn start() -> Result<Self> {
        Self::start_with_tls(None)
    }

    /// [`start`](Self::start), offering TLS with `(ca, cert, key)` PEM files when given
    /// (`--ssl-ca`, `--ssl-cert`, `--ssl-key`); the server still accepts plaintext.
    pub fn start_with_tls(tls: Option<(&Path, &Path, &Path)>) -> Result<Self> {
        let datadir = process::scratch_dir("mariadb")?;
        // From here on Drop removes the directory whatever happens.
        let mut server = Self {
            child: None,
            port: 0,
            datadir,
            paused: false,
            tls: tls.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
        };
        server.install()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = process::free_port()?;
            let log_start = server.error_log_len();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && process::tail(&server.error_log(), log_start, 50).contains("Bind on TCP/IP port") =>
                {
                    tracing::debug!("mariadbd lost its port race, retrying: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// URL for the indexer: `mysql://cdc:cdc-secret@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mysql://cdc:cdc-secret@127.0.0.1:{}", self.port)
    }

    /// URL for set-up: `mysql://root@127.0.0.1:PORT`.
    pub fn root_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Data directory; also holds the binary logs, `error.log` and the socket.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// Process id while the server process exists.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new root connection on the caller's runtime.
    pub async fn root_conn(&self) -> Result<mysql_async::Conn> {
        super::connect(&self.root_url()).await
    }

    /// Graceful shutdown (SIGTERM, then wait for the process to exit). Blocking.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        self.resume_signal(&child);
        process::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mariadbd did not shut down within {STOP_TIMEOUT:?}; killed it. error.log tail:\n{}",
                    self.error_log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Crash: SIGKILL, no shutdown work at all. Blocking until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts the server again on the same data directory and port (after `stop` or `kill`;
    /// a running server is stopped first). Blocking until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&mut self) -> Result<()> {
        let Some(child) = &self.child else {
            bail!("mariadbd is not running")
        };
        let pid = child.id();
        if !process::signal(pid, libc::SIGSTOP) {
            bail!("SIGSTOP failed: {}", std::io::Error::last_os_error());
        }
        self.paused = true;
        // Signal delivery is asynchronous: return only once the kernel reports it stopped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state is the first field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if state == Some("T") || state == Some("t") {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("mariadbd (pid {pid}) did not stop within 10 s of SIGSTOP (state {state:?})");
            }
            std::thread::yield_now();
        }
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        let Some(child) = &self.child else {
            bail!("mariadbd is not running")
        };
        if !process::signal(child.id(), libc::SIGCONT) {
            bail!("SIGCONT failed: {}", std::io::Error::last_os_error());
        }
        self.paused = false;
        Ok(())
    }

    /// The last `lines` lines of the server's `error.log`.
    pub fn error_log_tail(&self, lines: usize) -> String {
        process::tail(&self.error_log(), 0, lines)
    }

    fn error_log(&self) -> PathBuf {
        self.datadir.join("error.log")
    }

    fn error_log_len(&self) -> u64 {
        std::fs::metadata(self.error_log()).map(|m| m.len()).unwrap_or(0)
    }

    fn resume_signal(&mut self, child: &Child) {
        if self.paused {
            process::signal(child.id(), libc::SIGCONT);
            self.paused = false;
        }
    }

    /// Fills the data directory with a copy of a freshly installed one: `mariadb-install-db`
    /// runs once per process (it is most of the start time), later servers copy its result.
    fn install(&self) -> Result<()> {
        static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut template = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
        if template.is_none() {
            let dir = process::scratch_dir("mariadb-template")?;
            if let Err(e) = install_db(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            process::kill_at_exit(None, Some(dir.clone()));
            *template = Some(dir);
        }
        let template = template.as_ref().expect("just set");
        process::copy_tree(template, &self.datadir)
            .with_context(|| format!("copying {} to {}", template.display(), self.datadir.display()))?;
        std::fs::write(self.datadir.join("init.sql"), INIT_SQL)?;
        Ok(())
    }

    /// Starts the process on `self.port` and waits until it answers.
    fn launch(&mut self) -> Result<()> {
        let d = &self.datadir;
        let mut cmd = Command::new(mariadbd_path());
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", self.error_log().display()))
            .arg(format!("--log-bin={}", d.join("mariadb-bin").display()))
            .arg(format!("--init-file={}", d.join("init.sql").display()))
            .args([
                "--server-id=1",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--binlog-checksum=CRC32",
                "--max-allowed-packet=256M",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--sync-binlog=0",
                "--max-connections=1000",
                // Start and stop fast: nothing to warm up or dump, no instrumentation.
                "--performance-schema=OFF",
                "--innodb-buffer-pool-load-at-startup=OFF",
                "--innodb-buffer-pool-dump-at-shutdown=OFF",
            ])
            .args(INNODB_ARGS)
            .args(user_arg())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg(format!("--ssl-ca={}", ca.display()))
                .arg(format!("--ssl-cert={}", cert.display()))
                .arg(format!("--ssl-key={}", key.display()));
        }
        let log_start = self.error_log_len();
        let child = process::spawn_tied(cmd).context("spawning mariadbd")?;
        self.child = Some(child);
        self.paused = false;
        let started = Instant::now();
        if let Err(e) = self.wait_ready() {
            self.kill();
            let log = process::tail(&self.error_log(), log_start, 30);
            bail!(
                "mariadbd did not become ready: {e:#}\n--- tail of {} ---\n{log}",
                self.error_log().display()
            );
        }
        tracing::debug!(port = self.port, elapsed = ?started.elapsed(), "mariadbd ready");
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let url = self.url();
        let child = self.child.as_mut().expect("launched");
        process::block_on(async move {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait()? {
                    bail!("mariadbd exited during startup ({status})");
                }
                let error = match tokio::time::timeout(Duration::from_secs(5), probe(&url)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "connection attempt timed out".to_owned(),
                };
                if Instant::now() >= deadline {
                    bail!("no connection within {READY_TIMEOUT:?}: {error}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}

/// Given to both the installer and the server so the redo log never needs resizing.
const INNODB_ARGS: [&str; 3] = [
    "--innodb-buffer-pool-size=128M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
];

fn user_arg() -> Option<String> {
    // SAFETY: geteuid has no preconditions. As root, mariadbd refuses to run unless told to.
    (unsafe { libc::geteuid() } == 0).then(|| "--user=root".to_owned())
}

fn mariadbd_path() -> PathBuf {
    process::find_program(
        "MARIADBD",
        &["mariadbd", "mysqld"],
        &["/usr/sbin/mariadbd", "/usr/libexec/mariadbd"],
    )
    .unwrap_or_else(|| PathBuf::from("mariadbd"))
}

/// Runs `mariadb-install-db` into the empty directory `datadir`.
fn install_db(datadir: &Path) -> Result<()> {
    let program = process::find_program(
        "MARIADB_INSTALL_DB",
        &["mariadb-install-db", "mysql_install_db"],
        &[
            "/usr/bin/mariadb-install-db",
            "/usr/local/mysql/scripts/mariadb-install-db",
        ],
    )
    .context("mariadb-install-db not found (set MARIADB_INSTALL_DB or install mariadb-server)")?;
    let mut cmd = Command::new(&program);
    cmd.arg("--no-defaults")
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg(format!("--datadir={}", datadir.display()))
        .args(user_arg())
        .args(INNODB_ARGS)
        .stdin(Stdio::null());
    if let Some(dir) = mariadbd_path().parent() {
        // Let it find the server binary when /usr/sbin is not on PATH.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.push(dir.to_owned());
        cmd.env("PATH", std::env::join_paths(dirs)?);
    }
    let out = cmd.output().with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Authenticates as the indexer's user, which proves the init file ran.
async fn probe(url: &str) -> Result<()> {
    use mysql_async::prelude::Queryable;
    let mut conn = super::connect(url).await?;
    conn.query_drop("SELECT 1").await?;
    conn.disconnect().await?;
    Ok(())
}
