//! `openshell-linkem`: a packet-level link emulator for tests and benchmarks over lossy
//! networks, standing in for `tc netem` (not available on the project's kernels).
//!
//! It owns: two network namespaces joined by a pair of TUN devices, a userspace forwarder
//! between them, and per-direction impairments (delay, jitter, Bernoulli and
//! Gilbert-Elliott loss, reordering, rate limit, queue limit) that can be changed while
//! the link runs. It also ships a UDP echo/probe pair to measure a link.
//!
//! It does not own: the programs under test (run them with [`Link::command`]), any
//! traffic outside its own namespaces, or tc/nftables-based shaping.
//!
//! Layers, sans-IO first:
//! - [`Shaper`]: the pure per-packet decision (`on_packet(now, len) -> Verdict`);
//!   [`ReleaseQueue`] orders accepted packets; [`Lane`] adds the counters.
//! - `forward`: one thread per direction, each a thin tokio loop around a `Lane`;
//!   deliveries are precise to tens of microseconds on an idle machine.
//! - [`Link`]: namespaces, devices, addresses, teardown on drop; stale namespaces of
//!   crashed runs (prefix `osl-`, dead owner pid) are removed by the next [`Link::builder`]
//!   build.
//!
//! ```no_run
//! use std::time::Duration;
//! use openshell_linkem::{Direction, Impairment, Link, Side};
//!
//! let imp = Impairment::builder()
//!     .delay(Duration::from_millis(50))
//!     .loss(0.02)
//!     .build()?;
//! let link = Link::builder().impairment(imp).build()?;
//! let status = link
//!     .command(Side::A, "curl")
//!     .arg(format!("http://{}:8080/", link.b().addr))
//!     .status();
//! link.set(Direction::AtoB, Impairment::builder().delay(Duration::from_millis(10)).build()?);
//! println!("{:?}", link.stats(Direction::AtoB));
//! # Ok::<(), openshell_linkem::Error>(())
//! ```
//! Needs root, `/dev/net/tun` and iproute2's `ip`; [`preflight`] says which is missing.

mod error;
mod forward;
mod impairment;
mod link;
mod netns;
pub mod parse;
pub mod probe;
mod shaper;
mod sys;

pub use error::{Error, Result};
pub use impairment::{
    DEFAULT_QUEUE, GilbertElliott, Impairment, ImpairmentBuilder, JitterOrder, MAX_DELAY,
    MAX_QUEUE, MAX_RATE_BPS, MIN_RATE_BPS, Reorder,
};
pub use link::{DEFAULT_MTU, Direction, Endpoint, Link, LinkBuilder, Side};
pub use netns::{NETNS_PREFIX, list_namespaces, owner_pid, preflight, remove_stale};
pub use shaper::{
    DirectionStats, DropReason, Lane, ReleaseQueue, Released, Shaper, Verdict, serialization_time,
};
