//! Child-process plumbing shared by the server wrappers.
//!
//! Contract: a child started with [`spawn_tied`] is sent SIGKILL when this process dies, however
//! it dies; children registered with [`kill_at_exit`] are also killed, and their directories
//! removed, when the process exits normally (statics are never dropped). Scratch directories
//! made by [`scratch_dir`] that outlive their process are removed by the next one.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

use anyhow::{Context, Result};

const SCRATCH_PREFIX: &str = "cdc-testkit-";

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child gets SIGKILL when this process dies.
///
/// The parent-death signal fires when the *thread* that forked the child exits, not the process;
/// test threads and `spawn_blocking` threads come and go, so every child is forked by one
/// dedicated thread that lives as long as the process.
pub(crate) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the testkit spawner thread");
        tx
    });
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?
}

static AT_EXIT: Mutex<Vec<(Option<u32>, Option<PathBuf>)>> = Mutex::new(Vec::new());

/// Kills `pid` and then removes `dir` when the process exits normally.
pub(crate) fn kill_at_exit(pid: Option<u32>, dir: Option<PathBuf>) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function.
        unsafe { libc::atexit(cleanup_at_exit) };
    });
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push((pid, dir));
}

extern "C" fn cleanup_at_exit() {
    // try_lock: never block process exit on a thread that died holding the lock.
    let Ok(entries) = AT_EXIT.try_lock() else {
        return;
    };
    for (pid, dir) in entries.iter() {
        if let Some(pid) = *pid {
            signal(pid, libc::SIGKILL);
            // SAFETY: reaping our own child; a null status pointer is allowed.
            unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
        }
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Sends `sig` to `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// A new empty directory `$TMPDIR/cdc-testkit-<pid>-<n>-<kind>`, after removing those left by
/// processes that no longer exist.
pub(crate) fn scratch_dir(kind: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let tmp = std::env::temp_dir();
    SWEPT.call_once(|| sweep_stale(&tmp));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = tmp.join(format!("{SCRATCH_PREFIX}{}-{n}-{kind}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        // kill(pid, 0) fails with ESRCH only when no such process exists.
        let gone = !signal(pid, 0) && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the directory tree `from` into the existing directory `to`.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `fut` to completion on a private current-thread runtime, from sync code that may itself
/// be running inside a runtime (where a nested `block_on` would panic).
pub(crate) fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(fut)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().expect("testkit helper thread panicked"))
    } else {
        run()
    }
}

/// The last `lines` lines of the text file at `path`, starting at byte `from`.
pub(crate) fn tail(path: &Path, from: u64, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds an executable: an explicit override, then `PATH`, then fixed fallbacks.
pub(crate) fn find_program(env_override: &str, names: &[&str], fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_override).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    fallbacks.iter().map(PathBuf::from).find(|p| p.is_file())
}
