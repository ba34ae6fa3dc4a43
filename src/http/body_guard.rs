//! Request bodies that arrive too slowly end the request (slow-body protection).
//!
//! hyper's header read timeout stops clients that never finish their headers. This guards the
//! body: a body that sends nothing for `UPDRAFT_BODY_READ_TIMEOUT_SECS` fails, and so does one
//! that, after that same time, has averaged less than `UPDRAFT_BODY_MIN_BYTES_PER_SEC` (a client
//! trickling a byte every few seconds). The handler sees a body error; the request answers 408
//! and its connection closes, freeing the slot for someone else.
//!
//! Time the server spends not reading (writing what it received, say) never counts as
//! silence: the idle timer runs only while the server waits for the client. No crate limits a
//! body's average rate; tower-http's `TimeoutBody` covers only the idle part, and having both
//! in one wrapper keeps a single error type to recognise.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Instant;

use super::AppState;
use crate::domain::Error;

/// What a request body must keep up.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest wait for the next bytes; also the grace period before `min_bytes_per_sec` applies.
    pub idle: Duration,
    /// Least average rate, from the start of the body, once `idle` has passed.
    pub min_bytes_per_sec: u64,
}

/// Why a body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowBody {
    /// Nothing arrived for the idle timeout.
    Silent(Duration),
    /// Too little arrived on average.
    TooSlow { received: u64, seconds: u64, min_bytes_per_sec: u64 },
}

impl std::fmt::Display for SlowBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlowBody::Silent(idle) => write!(f, "the request body stopped: nothing arrived for {} s", idle.as_secs()),
            SlowBody::TooSlow { received, seconds, min_bytes_per_sec } => write!(
                f,
                "the request body arrives too slowly: {received} bytes in {seconds} s, below the minimum of {min_bytes_per_sec} bytes/s"
            ),
        }
    }
}

impl std::error::Error for SlowBody {}

impl SlowBody {
    /// The `SlowBody` behind a body error, if that is what it was.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<SlowBody> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(slow) = error.downcast_ref::<SlowBody>() {
                return Some(*slow);
            }
            current = error.source();
        }
        None
    }
}

/// The error of a body that failed while a handler read it: 408 when it was too slow, else
/// 400 `upload_interrupted`.
pub fn read_error(error: &axum::Error) -> Error {
    match SlowBody::find(error) {
        Some(slow) => slow.into(),
        None => Error::invalid("upload_interrupted", format!("the upload was interrupted: {error}")),
    }
}

impl From<SlowBody> for Error {
    fn from(slow: SlowBody) -> Self {
        Error::RequestTimeout(slow.to_string())
    }
}

/// A body that fails with `SlowBody` when its client falls behind `BodyPace`.
pub struct GuardedBody {
    inner: Body,
    pace: BodyPace,
    started: Instant,
    received: u64,
    /// The idle timer, armed while waiting for the client.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl GuardedBody {
    pub fn new(inner: Body, pace: BodyPace) -> Self {
        GuardedBody { inner, pace, started: Instant::now(), received: 0, waiting: None }
    }

    fn check_rate(&self) -> Result<(), SlowBody> {
        let elapsed = self.started.elapsed();
        if elapsed <= self.pace.idle {
            return Ok(());
        }
        let expected = self.pace.min_bytes_per_sec as f64 * elapsed.as_secs_f64();
        if (self.received as f64) < expected {
            return Err(SlowBody::TooSlow {
                received: self.received,
                seconds: elapsed.as_secs(),
                min_bytes_per_sec: self.pace.min_bytes_per_sec,
            });
        }
        Ok(())
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = None;
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if let Err(slow) = this.check_rate() {
                        return Poll::Ready(Some(Err(axum::Error::new(slow))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.waiting = None;
                Poll::Ready(other)
            }
            Poll::Pending => {
                let idle = this.pace.idle;
                let timer = this.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(SlowBody::Silent(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request body in a `GuardedBody` (bodies that are already complete, like those
/// of most GET requests, are left alone).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request = if request.body().is_end_stream() {
        request
    } else {
        let pace = BodyPace { idle: state.settings.body_read_timeout, min_bytes_per_sec: state.settings.body_min_bytes_per_sec };
        request.map(|body| Body::new(GuardedBody::new(body, pace)))
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn pace(idle_ms: u64, min_bytes_per_sec: u64) -> BodyPace {
        BodyPace { idle: Duration::from_millis(idle_ms), min_bytes_per_sec }
    }

    /// A body whose chunks arrive with the given delays.
    fn trickle(chunks: Vec<(u64, &'static [u8])>) -> Body {
        let stream = futures::stream::iter(chunks).then(|(delay_ms, bytes)| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(bytes))
        });
        Body::from_stream(stream)
    }

    async fn read(body: GuardedBody) -> Result<usize, SlowBody> {
        let mut stream = Body::new(body).into_data_stream();
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => total += bytes.len(),
                Err(e) => return Err(SlowBody::find(&e).expect("a SlowBody error")),
            }
        }
        Ok(total)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_up_passes() {
        let body = trickle(vec![(100, b"aaaa"), (900, b"bbbb"), (900, b"cccc")]);
        assert_eq!(read(GuardedBody::new(body, pace(1000, 1))).await, Ok(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_the_idle_timeout() {
        let body = trickle(vec![(10, b"aaaa"), (5_000, b"late")]);
        assert_eq!(read(GuardedBody::new(body, pace(1000, 0))).await, Err(SlowBody::Silent(Duration::from_secs(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_once_the_grace_period_is_over() {
        // One byte every 0.9 s never trips the idle timeout, but averages ~1 byte/s.
        let chunks: Vec<(u64, &'static [u8])> = (0..20).map(|_| (900, &b"x"[..])).collect();
        let error = read(GuardedBody::new(trickle(chunks), pace(1000, 100))).await.unwrap_err();
        assert!(matches!(error, SlowBody::TooSlow { received: 2, min_bytes_per_sec: 100, .. }), "{error:?}");
    }
}
