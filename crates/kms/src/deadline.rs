//! Connection deadlines: a connection keeps its slot only while it is used.
//!
//! A silent or abandoned connection would otherwise hold one of `--max-connections` slots
//! forever and, with enough of them, lock kube-apiserver out. Each connection therefore has a
//! deadline, recomputed from its calls:
//!
//! * before its first call: `--handshake-timeout` after it was accepted (the HTTP/2 preface
//!   and one request must arrive by then);
//! * while a call is in flight: none;
//! * after a call: `--idle-timeout` after the last call ended. kube-apiserver keeps one
//!   connection and calls Status on it every minute while healthy (every 10 s otherwise), so
//!   an idle timeout above a minute never closes its connection; a closed idle connection
//!   costs a client only a reconnect on its next call.
//! * a refused caller's connection: closed shortly after its first call is answered (so it
//!   still learns why, with PERMISSION_DENIED), or at the handshake deadline.
//!
//! [`CallLayer`] records calls; the connection's reader polls [`Deadline`] and fails the
//! connection once it expires, which makes the HTTP/2 server drop it and free its slot.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use crate::listener::ConnInfo;

/// How long a refused caller's connection stays open after its first call was answered:
/// long enough to deliver the PERMISSION_DENIED response, short enough not to matter.
pub const REFUSED_LINGER: Duration = Duration::from_millis(500);

/// How long a connection may stay without calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From accept to the first call (HTTP/2 preface, settings and one request).
    pub handshake: Duration,
    /// From the end of the last call to the next one.
    pub idle: Duration,
}

impl Default for ConnTimeouts {
    /// 5 s to the first call, 5 min between calls.
    fn default() -> Self {
        ConnTimeouts {
            handshake: Duration::from_secs(5),
            idle: Duration::from_secs(300),
        }
    }
}

/// Which deadline a connection missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request within the handshake timeout.
    Handshake,
    /// No request within the idle timeout after the last one.
    Idle,
    /// A refused caller's connection, closed after its answer or its handshake deadline.
    Refused,
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expiry::Handshake => "no request within --handshake-timeout of connecting",
            Expiry::Idle => "no request within --idle-timeout",
            Expiry::Refused => "the caller is not allowed",
        })
    }
}

/// The calls on one connection, shared by its reader and the request layer.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    refused: bool,
    in_flight: AtomicUsize,
    calls: AtomicU64,
    /// When the last call ended, in milliseconds after `opened`.
    last_end_ms: AtomicU64,
    /// The connection's reader, woken when a call ends (a refused connection's deadline moves
    /// closer then).
    waker: Mutex<Option<Waker>>,
}

impl Activity {
    /// A connection accepted now; `refused` when its caller failed the caller check.
    pub fn new(refused: bool) -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            refused,
            in_flight: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            waker: Mutex::new(None),
        })
    }

    /// Records the start of a call; the call ends when the guard is dropped.
    pub fn begin_call(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the connection must be closed, or `None` while a call is in flight.
    pub fn deadline(&self, timeouts: &ConnTimeouts) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let first_call_by = self.opened + timeouts.handshake;
        if self.calls.load(Ordering::SeqCst) == 0 {
            let why = if self.refused {
                Expiry::Refused
            } else {
                Expiry::Handshake
            };
            return Some((first_call_by, why));
        }
        let last_end = self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst));
        if self.refused {
            Some((
                (last_end + REFUSED_LINGER).min(first_call_by),
                Expiry::Refused,
            ))
        } else {
            Some((last_end + timeouts.idle, Expiry::Idle))
        }
    }

    fn end_call(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_end_ms.fetch_max(elapsed, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            waker.wake();
        }
    }
}

/// A call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.end_call();
    }
}

/// The timer side of a connection's deadline, polled by its reader.
pub struct Deadline {
    activity: Arc<Activity>,
    timeouts: ConnTimeouts,
    sleep: Pin<Box<Sleep>>,
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("activity", &self.activity)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Deadline {
    /// The deadline of the connection whose calls `activity` records.
    pub fn new(activity: Arc<Activity>, timeouts: ConnTimeouts) -> Self {
        let first = activity
            .deadline(&timeouts)
            .map_or_else(Instant::now, |(at, _)| at);
        Deadline {
            activity,
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(first.into())),
        }
    }

    /// Ready with the reason once the connection must be closed; otherwise arranges for the
    /// task to be woken when the deadline passes or a call ends.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        {
            let mut waker = self
                .activity
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        let Some((at, why)) = self.activity.deadline(&self.timeouts) else {
            return Poll::Pending;
        };
        let at = tokio::time::Instant::from_std(at);
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        self.sleep.as_mut().poll(cx).map(|()| why)
    }
}

/// Records every call on its connection's [`Activity`] (a tower layer for the gRPC server).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLayer;

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallTracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracked(inner)
    }
}

/// The service [`CallLayer`] wraps.
#[derive(Debug, Clone)]
pub struct CallTracked<S>(S);

impl<S, B> tower::Service<http::Request<B>> for CallTracked<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.activity.begin_call());
        let call = self.0.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(guard);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ConnTimeouts = ConnTimeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(300),
    };

    #[test]
    fn silent_connection_expires_at_the_handshake_deadline() {
        let a = Activity::new(false);
        let (at, why) = a.deadline(&T).unwrap();
        assert_eq!(why, Expiry::Handshake);
        assert_eq!(at, a.opened + T.handshake);
    }

    #[test]
    fn no_deadline_while_a_call_is_in_flight_then_idle_timeout() {
        let a = Activity::new(false);
        let call = a.begin_call();
        assert_eq!(a.deadline(&T), None);
        drop(call);
        let (at, why) = a.deadline(&T).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert!(
            at >= a.opened + T.idle,
            "idle deadline counts from the call's end"
        );
    }

    #[test]
    fn refused_connection_closes_soon_after_its_answer() {
        let a = Activity::new(true);
        assert_eq!(a.deadline(&T).unwrap().1, Expiry::Refused);
        drop(a.begin_call());
        let (at, why) = a.deadline(&T).unwrap();
        assert_eq!(why, Expiry::Refused);
        assert!(
            at <= Instant::now() + REFUSED_LINGER,
            "a refused connection is not held to the handshake deadline once answered"
        );
    }
}
