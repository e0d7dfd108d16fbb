//! The I/O loop: one thread with a single-threaded tokio runtime, one task per direction,
//! each a thin loop around a [`Lane`]: read packets from the source TUN fd into the lane,
//! sleep until the next release, write released packets to the destination fd.
//!
//! Its own thread (rather than the caller's runtime) keeps the link usable from sync
//! tests and from any async runtime alike, and keeps delivery timing independent of the
//! caller's load. Timer resolution is tokio's 1 ms: a packet leaves up to ~1 ms after its
//! scheduled time.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

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

pub(crate) fn lock(lane: &SharedLane) -> std::sync::MutexGuard<'_, Lane<Vec<u8>>> {
    // A panic while holding the lock cannot leave a Lane half-updated in a way that
    // matters more than losing the link, so keep going with the data.
    lane.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Forwarder {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Start forwarding `a -> b` through `a_to_b` and `b -> a` through `b_to_a`. Returns
    /// once both fds are registered with the runtime. `failure` receives the first I/O
    /// error that stops a direction.
    pub(crate) fn spawn(
        a: File,
        b: File,
        a_to_b: SharedLane,
        b_to_a: SharedLane,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("linkem-forward".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let fds = sys::register(a).and_then(|a| Ok((a, sys::register(b)?)));
                    let (a, b) = match fds {
                        Ok((a, b)) => (Arc::new(a), Arc::new(b)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let ab = pump("a->b", a.clone(), b.clone(), a_to_b, stop_rx.clone());
                    let ba = pump("b->a", b, a, b_to_a, stop_rx);
                    let (r1, r2) = tokio::join!(ab, ba);
                    for r in [r1, r2] {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "link forwarder stopped");
                            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                            f.get_or_insert(e);
                        }
                    }
                    // The AsyncFds drop here, closing the fds: the TUN devices vanish.
                });
            })
            .map_err(|e| Error::io("spawning the forwarder thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Forwarder {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(Error::io("starting the forwarder", e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Unavailable(
                    "the forwarder thread died while starting".into(),
                ))
            }
        }
    }

    /// Stop both directions and wait until the fds are closed (devices gone).
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("link forwarder thread panicked");
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn pump(
    name: &'static str,
    src: Arc<AsyncFd<File>>,
    dst: Arc<AsyncFd<File>>,
    lane: SharedLane,
    mut stop: watch::Receiver<bool>,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let next = lock(&lane).next_release();
        tokio::select! {
            biased;
            // A dropped sender also means stop.
            _ = stop.changed() => return Ok(()),
            ready = src.readable() => {
                let mut guard = ready.map_err(|e| format!("{name}: polling the TUN device: {e}"))?;
                for _ in 0..READ_BATCH {
                    match guard.try_io(|fd| (&mut fd.get_ref()).read(&mut buf)) {
                        Ok(Ok(n)) => {
                            lock(&lane).push(Instant::now(), n, buf[..n].to_vec());
                        }
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(format!("{name}: reading the TUN device: {e}")),
                        Err(_would_block) => break,
                    }
                }
            }
            _ = sleep_until(next), if next.is_some() => {}
        }
        let now = Instant::now();
        loop {
            let Some(packet) = lock(&lane).pop_due(now) else {
                break;
            };
            // TUN writes inject into the peer namespace's stack and do not block; a failure
            // (e.g. the device is down) loses this packet only.
            if let Err(e) = (&mut dst.get_ref()).write(&packet) {
                tracing::debug!(direction = name, error = %e, "TUN write failed");
                lock(&lane).count_write_error();
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
