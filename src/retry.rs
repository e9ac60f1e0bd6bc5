//! The retry policy for transient failures: capped, jittered exponential backoff, forever.
//!
//! Contract: [`until_ok`] runs an operation until it succeeds or fails with an error the caller
//! classifies as permanent; every transient failure is logged with the delay before the next
//! attempt. Retrying forever is deliberate: an unreachable server is an outage to wait out and
//! report, never a reason to drop data; a shutdown request ends the wait.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays between attempts: `min` doubling with jitter up to `max`, without end.
pub fn delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `op` until it succeeds or returns an error for which `transient` is false.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    max_delay: Duration,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = delays(Duration::from_millis(200), max_delay);
    loop {
        match op().await {
            Err(e) if transient(&e) => {
                let delay = backoff.next().unwrap_or(max_delay);
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_transient_and_stops_on_permanent() {
        let mut calls = 0;
        let r: Result<u32, String> = until_ok(
            "op",
            Duration::from_secs(1),
            |e: &String| e == "again",
            || {
                calls += 1;
                let c = calls;
                async move {
                    match c {
                        1 | 2 => Err("again".to_string()),
                        _ => Ok(c),
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let r: Result<u32, String> = until_ok(
            "op",
            Duration::from_secs(1),
            |e: &String| e == "again",
            || async { Err("fatal".to_string()) },
        )
        .await;
        assert_eq!(r, Err("fatal".into()));
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let d: Vec<Duration> = delays(Duration::from_millis(100), Duration::from_secs(2))
            .take(12)
            .collect();
        assert!(d.iter().all(|x| *x <= Duration::from_secs(4)), "{d:?}");
        assert!(d[8] >= Duration::from_secs(1), "{d:?}");
    }
}
