//! Failed logins per username. (Per address, logins share the limiter of wrong admin keys
//! and device tokens, `services::limiter`: ten failures a minute.)
//!
//! After `max_failures` failed logins for one username within `window` (counted from the
//! first of them), that username is refused with 429 — but only to addresses that themselves
//! failed a login within the window. So a guesser spread over many addresses gets about one
//! guess per address and window, while the real user, from an address that has not failed,
//! still logs in: an attacker cannot lock a user out. Every entry ends with its window, and
//! the maps are bounded: when full of live entries, new usernames are not tracked (the
//! per-address limit still holds) rather than forgetting the lockouts in place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::Error;

const MAX_USERNAMES: usize = 10_000;
const MAX_ADDRESSES: usize = 100_000;

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// username -> (failures, first failure of the window).
    usernames: HashMap<String, (u32, Instant)>,
    /// address -> its last failed login.
    addresses: HashMap<IpAddr, Instant>,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> LoginLimiter {
        LoginLimiter { max_failures: max_failures.max(1), window, state: Mutex::default() }
    }

    /// Refuses a login for `username` from `ip` while that username is locked and `ip` failed
    /// a login recently.
    pub fn check(&self, username: &str, ip: IpAddr, now: Instant) -> Result<(), Error> {
        let state = self.state.lock().expect("login limiter lock");
        let Some((failures, since)) = state.usernames.get(username) else { return Ok(()) };
        let elapsed = now.saturating_duration_since(*since);
        let locked = *failures >= self.max_failures && elapsed < self.window;
        let ip_failed = state.addresses.get(&ip).is_some_and(|at| now.saturating_duration_since(*at) < self.window);
        if locked && ip_failed {
            return Err(Error::TooManyRequests { retry_after_secs: (self.window - elapsed).as_secs().max(1) });
        }
        Ok(())
    }

    pub fn record_failure(&self, username: &str, ip: IpAddr, now: Instant) {
        let window = self.window;
        let mut state = self.state.lock().expect("login limiter lock");
        if state.addresses.len() >= MAX_ADDRESSES && !state.addresses.contains_key(&ip) {
            state.addresses.retain(|_, at| now.saturating_duration_since(*at) < window);
        }
        if state.addresses.len() < MAX_ADDRESSES || state.addresses.contains_key(&ip) {
            state.addresses.insert(ip, now);
        }
        if state.usernames.len() >= MAX_USERNAMES && !state.usernames.contains_key(username) {
            state.usernames.retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
            if state.usernames.len() >= MAX_USERNAMES {
                return;
            }
        }
        let entry = state.usernames.entry(username.to_string()).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// A successful login ends the username's count (the addresses that failed stay marked).
    pub fn record_success(&self, username: &str) {
        self.state.lock().expect("login limiter lock").usernames.remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_locked_username_refuses_addresses_that_failed_but_not_a_clean_one_and_the_lock_ends() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 1..=3 {
            assert!(limiter.check("alice", ip(n), t0).is_ok());
            limiter.record_failure("alice", ip(n), t0);
        }
        for n in 1..=3 {
            let Err(Error::TooManyRequests { retry_after_secs }) = limiter.check("alice", ip(n), t0 + Duration::from_secs(10)) else {
                panic!("address {n} failed: it is refused while alice is locked")
            };
            assert_eq!(retry_after_secs, 50);
        }
        // The real user, from an address without failures, is not locked out.
        assert!(limiter.check("alice", ip(9), t0 + Duration::from_secs(10)).is_ok());
        // Other usernames are unaffected.
        assert!(limiter.check("bob", ip(1), t0).is_ok());
        // The lock ends with its window.
        assert!(limiter.check("alice", ip(1), t0 + Duration::from_secs(60)).is_ok());
        // A success ends the count.
        limiter.record_failure("carol", ip(1), t0);
        limiter.record_failure("carol", ip(1), t0);
        limiter.record_success("carol");
        limiter.record_failure("carol", ip(1), t0);
        assert!(limiter.check("carol", ip(1), t0).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_live_lockouts_are_kept_when_full() {
        let limiter = LoginLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        limiter.record_failure("alice", ip(1), t0);
        for n in 0..MAX_USERNAMES + 50 {
            limiter.record_failure(&format!("spray{n}"), ip(2), t0);
        }
        let state = limiter.state.lock().unwrap();
        assert!(state.usernames.len() <= MAX_USERNAMES);
        drop(state);
        assert!(limiter.check("alice", ip(1), t0).is_err(), "spraying usernames does not lift a lockout");
    }
}
