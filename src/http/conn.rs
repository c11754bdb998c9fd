//! Connection timeouts, timed here rather than by hyper (whose header timer would take a boxed sleep
//! and a timer-wheel entry per request): the time to send a request head once begun (and a new
//! connection's first one), and idleness between requests. The socket is wrapped to note when bytes
//! move; a watchdog beside the connection closes it when a head takes too long or nothing moved for
//! too long, never while a request is being handled.
//!
//! Every open connection is also in a [`Registry`], so that when the connection cap is reached the
//! one idle the longest can be closed to make room: a keep-alive connection between requests (or one
//! that has not sent a byte yet) costs its client nothing to lose, while refusing a new client would
//! lock it out for a whole idle timeout.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The process's time origin for activity stamps (milliseconds since it, plus one: 0 means unset).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

struct State {
    last_io_ms: AtomicU64,
    /// When the head of the next request began to arrive (or the connection opened); 0: no head is
    /// being received.
    head_started_ms: AtomicU64,
    busy: AtomicUsize,
    /// Whether a byte ever arrived: a connection that never sent one has nothing to lose.
    spoke: AtomicBool,
    /// Set (once) when the registry picks this connection to make room; `evict` wakes the watchdog.
    evicted: AtomicBool,
    evict: Notify,
}

/// When a connection last moved bytes, when its pending request head began, and whether a request on
/// it is being handled.
#[derive(Clone)]
pub struct Activity(Arc<State>);

pub struct Timeouts {
    /// To receive a whole request head, from its first byte (or from the connection's start).
    pub head: Duration,
    /// Without a byte in either direction, between requests.
    pub idle: Duration,
}

/// A request being handled: its connection is not idle meanwhile.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    pub fn new() -> Self {
        let now = now_ms();
        let state = State {
            last_io_ms: AtomicU64::new(now),
            head_started_ms: AtomicU64::new(now),
            busy: AtomicUsize::new(0),
            spoke: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        };
        Self(Arc::new(state))
    }

    fn touch(&self) {
        self.0.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn received(&self) {
        let now = now_ms();
        self.0.last_io_ms.store(now, Ordering::Relaxed);
        self.0.spoke.store(true, Ordering::Relaxed);
        if self.0.busy.load(Ordering::Relaxed) == 0 {
            // The first byte of a head: its clock starts (a no-op if it already runs).
            let _ = self.0.head_started_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Called when a request's head is complete and its handling starts.
    pub fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        self.0.head_started_ms.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Whether closing the connection now loses its client nothing: no request is being handled and
    /// none has begun to arrive (between keep-alive requests, or before the first byte).
    fn idle(&self) -> bool {
        let s = &self.0;
        s.busy.load(Ordering::Relaxed) == 0
            && (s.head_started_ms.load(Ordering::Relaxed) == 0 || !s.spoke.load(Ordering::Relaxed))
    }

    /// Completes when the connection should be closed: a head took longer than `head`, nothing
    /// moved for `idle`, with no request being handled, or the registry evicted it while idle.
    pub async fn expired(&self, timeouts: Timeouts) {
        loop {
            let now = now_ms();
            let mut wait = timeouts.idle.min(timeouts.head);
            if self.0.busy.load(Ordering::Relaxed) == 0 {
                let since = |stamp: u64| Duration::from_millis(now.saturating_sub(stamp));
                let head_started = self.0.head_started_ms.load(Ordering::Relaxed);
                if head_started != 0 {
                    let taken = since(head_started);
                    if taken >= timeouts.head {
                        return;
                    }
                    wait = wait.min(timeouts.head - taken);
                }
                let silent = since(self.0.last_io_ms.load(Ordering::Relaxed));
                if silent >= timeouts.idle {
                    return;
                }
                wait = wait.min(timeouts.idle - silent);
            }
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                () = self.0.evict.notified() => {
                    if self.idle() {
                        return;
                    }
                    // A request began since it was picked: it is served; the newcomer waits or is refused.
                    self.0.evicted.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Every open connection's [`Activity`], to find the one to close when the cap is reached.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Activity>>,
    next: AtomicU64,
}

/// A connection's place in the [`Registry`]; leaves it when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.open.lock().expect("no panic while holding the registry").remove(&self.id);
    }
}

impl Registry {
    pub fn add(self: &Arc<Self>, activity: &Activity) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("no panic while holding the registry").insert(id, activity.clone());
        Registered { registry: self.clone(), id }
    }

    /// Asks the connection idle the longest to close; false when none is idle (all are busy). A scan
    /// of every connection, but only when the cap is reached, and cheaper than what it saves.
    pub fn evict_oldest_idle(&self) -> bool {
        let open = self.open.lock().expect("no panic while holding the registry");
        let idle = open.values().filter(|a| a.idle() && !a.0.evicted.load(Ordering::Relaxed));
        let Some(oldest) = idle.min_by_key(|a| a.0.last_io_ms.load(Ordering::Relaxed)) else {
            return false;
        };
        oldest.0.evicted.store(true, Ordering::Relaxed);
        oldest.0.evict.notify_one();
        true
    }
}

/// A stream that stamps its [`Activity`] whenever bytes move.
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
