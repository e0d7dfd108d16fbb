//! `Observed`: wraps any congestion controller and remembers what quinn tells it about the
//! flight, so code outside quinn can ask whether the window has room right now. quinn
//! exposes the window (`PathStats::cwnd`) but not the bytes in flight; request hedging
//! needs both, or a second copy of a request queues behind the first copies of others.
//!
//! The wrapper changes nothing about congestion control: every callback goes to the inner
//! controller unchanged.

use std::any::Any;
use std::sync::Arc;
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
            app_limited: true,
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
    /// Whether the sender ran out of data before the window at the last ACK (the window
    /// was not what limited it).
    pub app_limited: bool,
}

impl Flight {
    /// Whether `bytes` more fit while leaving a quarter of the window free for whatever
    /// else the connection sends.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.in_flight.saturating_add(bytes) <= self.window - self.window / 4
    }
}

/// A controller and the flight it last saw.
pub struct Observed {
    inner: Box<dyn Controller>,
    at_last_ack: u64,
    sent_since: u64,
    app_limited: bool,
}

impl Observed {
    /// The flight now, for a controller obtained from `quinn::Connection::congestion_state`
    /// (`None` when the connection's controller is not wrapped).
    pub fn flight_of(state: Box<dyn Controller>) -> Option<Flight> {
        let me = state.into_any().downcast::<Observed>().ok()?;
        Some(Flight {
            window: me.inner.window(),
            in_flight: me.at_last_ack.saturating_add(me.sent_since),
            app_limited: me.app_limited,
        })
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
        self.app_limited = app_limited;
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
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
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Observed {
            inner: self.inner.clone_box(),
            at_last_ack: self.at_last_ack,
            sent_since: self.sent_since,
            app_limited: self.app_limited,
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
            app_limited: true,
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
        let flight = |c: &dyn Controller| Observed::flight_of(c.clone_box()).unwrap();
        assert_eq!(flight(c.as_ref()).in_flight, 0);
        c.on_sent(now, 1200, 1);
        c.on_sent(now, 1200, 2);
        assert_eq!(flight(c.as_ref()).in_flight, 2400);
        // quinn reports the exact flight after each ACK frame.
        c.on_end_acks(now, 1200, false, Some(1));
        let f = flight(c.as_ref());
        assert_eq!(
            (f.in_flight, f.app_limited, f.window),
            (1200, false, window)
        );
        c.on_sent(now, 600, 3);
        c.on_congestion_event(now, now, false, 1200);
        let f = flight(c.as_ref());
        assert_eq!(f.in_flight, 600);
        assert!(f.window < window, "the inner controller saw the loss");
        // Not wrapped: no answer rather than a wrong one.
        let plain: Box<dyn Controller> =
            Arc::new(quinn::congestion::CubicConfig::default()).build(now, 1200);
        assert_eq!(Observed::flight_of(plain), None);
    }
}
