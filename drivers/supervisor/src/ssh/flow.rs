//! Flow control between the client and what a channel feeds (a program, a TCP connection).
//!
//! russh re-opens the client's window when data *arrives*, not when it is consumed, so the
//! only backpressure on a client is the connection's single loop taking its time to accept
//! the next packet. That same loop sends every channel's output and reads the client's
//! window updates that output needs. Waiting in it for a consumer that is itself waiting
//! for its output to leave would deadlock (`ssh host 'sleep 2; cat' < big` does exactly
//! that), so client data is queued per channel against a byte budget, and a packet that
//! finds the budget spent waits for it only while the channel's output is moving:
//!
//! ```text
//! client data ─> Sink::data ──budget left────────────> queue ─> consumer
//!                    │ spent, output moving: wait (at most IDLE_WAIT), re-checking
//!                    │ spent, output stuck:  queue on an overdraft, or when that is
//!                    │                       spent too, wait at most STUCK_WAIT
//! consumer output ─> Tracked writer (marks "stuck" while the client's window is shut)
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::process::PtySize;

/// Bytes of client data that may wait for a slow consumer, per channel.
const BUDGET: usize = 16 * 1024 * 1024;

/// Longest wait for budget while the consumer's output is moving (a consumer that reads
/// nothing at all must not freeze the connection forever: past this the packet is queued
/// over budget, which bounds that case to one packet per wait).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Extra bytes queued without any wait while the consumer's output is stuck: output gets
/// stuck for a moment whenever the loop is busy, and waiting then only makes it worse.
const OVERDRAFT: usize = 48 * 1024 * 1024;

/// Longest wait for budget while the output is stuck and the overdraft is spent too (a
/// client that sends without reading what comes back): it slows such a client to about
/// one packet per wait, short enough to keep the loop moving.
const STUCK_WAIT: Duration = Duration::from_millis(10);

/// What the client sends to a channel's consumer.
#[derive(Debug)]
pub(super) enum Input {
    /// Bytes, with the share of the budget (or overdraft) they hold until written (none
    /// when they were queued over both).
    Data(Bytes, Option<OwnedSemaphorePermit>),
    Eof,
    Resize(PtySize),
}

/// The handler's end of a channel's input queue.
pub(super) struct Sink {
    tx: mpsc::UnboundedSender<Input>,
    budget: Arc<Semaphore>,
    overdraft: Arc<Semaphore>,
    stuck: watch::Receiver<bool>,
}

/// Creates a channel's input queue and the "output stuck" signal its writers raise.
pub(super) fn channel() -> (
    Sink,
    mpsc::UnboundedReceiver<Input>,
    Arc<watch::Sender<bool>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stuck_tx, stuck) = watch::channel(false);
    let sink = Sink {
        tx,
        budget: Arc::new(Semaphore::new(BUDGET)),
        overdraft: Arc::new(Semaphore::new(OVERDRAFT)),
        stuck,
    };
    (sink, rx, Arc::new(stuck_tx))
}

impl Sink {
    /// The consumer is gone: nothing sent here will be read.
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues client data, waiting for budget as described in the module doc.
    pub(super) async fn data(&self, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        let want = u32::try_from(data.len().clamp(1, BUDGET.min(OVERDRAFT))).unwrap_or(u32::MAX);
        let permit = self.reserve(want).await;
        let _ = self
            .tx
            .send(Input::Data(Bytes::copy_from_slice(data), permit));
    }

    async fn reserve(&self, want: u32) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(want) {
            return Some(permit);
        }
        let mut stuck = self.stuck.clone();
        let idle_deadline = tokio::time::Instant::now() + IDLE_WAIT;
        loop {
            if *stuck.borrow_and_update() {
                if let Ok(permit) = self.overdraft.clone().try_acquire_many_owned(want) {
                    return Some(permit);
                }
                let acquire = self.budget.clone().acquire_many_owned(want);
                return tokio::time::timeout(STUCK_WAIT, acquire)
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            tokio::select! {
                permit = self.budget.clone().acquire_many_owned(want) => return permit.ok(),
                // Output got stuck while waiting: re-decide. (A closed signal disables this
                // branch: the writers are gone, the output cannot get stuck any more.)
                Ok(()) = stuck.changed() => continue,
                _ = tokio::time::sleep_until(idle_deadline) => return None,
                // The consumer went away while we waited.
                _ = self.tx.closed() => return None,
            }
        }
    }

    pub(super) fn eof(&self) {
        let _ = self.tx.send(Input::Eof);
    }

    pub(super) fn resize(&self, size: PtySize) {
        let _ = self.tx.send(Input::Resize(size));
    }
}

/// A channel writer that raises the "output stuck" signal while a write waits (for the
/// client's window or for the connection's loop).
pub(super) struct Tracked<W> {
    inner: W,
    stuck: Arc<watch::Sender<bool>>,
}

impl<W> Tracked<W> {
    pub(super) fn new(inner: W, stuck: Arc<watch::Sender<bool>>) -> Self {
        Tracked { inner, stuck }
    }

    fn mark(&self, value: bool) {
        self.stuck.send_if_modified(|v| {
            let changed = *v != value;
            *v = value;
            changed
        });
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tracked<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.mark(poll.is_pending());
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<W> Drop for Tracked<W> {
    fn drop(&mut self) {
        self.mark(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that accepts nothing until opened (stands in for a shut client window).
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<std::sync::atomic::AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    }

    impl Gate {
        fn open(&self) {
            self.open.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    impl AsyncWrite for Gate {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.open.load(std::sync::atomic::Ordering::SeqCst) {
                Poll::Ready(Ok(buf.len()))
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn within_budget_nothing_waits() {
        let (sink, mut rx, _stuck) = channel();
        sink.data(&[1u8; 1000]).await;
        match rx.recv().await {
            Some(Input::Data(bytes, Some(_))) => assert_eq!(bytes.len(), 1000),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_waits_for_the_consumer_then_gives_up_after_idle_wait() {
        let (sink, mut rx, _stuck) = channel();
        sink.data(&vec![0u8; BUDGET]).await;
        // Budget spent, output moving, consumer idle: one packet waits IDLE_WAIT, then is
        // queued over budget.
        let started = tokio::time::Instant::now();
        sink.data(b"x").await;
        assert!(started.elapsed() >= IDLE_WAIT);
        let _first = rx.recv().await;
        assert!(matches!(rx.recv().await, Some(Input::Data(_, None))));
    }

    #[tokio::test(start_paused = true)]
    async fn consumer_progress_releases_the_wait() {
        let (sink, mut rx, _stuck) = channel();
        sink.data(&vec![0u8; BUDGET]).await;
        let consumer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let first = rx.recv().await; // written: its budget comes back
            drop(first);
            rx.recv().await
        });
        let started = tokio::time::Instant::now();
        sink.data(b"x").await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < IDLE_WAIT,
            "{waited:?}"
        );
        assert!(matches!(
            consumer.await.unwrap(),
            Some(Input::Data(_, Some(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_output_uses_the_overdraft_then_shortens_the_wait() {
        let (sink, mut rx, stuck) = channel();
        sink.data(&vec![0u8; BUDGET]).await;
        let gate = Gate::default();
        let mut writer = Tracked::new(gate.clone(), stuck);
        let write = tokio::spawn(async move { writer.write_all(b"out").await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Output stuck, budget spent: the overdraft takes it at once.
        let started = tokio::time::Instant::now();
        let chunks = OVERDRAFT / BUDGET;
        for _ in 0..chunks {
            sink.data(&vec![0u8; BUDGET]).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Overdraft spent too: a short wait, then queued over both.
        sink.data(b"x").await;
        assert_eq!(started.elapsed(), STUCK_WAIT);
        for _ in 0..=chunks {
            assert!(matches!(rx.recv().await, Some(Input::Data(_, Some(_)))));
        }
        assert!(matches!(rx.recv().await, Some(Input::Data(_, None))));
        gate.open();
        write.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_consumer_drops_data() {
        let (sink, rx, _stuck) = channel();
        drop(rx);
        assert!(sink.is_closed());
        sink.data(b"lost").await;
    }
}
