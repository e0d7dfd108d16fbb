//! The I/O loop: one thread per direction, each running a single-threaded tokio runtime
//! with one task, a thin loop around a [`Lane`]: read packets from the source TUN fd into
//! the lane, sleep until the next release, write released packets to the destination fd.
//!
//! Own threads (rather than the caller's runtime) keep the link usable from sync tests
//! and from any async runtime alike, and keep delivery timing independent of the caller's
//! load. Timing: tokio's timer has 1 ms resolution and rounds up, which alone would make
//! every packet up to 1 ms late. So the task asks tokio to wake it ~1 ms early and sleeps
//! the rest with `std::thread::sleep` (high-resolution); a packet leaves within tens of
//! microseconds of its scheduled time when the machine is idle. That tail sleep blocks
//! only its own direction, and only for at most [`PRECISE_TAIL`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::shaper::Lane;
use crate::sys;

pub(crate) type SharedLane = Arc<Mutex<Lane<Vec<u8>>>>;

/// Largest IP packet a TUN device can hand us.
const MAX_PACKET: usize = 65_535;
/// Packets read per wake-up before releasing due ones, so a flood cannot starve timers.
const READ_BATCH: usize = 64;
/// How early tokio wakes the task; the remainder is slept precisely (and blocking).
const PRECISE_TAIL: Duration = Duration::from_micros(1_100);

pub(crate) fn lock(lane: &SharedLane) -> std::sync::MutexGuard<'_, Lane<Vec<u8>>> {
    // A panic while holding the lock cannot leave a Lane half-updated in a way that
    // matters more than losing the link, so keep going with the data.
    lane.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Forwarder {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Start forwarding `a -> b` through `a_to_b` and `b -> a` through `b_to_a`. Returns
    /// once both fds are registered. `failure` receives the first I/O error that stops a
    /// direction. The fds are closed (and the TUN devices vanish) once both threads end.
    pub(crate) fn spawn(
        a: File,
        b: File,
        a_to_b: SharedLane,
        b_to_a: SharedLane,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut forwarder = Forwarder {
            stop,
            threads: Vec::new(),
        };
        for (name, src, dst, lane) in [
            ("a->b", a.clone(), b.clone(), a_to_b),
            ("b->a", b, a, b_to_a),
        ] {
            let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
            let stop_rx = stop_rx.clone();
            let failure = failure.clone();
            let thread = std::thread::Builder::new()
                .name(format!("linkem {name}"))
                .spawn(move || direction_thread(name, src, dst, lane, stop_rx, ready_tx, failure))
                .map_err(|e| Error::io("spawning a forwarder thread", e))?;
            forwarder.threads.push(thread);
            // On error, dropping `forwarder` stops and joins what was started.
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::io(format!("starting forwarder {name}"), e)),
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "forwarder thread {name} died while starting"
                    )));
                }
            }
        }
        Ok(forwarder)
    }

    /// Stop both directions and wait until their threads have ended.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a link forwarder thread panicked");
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn direction_thread(
    name: &'static str,
    src: Arc<File>,
    dst: Arc<File>,
    lane: SharedLane,
    stop: watch::Receiver<bool>,
    ready: mpsc::Sender<io::Result<()>>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let src = match sys::register_readable(src) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        if let Err(e) = pump(name, &src, &dst, &lane, stop).await {
            tracing::error!(error = %e, "link forwarder stopped");
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        }
    });
}

async fn pump(
    name: &'static str,
    src: &AsyncFd<Arc<File>>,
    dst: &File,
    lane: &SharedLane,
    mut stop: watch::Receiver<bool>,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let next = lock(lane).next_release();
        tokio::select! {
            biased;
            // A dropped sender also means stop.
            _ = stop.changed() => return Ok(()),
            ready = src.readable() => {
                let mut guard = ready.map_err(|e| format!("{name}: polling the TUN device: {e}"))?;
                for _ in 0..READ_BATCH {
                    match guard.try_io(|fd| (&mut &**fd.get_ref()).read(&mut buf)) {
                        Ok(Ok(n)) => {
                            lock(lane).push(Instant::now(), n, buf[..n].to_vec());
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(format!("{name}: reading the TUN device: {e}")),
                        Err(_would_block) => break,
                    }
                }
            }
            _ = coarse_sleep_until(next), if next.is_some() => {
                if let Some(left) = next.and_then(|at| at.checked_duration_since(Instant::now())) {
                    std::thread::sleep(left.min(PRECISE_TAIL));
                }
            }
        }
        let now = Instant::now();
        loop {
            let Some(packet) = lock(lane).pop_due(now) else {
                break;
            };
            // TUN writes inject into the peer namespace's stack and do not block; a failure
            // (e.g. the device is down) loses this packet only.
            if let Err(e) = (&mut &*dst).write(&packet) {
                tracing::debug!(direction = name, error = %e, "TUN write failed");
                lock(lane).count_write_error();
            }
        }
    }
}

/// Tokio sleep ending about [`PRECISE_TAIL`] before `at` (tokio rounds its deadline up to
/// the next millisecond, so it wakes between `at - PRECISE_TAIL` and about `at`).
async fn coarse_sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => {
            let early = at.checked_sub(PRECISE_TAIL).unwrap_or(at);
            tokio::time::sleep_until(tokio::time::Instant::from_std(early)).await
        }
        None => std::future::pending().await,
    }
}
