//! Slows down repeated failed authentications from one address: after `MAX_FAILURES`
//! failures within `WINDOW`, that address gets 429 with `Retry-After` until the window
//! passes. Other addresses are unaffected. Memory is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{Error, Result};

const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthLimiter {
    /// Refuses an address that failed too often recently.
    pub fn check(&self, ip: IpAddr) -> Result<()> {
        let failures = self.failures.lock().expect("limiter lock");
        if let Some((count, since)) = failures.get(&ip) {
            let elapsed = since.elapsed();
            if *count >= MAX_FAILURES && elapsed < WINDOW {
                return Err(Error::TooManyRequests { retry_after_secs: (WINDOW - elapsed).as_secs().max(1) });
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_slowed_down_after_repeated_failures_and_others_are_not() {
        let limiter = AuthLimiter::default();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let neighbour: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(limiter.check(attacker).is_ok());
            limiter.record_failure(attacker);
        }
        let Err(Error::TooManyRequests { retry_after_secs }) = limiter.check(attacker) else { panic!("not limited") };
        assert!((1..=60).contains(&retry_after_secs));
        assert!(limiter.check(neighbour).is_ok());
    }
}
