//! Connection timeouts hyper does not give: a connection that never sends a byte, and one that sits
//! idle between requests. The socket is wrapped to note when bytes last moved; a watchdog beside the
//! connection closes it when nothing moved for too long and no request is being handled.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The process's time origin for activity stamps (milliseconds since it).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

#[derive(Default)]
struct State {
    last_io_ms: AtomicU64,
    received_any: AtomicBool,
    busy: AtomicUsize,
}

/// When a connection last moved bytes, and whether a request on it is being handled.
#[derive(Clone)]
pub struct Activity(Arc<State>);

pub struct Timeouts {
    /// Until the client's first byte.
    pub first_byte: Duration,
    /// Between requests, and while a client stops sending mid-request.
    pub idle: Duration,
}

/// A request in progress on the connection: it is not idle while its response is being prepared.
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Activity {
    pub fn new() -> Self {
        let state = State::default();
        state.last_io_ms.store(now_ms(), Ordering::Relaxed);
        Self(Arc::new(state))
    }

    fn touch(&self) {
        self.0.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Completes when the connection has been silent for its timeout with no request in progress.
    pub async fn expired(&self, timeouts: Timeouts) {
        loop {
            let timeout =
                if self.0.received_any.load(Ordering::Relaxed) { timeouts.idle } else { timeouts.first_byte };
            let silent =
                Duration::from_millis(now_ms().saturating_sub(self.0.last_io_ms.load(Ordering::Relaxed)));
            if silent >= timeout && self.0.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            // Checked again when the last activity could have expired, or a little later while busy.
            let wait = timeout.saturating_sub(silent).max(Duration::from_millis(10));
            tokio::time::sleep(wait).await;
        }
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
            self.activity.touch();
            self.activity.0.received_any.store(true, Ordering::Relaxed);
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
