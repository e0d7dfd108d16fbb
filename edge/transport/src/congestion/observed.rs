//! `Observed`: wraps any congestion controller and remembers what quinn tells it about the
//! flight, so code outside quinn can ask whether the window has room right now. quinn
//! exposes the window (`PathStats::cwnd`) but not the bytes in flight; request hedging
//! needs both, or a second copy of a request queues behind the first copies of others.
//!
//! The wrapper changes nothing about congestion control: every callback goes to the inner
//! controller unchanged. After each one it publishes the flight to a [`FlightCell`] that
//! readers hold, so reading it never touches the connection's lock or copies the controller.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Builds the inner controller and wraps it.
pub struct ObservedFactory {
    inner: Arc<dyn ControllerFactory + Send + Sync>,
}

impl ObservedFactory {
    pub fn new(inner: Arc<dyn ControllerFactory + Send + Sync>) -> ObservedFactory {
        ObservedFactory { inner }
    }
}

impl ControllerFactory for ObservedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Observed {
            inner: self.inner.clone().build(now, current_mtu),
            at_last_ack: 0,
            sent_since: 0,
            cell: Arc::new(FlightCell::default()),
        })
    }
}

/// The flight as the controller last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flight {
    /// Congestion window, bytes.
    pub window: u64,
    /// Bytes in flight: exact at the last ACK, plus everything sent since (an overestimate
    /// by the few ACK-only packets among them).
    pub in_flight: u64,
}

impl Flight {
    /// Whether `bytes` more fit while leaving a quarter of the window free for whatever
    /// else the connection sends.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.in_flight.saturating_add(bytes) <= self.window - self.window / 4
    }
}

/// The latest flight of one connection's controller, shared with whoever reads it.
#[derive(Debug, Default)]
pub struct FlightCell {
    window: AtomicU64,
    in_flight: AtomicU64,
}

impl FlightCell {
    pub fn flight(&self) -> Flight {
        Flight {
            window: self.window.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// A controller and the flight it last saw.
pub struct Observed {
    inner: Box<dyn Controller>,
    at_last_ack: u64,
    sent_since: u64,
    cell: Arc<FlightCell>,
}

impl Observed {
    /// The flight cell of a controller obtained from `quinn::Connection::congestion_state`
    /// (`None` when the connection's controller is not wrapped). Take it once per
    /// connection: it follows the controller from then on. (quinn builds a new controller
    /// only when the peer's address changes, which a client's path never does.)
    pub fn cell_of(state: Box<dyn Controller>) -> Option<Arc<FlightCell>> {
        let me = state.into_any().downcast::<Observed>().ok()?;
        me.publish();
        Some(me.cell.clone())
    }

    fn publish(&self) {
        let c = &self.cell;
        c.window.store(self.inner.window(), Ordering::Relaxed);
        c.in_flight.store(
            self.at_last_ack.saturating_add(self.sent_since),
            Ordering::Relaxed,
        );
    }

    /// The wrapped controller (e.g. to inspect the `tolerant` model).
    pub fn inner(&self) -> &dyn Controller {
        self.inner.as_ref()
    }
}

impl Controller for Observed {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.sent_since = self.sent_since.saturating_add(bytes);
        self.inner.on_sent(now, bytes, last_packet_number);
        self.publish();
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        self.publish();
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.at_last_ack = in_flight;
        self.sent_since = 0;
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.publish();
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.at_last_ack = self.at_last_ack.saturating_sub(lost_bytes);
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.publish();
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
        self.publish();
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    /// quinn clones a controller for a new path to the same peer; the clone publishes to
    /// the same cell, so readers follow the path in use.
    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Observed {
            inner: self.inner.clone_box(),
            at_last_ack: self.at_last_ack,
            sent_since: self.sent_since,
            cell: self.cell.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_leaves_a_quarter_of_the_window() {
        let f = |in_flight| Flight {
            window: 12_000,
            in_flight,
        };
        assert!(f(0).has_room_for(9_000));
        assert!(!f(0).has_room_for(9_001));
        assert!(f(7_800).has_room_for(1_200));
        assert!(!f(7_801).has_room_for(1_200));
        assert!(!f(u64::MAX).has_room_for(1));
    }

    #[test]
    fn flight_follows_sends_acks_and_losses() {
        let now = Instant::now();
        let factory = Arc::new(ObservedFactory::new(Arc::new(
            quinn::congestion::CubicConfig::default(),
        )));
        let mut c = factory.build(now, 1200);
        let window = c.window();
        // Taken once, as the hedger does; it follows every later callback.
        let cell = Observed::cell_of(c.clone_box()).unwrap();
        assert_eq!(cell.flight().in_flight, 0);
        assert_eq!(cell.flight().window, window);
        c.on_sent(now, 1200, 1);
        c.on_sent(now, 1200, 2);
        assert_eq!(cell.flight().in_flight, 2400);
        // quinn reports the exact flight after each ACK frame.
        c.on_end_acks(now, 1200, false, Some(1));
        let f = cell.flight();
        assert_eq!((f.in_flight, f.window), (1200, window));
        c.on_sent(now, 600, 3);
        c.on_congestion_event(now, now, false, 1200);
        let f = cell.flight();
        assert_eq!(f.in_flight, 600);
        assert!(f.window < window, "the inner controller saw the loss");
        // A clone (quinn's new path to the same peer) publishes to the same cell.
        let mut moved = c.clone_box();
        moved.on_end_acks(now, 0, true, Some(3));
        assert_eq!(cell.flight().in_flight, 0);
        // Not wrapped: no answer rather than a wrong one.
        let plain: Box<dyn Controller> =
            Arc::new(quinn::congestion::CubicConfig::default()).build(now, 1200);
        assert!(Observed::cell_of(plain).is_none());
    }
}
