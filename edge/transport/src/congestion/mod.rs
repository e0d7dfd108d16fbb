//! Congestion controllers of our own, behind quinn's `Controller` traits.
//!
//! `tolerant` (see `model`): a BBR-style controller that treats random loss as noise and
//! only backs off on loss clearly above the learned background rate or on a standing queue.
//! The model is pure; this module only adapts quinn's callbacks to it.

pub mod model;
pub mod observed;

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

use model::{Model, Params};

/// Factory for the `tolerant` controller (`--congestion tolerant`).
#[derive(Debug, Clone, Default)]
pub struct TolerantConfig {
    /// Window before the first measurement; `None` for quinn's rule (RFC 9002: ten
    /// datagrams, at least 14720 bytes' worth).
    pub initial_window: Option<u64>,
}

impl ControllerFactory for TolerantConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let mtu = u64::from(current_mtu);
        let initial = self
            .initial_window
            .unwrap_or_else(|| (10 * mtu).min((2 * mtu).max(14720)));
        Box::new(Tolerant {
            model: Model::new(Params {
                max_datagram: mtu,
                initial_window: initial,
            }),
            initial_window: initial,
        })
    }
}

/// The quinn side of the `tolerant` controller.
#[derive(Debug, Clone)]
pub struct Tolerant {
    model: Model,
    initial_window: u64,
}

impl Tolerant {
    /// The model, for inspection.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Controller for Tolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.model.on_sent(now, bytes);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.model.on_ack(now, sent, bytes, app_limited, rtt.min());
    }

    fn on_end_acks(
        &mut self,
        _now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.model.on_end_acks(in_flight);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // ECN marks arrive with lost_bytes == 0; this path is not ECN-capable, so ignore them.
        if lost_bytes > 0 || is_persistent_congestion {
            self.model
                .on_loss(now, lost_bytes, is_persistent_congestion);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.set_max_datagram(u64::from(new_mtu));
    }

    fn window(&self) -> u64 {
        self.model.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window();
        m.pacing_rate = Some((self.model.bandwidth() * 8.0) as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
