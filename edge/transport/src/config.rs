//! QUIC tuning shared by both ends. quinn's defaults are wrong for a gateway in several ways
//! (see `reference/quic-transport.md`, "Gotchas"), so every knob that matters is set here
//! explicitly, with its default and the cost of changing it documented on the field.

use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::TransportError;
use crate::congestion::TolerantConfig;
use crate::congestion::observed::ObservedFactory;

/// Congestion controller for the data this endpoint sends (the server's choice governs
/// downloads and the client's governs uploads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// Loss-based, quinn's default; collapses to ~1 Mbit/s at 2% random loss (measured).
    Cubic,
    /// Classic loss-based AIMD; similar to Cubic on lossy links.
    NewReno,
    /// Model-based, 60x Cubic's goodput at 2% loss, but marked experimental in quinn and
    /// measured to overrun shallow queues (27-37% self-induced loss).
    Bbr,
    /// Ours (`crate::congestion`), the default: BBR-style model, window near 1 x BDP,
    /// backs off only on loss clearly above the learned random-loss rate. As fast as Cubic
    /// on a clean link, 50 to 100x Cubic's goodput under random loss (BENCHMARKS.md).
    #[default]
    Tolerant,
}

impl std::str::FromStr for Congestion {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "newreno" | "new-reno" | "reno" => Ok(Congestion::NewReno),
            "bbr" => Ok(Congestion::Bbr),
            "tolerant" => Ok(Congestion::Tolerant),
            other => Err(TransportError::Config(format!(
                "unknown congestion controller '{other}': use cubic, newreno, bbr or tolerant"
            ))),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
            Congestion::Tolerant => "tolerant",
        })
    }
}

/// Every QUIC setting the gateway and its clients set explicitly.
#[derive(Debug, Clone)]
pub struct QuicTuning {
    /// Keep-alive PING interval. Default 5 s. quinn sends none by default, so an idle SSH
    /// session would hit the idle timeout; must stay well below `idle_timeout`. Lower costs
    /// a few bytes per interval per connection.
    pub keep_alive: Duration,
    /// Idle timeout (the effective value is the minimum of both peers'). Default 30 s: a peer
    /// that vanished is noticed within this time. Higher keeps dead connections (and their
    /// memory) around longer; lower risks closing on a long network stall.
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams the peer may open. Default 1024 (quinn: 100). Every
    /// in-flight RPC and every open tunnel holds one; at the limit new RPCs wait silently.
    pub max_bidi_streams: u32,
    /// Concurrent unidirectional streams. Default 16: HTTP/3 needs 3 per side (control and
    /// two QPACK streams) plus GREASE; never 0.
    pub max_uni_streams: u32,
    /// Per-stream receive window. Default 8 MiB (quinn: 1.25 MB). Caps one stream at
    /// window/RTT (8 MiB at 100 ms = 670 Mbit/s); memory per busy stream grows with it.
    pub stream_receive_window: u32,
    /// Per-connection receive window. Default 32 MiB (quinn: unbounded). Bounds the memory
    /// one connection can make us buffer however many streams it opens.
    pub receive_window: u32,
    /// Send window. Default 32 MiB (quinn: 10 MB).
    pub send_window: u64,
    /// UDP socket receive/send buffer request (SO_RCVBUF/SO_SNDBUF). Default 4 MiB; the
    /// kernel caps it at net.core.rmem_max/wmem_max. Too small drops packets under bursts.
    pub udp_buffer: usize,
    /// Congestion controller. Default `tolerant` (see `Congestion`).
    pub congestion: Congestion,
    /// Initial RTT estimate before the first sample. Default 333 ms (quinn's, from RFC 9002).
    pub initial_rtt: Duration,
}

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_bidi_streams: 1024,
            max_uni_streams: 16,
            stream_receive_window: 8 << 20,
            receive_window: 32 << 20,
            send_window: 32 << 20,
            udp_buffer: 4 << 20,
            congestion: Congestion::Tolerant,
            initial_rtt: Duration::from_millis(333),
        }
    }
}

impl QuicTuning {
    /// Checks the combinations quinn would accept but that break the gateway.
    pub fn validate(&self) -> Result<(), TransportError> {
        if self.keep_alive >= self.idle_timeout {
            return Err(TransportError::Config(format!(
                "keep-alive ({:?}) must be shorter than the idle timeout ({:?}), or idle connections are closed",
                self.keep_alive, self.idle_timeout
            )));
        }
        if self.max_uni_streams < 4 {
            return Err(TransportError::Config(
                "max uni streams must be at least 4: HTTP/3 needs 3 per side plus GREASE".into(),
            ));
        }
        if self.max_bidi_streams == 0 {
            return Err(TransportError::Config(
                "max bidi streams must be at least 1".into(),
            ));
        }
        if self.stream_receive_window > self.receive_window {
            return Err(TransportError::Config(
                "the stream receive window cannot exceed the connection receive window".into(),
            ));
        }
        Ok(())
    }

    /// The quinn transport configuration for these settings.
    pub fn transport_config(&self) -> Result<Arc<TransportConfig>, TransportError> {
        self.validate()?;
        let mut t = TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(IdleTimeout::try_from(self.idle_timeout).map_err(
                |_| TransportError::Config("idle timeout is too large".into()),
            )?))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window)
            .initial_rtt(self.initial_rtt);
        let controller: Arc<dyn ControllerFactory + Send + Sync> = match self.congestion {
            Congestion::Cubic => Arc::new(CubicConfig::default()),
            Congestion::NewReno => Arc::new(NewRenoConfig::default()),
            Congestion::Bbr => Arc::new(BbrConfig::default()),
            Congestion::Tolerant => Arc::new(TolerantConfig::default()),
        };
        // Observed changes nothing; it lets the client's hedging see the flight.
        t.congestion_controller_factory(Arc::new(ObservedFactory::new(controller)));
        Ok(Arc::new(t))
    }

    /// A UDP socket bound to `addr` with the configured buffer sizes.
    pub fn bind_udp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        let domain = socket2::Domain::for_address(addr);
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept v4-mapped peers too when bound to [::].
            let _ = socket.set_only_v6(false);
        }
        // Best effort: the kernel silently caps the request at rmem_max/wmem_max.
        let _ = socket.set_recv_buffer_size(self.udp_buffer);
        let _ = socket.set_send_buffer_size(self.udp_buffer);
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fix_quinn_defaults() {
        let t = QuicTuning::default();
        t.validate().unwrap();
        assert!(t.keep_alive < t.idle_timeout);
        assert!(t.max_bidi_streams > 100);
        t.transport_config().unwrap();
    }

    #[test]
    fn keep_alive_above_idle_is_refused() {
        let t = QuicTuning {
            keep_alive: Duration::from_secs(60),
            ..QuicTuning::default()
        };
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("keep-alive"), "{err}");
    }

    #[test]
    fn congestion_names_parse() {
        assert_eq!("BBR".parse::<Congestion>().unwrap(), Congestion::Bbr);
        assert_eq!(
            "newreno".parse::<Congestion>().unwrap(),
            Congestion::NewReno
        );
        assert_eq!(
            "tolerant".parse::<Congestion>().unwrap(),
            Congestion::Tolerant
        );
        assert_eq!(Congestion::Tolerant.to_string(), "tolerant");
        assert!("vegas".parse::<Congestion>().is_err());
    }
}
