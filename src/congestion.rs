//! Adaptive request concurrency for the sink: additive increase, multiplicative decrease.
//!
//! Contract: [`Limiter::acquire`] admits at most `limit` bulk requests at once, where `limit`
//! moves between the configured `min` and `max`:
//! * every answer without pushback whose latency stays within `latency_factor` × the usual
//!   latency raises the limit by `1/limit`, i.e. by about one per round trip at full use;
//! * pushback (a 429 or 503, a per-item 429, a timeout or a refused connection) or an answer
//!   slower than `latency_factor` × the usual latency (and than 100 ms) halves it, at most once
//!   per usual round trip, so one burst of rejected requests that were all in flight together counts once.
//!
//! "Usual latency" is a slow moving average of the latencies of answers without pushback, so a
//! gradual drift (bigger documents) moves the baseline while a sudden rise (a cluster merging
//! or collecting garbage) triggers a decrease.
//!
//! Why this is safe: the limiter only delays requests, it never drops or reorders them. Each
//! lane still sends its batches one at a time and in order, so a document's changes keep their
//! binlog order whatever the limit; when the limit is below the number of lanes, lanes simply
//! take turns. The limit never falls below `min` (≥ 1), so progress never stops.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How one request ended, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Answered without pushback after this long.
    Ok(Duration),
    /// The cluster pushed back (429/503, rejected items, timeout, refused connection).
    Pushback,
    /// Ended in a way that says nothing about load (e.g. a 413 to split).
    Neutral,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_use: usize,
    /// Slow moving average of unpushed-back latencies, in seconds; 0 until the first sample.
    usual: f64,
    samples: u64,
    last_decrease: Option<Instant>,
}

/// The shared concurrency limit of one sink.
#[derive(Debug)]
pub struct Limiter {
    min: usize,
    max: usize,
    latency_factor: f64,
    state: Mutex<State>,
    freed: Notify,
}

/// Samples before latency alone may trigger a decrease: the baseline needs a few to settle.
const WARM_UP_SAMPLES: u64 = 16;
/// Weight of a new sample in the usual latency.
const USUAL_WEIGHT: f64 = 0.05;
/// Answers faster than this never count as congestion, however fast the usual answer: with
/// small batches the usual latency is a few milliseconds, and scheduling jitter alone would
/// otherwise halve the concurrency (and add queueing delay) for nothing.
const CONGESTED_AT_LEAST: Duration = Duration::from_millis(100);

impl Limiter {
    /// Starts at `max`: an idle cluster should not have to earn full speed first; the first
    /// pushback brings the limit down quickly.
    pub fn new(min: usize, max: usize, latency_factor: f64) -> Self {
        let min = min.clamp(1, max.max(1));
        let max = max.max(min);
        Limiter {
            min,
            max,
            latency_factor,
            state: Mutex::new(State {
                limit: max as f64,
                in_use: 0,
                usual: 0.0,
                samples: 0,
                last_decrease: None,
            }),
            freed: Notify::new(),
        }
    }

    /// Waits for a free slot under the current limit.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            // Register interest before checking, so a release in between is not missed.
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock().expect("limiter lock");
                if s.in_use < s.limit as usize {
                    s.in_use += 1;
                    return Permit {
                        limiter: self,
                        started: Instant::now(),
                        released: false,
                    };
                }
            }
            freed.await;
        }
    }

    /// The current limit, rounded down.
    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit as usize
    }

    fn release(&self, signal: Signal, now: Instant) {
        let mut s = self.state.lock().expect("limiter lock");
        s.in_use -= 1;
        let usual = Duration::from_secs_f64(s.usual);
        let recently_decreased = s.last_decrease.is_some_and(|t| now.duration_since(t) < usual);
        let congested = match signal {
            Signal::Pushback => true,
            Signal::Ok(latency) => {
                s.samples >= WARM_UP_SAMPLES
                    && latency > CONGESTED_AT_LEAST
                    && latency.as_secs_f64() > s.usual * self.latency_factor
            }
            Signal::Neutral => false,
        };
        if congested {
            if !recently_decreased {
                s.limit = (s.limit / 2.0).max(self.min as f64);
                s.last_decrease = Some(now);
                tracing::warn!(
                    limit = s.limit as usize,
                    ?signal,
                    "Elasticsearch is pushing back; fewer bulk requests in flight"
                );
            }
        } else if let Signal::Ok(latency) = signal {
            let l = latency.as_secs_f64();
            s.usual = match s.samples {
                0 => l,
                _ => s.usual + USUAL_WEIGHT * (l - s.usual),
            };
            s.samples += 1;
            s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
        }
        crate::metrics::get().concurrency_limit(s.limit as usize);
        drop(s);
        self.freed.notify_waiters();
    }
}

/// One admitted request; report how it ended with [`Permit::done`]. Dropping a permit without
/// that (a cancelled request) frees the slot as [`Signal::Neutral`].
pub struct Permit<'a> {
    limiter: &'a Limiter,
    started: Instant,
    released: bool,
}

impl Permit<'_> {
    /// Time since the permit was granted.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn done(mut self, signal: Signal) {
        self.released = true;
        self.limiter.release(signal, Instant::now());
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.released {
            self.limiter.release(Signal::Neutral, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    async fn finish(l: &Limiter, signal: Signal) {
        l.acquire().await.done(signal);
    }

    #[tokio::test(start_paused = true)]
    async fn halves_on_pushback_once_per_round_trip_and_recovers_additively() {
        let l = Limiter::new(1, 16, 3.0);
        for _ in 0..WARM_UP_SAMPLES {
            finish(&l, Signal::Ok(100 * MS)).await;
        }
        assert_eq!(l.limit(), 16);
        // A burst of pushbacks within one round trip counts once.
        for _ in 0..5 {
            finish(&l, Signal::Pushback).await;
        }
        assert_eq!(l.limit(), 8);
        tokio::time::advance(200 * MS).await;
        finish(&l, Signal::Pushback).await;
        assert_eq!(l.limit(), 4);
        // Additive increase: about one per `limit` good answers.
        for _ in 0..4 {
            finish(&l, Signal::Ok(100 * MS)).await;
        }
        assert_eq!(l.limit(), 4, "4 + 4 × 1/4… is just under 5");
        for _ in 0..2 {
            finish(&l, Signal::Ok(100 * MS)).await;
        }
        assert_eq!(l.limit(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_min_nor_above_max() {
        let l = Limiter::new(2, 4, 3.0);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            finish(&l, Signal::Pushback).await;
        }
        assert_eq!(l.limit(), 2);
        for _ in 0..200 {
            finish(&l, Signal::Ok(10 * MS)).await;
        }
        assert_eq!(l.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sudden_latency_rise_decreases_but_warm_up_does_not() {
        let l = Limiter::new(1, 8, 3.0);
        // Before the baseline settles, slow answers are just samples.
        finish(&l, Signal::Ok(10 * MS)).await;
        finish(&l, Signal::Ok(500 * MS)).await;
        assert_eq!(l.limit(), 8);
        for _ in 0..WARM_UP_SAMPLES {
            finish(&l, Signal::Ok(50 * MS)).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        finish(&l, Signal::Ok(2_000 * MS)).await;
        assert_eq!(l.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn admits_only_up_to_the_limit_and_wakes_a_waiter_on_release() {
        let l = std::sync::Arc::new(Limiter::new(1, 2, 3.0));
        let a = l.acquire().await;
        let b = l.acquire().await;
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                l.acquire().await.done(Signal::Neutral);
            })
        };
        tokio::time::advance(10 * MS).await;
        assert!(!waiter.is_finished(), "a third request must wait at limit 2");
        a.done(Signal::Ok(10 * MS));
        waiter.await.expect("waiter admitted after a release");
        drop(b);
        assert_eq!(l.state.lock().unwrap().in_use, 0);
    }
}
