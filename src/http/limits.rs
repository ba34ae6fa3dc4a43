//! Per-credential limits on the expensive routes: uploads, LVGL conversions, rollout
//! creation. Each class has a token bucket per credential (a digest of the bearer token, the
//! `X-Admin-API-Key` or the session cookie; the client's address when there is none, and
//! always on the public `GET /api/images/lvgl`, where a made-up credential would otherwise
//! buy a fresh bucket). Over the limit, the answer is 429 with `Retry-After`, in the route's
//! own error form (the JSON error shape; seed 001's `{"detail"}`; seed 003's error body).
//!
//! The check (`check`, run by `http::guards`) runs before the handler, so a refused upload is not read. Memory is bounded:
//! each class keeps at most `MAX_BUCKETS` buckets; when full, the buckets that refilled (the
//! same as absent) go first, then an arbitrary half.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::credential;
use super::error::ApiError;
use super::forwarded::ClientView;
use crate::config::{LimitSettings, Rate};
use crate::domain::Error;

/// Buckets kept per class, at most.
pub const MAX_BUCKETS: usize = 50_000;

/// What a limited route costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Uploads,
    Lvgl,
    Rollouts,
}

/// How a route answers errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `{"error":{"code","message"}}`.
    Json,
    /// Seed 001's admin API: `{"detail": "..."}`.
    Seed001,
    /// Seed 003's error body.
    Seed003,
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyBy {
    /// The credential presented, else the address.
    Credential,
    /// The address, always (public routes).
    Address,
}

/// Every limited route: method, template, class, error form, key.
const LIMITED: &[(Method, &str, Class, Form, KeyBy)] = &[
    (Method::POST, "/api/v1/firmware", Class::Uploads, Form::Json, KeyBy::Credential),
    (Method::POST, "/api/v1/assets/{product}/{name}", Class::Uploads, Form::Json, KeyBy::Credential),
    (Method::POST, "/api/v1/devices/import", Class::Uploads, Form::Json, KeyBy::Credential),
    (Method::POST, "/api/assets", Class::Uploads, Form::Seed003, KeyBy::Credential),
    (Method::POST, "/admin/api/firmware", Class::Uploads, Form::Seed001, KeyBy::Credential),
    (Method::POST, "/api/v1/images/lvgl", Class::Lvgl, Form::Json, KeyBy::Credential),
    (Method::GET, "/api/images/lvgl", Class::Lvgl, Form::Seed003, KeyBy::Address),
    (Method::POST, "/api/v1/rollouts", Class::Rollouts, Form::Json, KeyBy::Credential),
];

/// The templates of the limited routes, by class (for tests and docs).
pub fn limited_routes() -> Vec<(Method, &'static str, Class)> {
    LIMITED.iter().map(|(method, path, class, _, _)| (method.clone(), *path, *class)).collect()
}

/// One token bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one class.
struct Buckets {
    rate: Rate,
    buckets: Mutex<HashMap<[u8; 16], Bucket>>,
}

impl Buckets {
    fn new(rate: Rate) -> Buckets {
        Buckets { rate, buckets: Mutex::new(HashMap::new()) }
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.rate.per_minute) / 60.0
    }

    /// Takes a token of `key`'s bucket, or says in how many seconds one will be there.
    fn take(&self, key: [u8; 16], now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.rate.burst);
        let per_sec = self.per_sec();
        let mut buckets = self.buckets.lock().expect("limit buckets lock");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_sec < burst);
            if buckets.len() >= MAX_BUCKETS {
                let mut n = 0usize;
                buckets.retain(|_, _| {
                    n += 1;
                    n.is_multiple_of(2)
                });
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: burst, at: now });
        let tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_sec).min(burst);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(((1.0 - tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// The limiter of every class.
pub struct Limits {
    uploads: Buckets,
    lvgl: Buckets,
    rollouts: Buckets,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Limits {
        Limits { uploads: Buckets::new(settings.uploads), lvgl: Buckets::new(settings.lvgl), rollouts: Buckets::new(settings.rollouts) }
    }

    fn of(&self, class: Class) -> &Buckets {
        match class {
            Class::Uploads => &self.uploads,
            Class::Lvgl => &self.lvgl,
            Class::Rollouts => &self.rollouts,
        }
    }
}

/// The bucket key of a request: a digest of its credential, or of its address.
fn key_of(headers: &HeaderMap, ip: IpAddr, key_by: KeyBy) -> [u8; 16] {
    let mut hasher = Sha256::new();
    let presented = match key_by {
        KeyBy::Address => None,
        KeyBy::Credential => credential(headers, "x-admin-api-key").or_else(|| session_cookie(headers)),
    };
    match presented {
        Some(presented) => {
            hasher.update(b"credential\0");
            hasher.update(presented.as_bytes());
        }
        None => {
            hasher.update(b"address\0");
            hasher.update(ip.to_string().as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    super::accounts::session_cookie(headers)
}

/// The refusal of a request over its credential's limit, if it is one (see the module
/// documentation); `http::guards` runs it before the handler.
pub fn check(limits: &Limits, request: &Request) -> Option<Response> {
    let template = request.extensions().get::<MatchedPath>()?;
    let (_, _, class, form, key_by) = LIMITED.iter().find(|(method, path, ..)| method == request.method() && *path == template.as_str())?;
    let ip = request.extensions().get::<ClientView>().map_or(IpAddr::from([127, 0, 0, 1]), |view| view.ip);
    let key = key_of(request.headers(), ip, *key_by);
    let retry_after_secs = limits.of(*class).take(key, Instant::now()).err()?;
    metrics::counter!("updraft_rate_limited_total", "class" => format!("{class:?}").to_lowercase()).increment(1);
    tracing::info!(class = ?class, %ip, retry_after_secs, "request over its credential's limit");
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    Some(refusal(*form, retry_after_secs, request_id))
}

fn refusal(form: Form, retry_after_secs: u64, request_id: &str) -> Response {
    let error = Error::TooManyRequests { retry_after_secs };
    let mut response = match form {
        Form::Json => ApiError(error).into_response(),
        Form::Seed001 => (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "detail": format!("Too many requests; retry after {retry_after_secs} s") })),
        )
            .into_response(),
        Form::Seed003 => super::compat_seed003::error_response(error, request_id),
    };
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let buckets = Buckets::new(Rate { per_minute: 60, burst: 3 });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take([1; 16], start).is_ok());
        }
        assert_eq!(buckets.take([1; 16], start), Err(1));
        assert!(buckets.take([2; 16], start).is_ok(), "another key has its own bucket");
        assert!(buckets.take([1; 16], start + Duration::from_secs(1)).is_ok(), "one token a second comes back");
        assert!(buckets.take([1; 16], start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn memory_stays_bounded_whatever_the_number_of_keys() {
        let buckets = Buckets::new(Rate { per_minute: 1, burst: 1 });
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 * 2 + 7) {
            let mut key = [0; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            let _ = buckets.take(key, now);
            assert!(buckets.len() <= MAX_BUCKETS);
        }
    }

    #[test]
    fn credentials_and_addresses_key_apart() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut with_key = HeaderMap::new();
        with_key.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        let mut with_header = HeaderMap::new();
        with_header.insert("x-admin-api-key", HeaderValue::from_static("abc"));
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert(header::COOKIE, HeaderValue::from_static("theme=dark; updraft_session=s1"));
        let none = HeaderMap::new();
        assert_eq!(key_of(&with_key, ip, KeyBy::Credential), key_of(&with_header, ip, KeyBy::Credential));
        assert_ne!(key_of(&with_key, ip, KeyBy::Credential), key_of(&none, ip, KeyBy::Credential));
        assert_ne!(key_of(&with_cookie, ip, KeyBy::Credential), key_of(&none, ip, KeyBy::Credential));
        assert_eq!(key_of(&with_key, ip, KeyBy::Address), key_of(&none, ip, KeyBy::Address));
        assert_ne!(key_of(&none, ip, KeyBy::Credential), key_of(&none, "10.0.0.2".parse().unwrap(), KeyBy::Credential));
    }
}
