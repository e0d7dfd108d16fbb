//! Request hedging for small idempotent reads on QUIC.
//!
//! A unary RPC alone on a lossy path waits a whole probe timeout (about 1.25 RTT) when one
//! of its packets is lost, and that wait is the tail of the latency distribution. QUIC
//! streams are independent, so a second copy of the request on another stream, sent a few
//! milliseconds later (so it travels in another packet), is answered even when the first
//! copy or its answer is lost. The first complete answer wins; the other is dropped.
//!
//! ```text
//! call(path) ── hedgeable read? (proto::HEDGEABLE_READS) ── no ──> one stream
//!                    │ yes, policy allows it
//!                    ├─ copy 1 now ───────────────┐
//!                    └─ copy 2 after rtt/10 ──────┴─> first whole answer
//! ```
//!
//! Only reads are hedged: the gateway runs both copies. Policy `auto` (the default) hedges
//! only while the connection has lost a packet in the last 30 s, so a clean path pays
//! nothing; `always` and `off` are for measuring and for operators who want to choose.
//!
//! Hedging needs room in the congestion window. Under a loss-based controller such as Cubic
//! at 2% loss the window collapses towards its 2-packet minimum; doubling a dense stream of
//! reads then only queues them in the sender (measured: p99 232 -> 445 ms at 100 ms / 2%).
//! So a call is hedged only when one more packet fits in the window right now with a
//! quarter of it to spare ([`Flight::has_room_for`], from the `Observed` wrapper around the
//! controller). A lone call, where hedging matters most (no later packets reveal its loss),
//! finds the window empty.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;

use crate::congestion::observed::{FlightCell, Observed};
use crate::{BoxError, TransportError};

/// When the client sends a second copy of a hedgeable read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hedge {
    /// Never.
    Off,
    /// On QUIC, while the connection has recently lost packets.
    #[default]
    Auto,
    /// On QUIC, always.
    Always,
}

impl Hedge {
    pub fn as_str(self) -> &'static str {
        match self {
            Hedge::Off => "off",
            Hedge::Auto => "auto",
            Hedge::Always => "always",
        }
    }
}

impl std::fmt::Display for Hedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Hedge {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Hedge::Off),
            "auto" => Ok(Hedge::Auto),
            "always" => Ok(Hedge::Always),
            _ => Err(TransportError::Config(format!(
                "unknown hedging policy '{s}': use off, auto or always"
            ))),
        }
    }
}

/// How long a seen loss keeps `auto` hedging on.
const LOSS_MEMORY: Duration = Duration::from_secs(30);
/// Spacing bounds of the second copy: enough to leave in another packet, short enough that
/// an answer to it is barely later than one to the first.
const MIN_DELAY: Duration = Duration::from_millis(2);
const MAX_DELAY: Duration = Duration::from_millis(20);
/// A hedged request body is buffered to be sent twice; unary reads are far smaller.
pub(super) const MAX_REQUEST: usize = 1024 * 1024;
/// An answer is buffered up to this size before it counts as the winner; larger answers
/// win as soon as they pass it and stream the rest.
pub(super) const MAX_BUFFERED_ANSWER: usize = 4 * 1024 * 1024;

/// Spacing between the two copies for a path with this RTT.
pub(crate) fn spacing(rtt: Duration) -> Duration {
    (rtt / 10).clamp(MIN_DELAY, MAX_DELAY)
}

/// Remembers when the connection's lost-packet counter last went up.
#[derive(Debug, Default)]
pub(crate) struct LossWatch {
    seen: u64,
    last_loss: Option<Instant>,
}

impl LossWatch {
    /// Feeds the connection's total of lost packets; true while a loss is recent.
    pub(crate) fn recent(&mut self, lost_total: u64, now: Instant) -> bool {
        if lost_total > self.seen {
            self.seen = lost_total;
            self.last_loss = Some(now);
        }
        self.last_loss
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_MEMORY)
    }
}

/// How often a connection's hedgeable reads went out twice, and how often the window had
/// no room for the second copy (reads that `auto` sent once on a clean path are in neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HedgeCounts {
    pub hedged: u64,
    pub no_room: u64,
}

/// Per-connection hedging state (QUIC only).
pub(crate) struct Hedger {
    conn: quinn::Connection,
    /// The controller's flight (`None` if it were not wrapped: then nothing is hedged).
    flight: Option<Arc<FlightCell>>,
    watch: Mutex<LossWatch>,
    hedged: AtomicU64,
    no_room: AtomicU64,
}

impl Hedger {
    pub(crate) fn new(conn: quinn::Connection) -> Self {
        Hedger {
            flight: Observed::cell_of(conn.congestion_state()),
            conn,
            watch: Mutex::new(LossWatch::default()),
            hedged: AtomicU64::new(0),
            no_room: AtomicU64::new(0),
        }
    }

    pub(crate) fn counts(&self) -> HedgeCounts {
        HedgeCounts {
            hedged: self.hedged.load(Ordering::Relaxed),
            no_room: self.no_room.load(Ordering::Relaxed),
        }
    }

    /// The spacing of the second copy, or `None` when `path` goes out once.
    pub(crate) fn spacing_for(&self, policy: Hedge, path: &str) -> Option<Duration> {
        if policy == Hedge::Off || !openshell_proto::is_hedgeable(path) {
            return None;
        }
        let stats = self.conn.stats().path;
        if policy == Hedge::Auto {
            let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            if !watch.recent(stats.lost_packets, Instant::now()) {
                return None;
            }
        }
        // A copy costs about one packet (a unary read's request is far smaller).
        let flight = self.flight.as_ref()?.flight();
        if !flight.has_room_for(u64::from(stats.current_mtu)) {
            self.no_room.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.hedged.fetch_add(1, Ordering::Relaxed);
        Some(spacing(self.conn.rtt()))
    }
}

/// Races two attempts, the second started `spacing` after the first: the first success
/// wins; when both fail, the first failure is reported.
pub(super) async fn race<T, F>(first: F, second: F, spacing: Duration) -> Result<T, BoxError>
where
    F: Future<Output = Result<T, BoxError>>,
{
    let second = async move {
        tokio::time::sleep(spacing).await;
        second.await
    };
    let mut first = std::pin::pin!(first);
    let mut second = std::pin::pin!(second);
    let (mut first_failed, mut second_failed) = (None, None);
    loop {
        tokio::select! {
            r = &mut first, if first_failed.is_none() => match r {
                Ok(v) => return Ok(v),
                Err(e) => first_failed = Some(e),
            },
            r = &mut second, if second_failed.is_none() => match r {
                Ok(v) => return Ok(v),
                Err(e) => second_failed = Some(e),
            },
        }
        if first_failed.is_some() && second_failed.is_some() {
            return Err(first_failed.or(second_failed).expect("both failed"));
        }
    }
}

/// An answer read ahead (whole, or its first part) followed by whatever is left of it.
pub(super) struct Replay<B> {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> Replay<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Reads `body` until it ends or `limit` bytes of data have been read.
    pub(super) async fn read_ahead(mut body: B, limit: usize) -> Result<Self, BoxError> {
        use http_body_util::BodyExt;
        let mut frames = VecDeque::new();
        let mut size = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Into::into)?;
            size += frame.data_ref().map_or(0, |d| d.len());
            frames.push_back(frame);
            if size > limit {
                return Ok(Replay {
                    frames,
                    rest: Some(body),
                });
            }
        }
        Ok(Replay { frames, rest: None })
    }
}

impl<B> http_body::Body for Replay<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn policies_parse_and_name_the_fix() {
        assert_eq!("off".parse::<Hedge>().unwrap(), Hedge::Off);
        assert_eq!(" Always ".parse::<Hedge>().unwrap(), Hedge::Always);
        let err = "sometimes".parse::<Hedge>().unwrap_err().to_string();
        assert!(err.contains("'sometimes'") && err.contains("off, auto or always"));
        assert_eq!(Hedge::default(), Hedge::Auto);
    }

    #[test]
    fn spacing_follows_the_rtt_within_bounds() {
        assert_eq!(spacing(Duration::from_micros(300)), MIN_DELAY);
        assert_eq!(
            spacing(Duration::from_millis(100)),
            Duration::from_millis(10)
        );
        assert_eq!(spacing(Duration::from_millis(600)), MAX_DELAY);
    }

    #[test]
    fn a_loss_keeps_auto_hedging_on_for_a_while() {
        let t0 = Instant::now();
        let mut w = LossWatch::default();
        assert!(!w.recent(0, t0), "no loss yet");
        assert!(w.recent(3, t0 + Duration::from_secs(1)));
        assert!(w.recent(3, t0 + Duration::from_secs(30)), "29 s after it");
        assert!(!w.recent(3, t0 + Duration::from_secs(32)), "forgotten");
        assert!(w.recent(4, t0 + Duration::from_secs(33)), "a new loss");
    }

    fn fail(what: &str) -> BoxError {
        what.to_string().into()
    }

    type Attempt = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn answers(value: u32) -> Attempt {
        Box::pin(async move { Ok(value) })
    }

    fn never() -> Attempt {
        Box::pin(std::future::pending())
    }

    fn fails(what: &'static str) -> Attempt {
        Box::pin(async move { Err(fail(what)) })
    }

    #[tokio::test]
    async fn an_early_answer_means_the_second_copy_is_never_sent() {
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = sent.clone();
        let second: Attempt = Box::pin(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(2)
        });
        let v = race(answers(1), second, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(v, 1);
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_lost_first_copy_is_answered_by_the_second() {
        let v = race(never(), answers(2), Duration::ZERO).await.unwrap();
        assert_eq!(v, 2);
    }

    #[tokio::test]
    async fn one_failure_waits_for_the_other_copy_and_two_report_the_first() {
        let v = race(fails("reset"), answers(7), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(v, 7);
        let err = race(fails("first"), fails("second"), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "first");
    }

    type Frames = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    fn answer() -> http_body_util::StreamBody<Frames> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"defg"))),
            Ok(Frame::trailers(trailers)),
        ]))
    }

    #[tokio::test]
    async fn replay_returns_every_frame_and_the_trailers() {
        // Whole answer buffered.
        let whole = Replay::read_ahead(answer(), 1024).await.unwrap();
        assert!(whole.rest.is_none());
        let got = whole.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(got.to_bytes(), Bytes::from_static(b"abcdefg"));
        // Past the limit: the rest streams behind what was read.
        let part = Replay::read_ahead(answer(), 2).await.unwrap();
        assert!(part.rest.is_some());
        let got = part.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(got.to_bytes(), Bytes::from_static(b"abcdefg"));
    }
}
