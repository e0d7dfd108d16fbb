//! The topology: two network namespaces, a TUN device in each, point-to-point addresses,
//! and the forwarder joining them.
//!
//! ```text
//!   netns osl-<pid>-<n>-a                                   netns osl-<pid>-<n>-b
//!   10.203.<n>.1 dev os<pid>x<n>a                           10.203.<n>.2 dev os<pid>x<n>b
//!            |  fd (held by this process)                             ^  fd
//!            v                                                        |
//!      [read] -> Lane a->b: Shaper -> ReleaseQueue -> [write] --------+
//!      [write] <- Lane b->a: ReleaseQueue <- Shaper <- [read] <-- fd
//! ```
//! Each device is created in this process's namespace (so its fd is ours), then moved
//! into its namespace; the fd keeps working across the move.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::error::{Error, Result};
use crate::forward::{Forwarder, SharedLane, lock};
use crate::impairment::Impairment;
use crate::netns;
use crate::shaper::{DirectionStats, Lane};
use crate::sys;

static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// Default MTU of both TUN devices (Ethernet's, so results transfer to real paths).
pub const DEFAULT_MTU: u32 = 1500;

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// A direction of travel. `AtoB` impairs packets sent from namespace A to namespace B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AtoB,
    BtoA,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::AtoB => 0,
            Direction::BtoA => 1,
        }
    }
}

/// Where one side of the link lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// Network namespace name, for `ip netns exec NAME ...`.
    pub netns: String,
    /// TUN device name inside that namespace.
    pub device: String,
    /// This side's address; the other side reaches it over the link.
    pub addr: Ipv4Addr,
}

/// Configures a [`Link`]. Defaults: no impairment, a random seed, MTU 1500, addresses
/// `10.203.<n mod 256>.1` (A) and `.2` (B).
#[derive(Debug, Clone)]
pub struct LinkBuilder {
    impairments: [Impairment; 2],
    seed: Option<u64>,
    mtu: u32,
    addrs: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl LinkBuilder {
    /// The same impairment in both directions.
    pub fn impairment(mut self, imp: Impairment) -> Self {
        self.impairments = [imp.clone(), imp];
        self
    }

    /// The impairment of one direction.
    pub fn direction(mut self, dir: Direction, imp: Impairment) -> Self {
        self.impairments[dir.index()] = imp;
        self
    }

    /// Seed of the random draws (direction A->B uses `seed`, B->A `seed + 1`), to replay
    /// a run. Default: random, readable afterwards with [`Link::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// MTU of both devices. Default 1500; valid 576..=65535.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Addresses of side A and side B (they only exist inside the link's namespaces).
    pub fn addresses(mut self, a: Ipv4Addr, b: Ipv4Addr) -> Self {
        self.addrs = Some((a, b));
        self
    }

    /// Create the namespaces, devices and forwarder. Removes stale namespaces of crashed
    /// earlier runs first. On error, everything created so far is removed.
    pub fn build(self) -> Result<Link> {
        if !(576..=65_535).contains(&self.mtu) {
            return Err(Error::invalid("mtu", self.mtu.to_string(), "576..=65535"));
        }
        if let Some((a, b)) = self.addrs {
            for (field, addr) in [("address a", a), ("address b", b)] {
                if addr.is_loopback()
                    || addr.is_unspecified()
                    || addr.is_multicast()
                    || addr.is_broadcast()
                {
                    return Err(Error::invalid(
                        field,
                        addr.to_string(),
                        "a unicast IPv4 address, not loopback",
                    ));
                }
            }
            if a == b {
                return Err(Error::invalid(
                    "address b",
                    b.to_string(),
                    "any address other than address a",
                ));
            }
        }
        netns::preflight()?;
        netns::remove_stale()?;

        let pid = std::process::id();
        let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        let (addr_a, addr_b) = self.addrs.unwrap_or((
            Ipv4Addr::new(10, 203, n as u8, 1),
            Ipv4Addr::new(10, 203, n as u8, 2),
        ));
        let seed = self.seed.unwrap_or_else(|| rand::rng().random());
        let mut guard = Namespaces::default();
        let mut fds = Vec::new();
        let mut endpoints = Vec::new();
        for (side, addr, peer) in [('a', addr_a, addr_b), ('b', addr_b, addr_a)] {
            let ns = netns::namespace_name(pid, n, side);
            netns::add(&ns)?;
            guard.0.push(ns.clone());
            // The link is IPv4 only. Devices moved in after this get no IPv6, so the kernel
            // does not send router solicitations and MLD reports across the link, which
            // would show up in the counters and in loss measurements.
            netns::ip(&[
                "netns",
                "exec",
                &ns,
                "sh",
                "-c",
                // Kernels without IPv6 have no such file and nothing to disable.
                "f=/proc/sys/net/ipv6/conf/default/disable_ipv6; if [ -e $f ]; then echo 1 > $f; fi",
            ])?;
            // Device names are global until moved: make them unique per process and link.
            // "os" + pid (<= 7 hex) + "x" + n (4 hex) + side <= 15 bytes (IFNAMSIZ - 1).
            let device = format!("os{pid:x}x{:x}{side}", n & 0xffff);
            let fd = sys::create_tun(&device)
                .map_err(|e| Error::io(format!("creating TUN device {device}"), e))?;
            let (addr_s, peer_s, mtu_s) =
                (addr.to_string(), format!("{peer}/32"), self.mtu.to_string());
            netns::ip(&["link", "set", "dev", &device, "netns", &ns])?;
            netns::ip(&[
                "-n", &ns, "addr", "add", &addr_s, "peer", &peer_s, "dev", &device,
            ])?;
            netns::ip(&[
                "-n", &ns, "link", "set", "dev", &device, "mtu", &mtu_s, "up",
            ])?;
            netns::ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
            fds.push(fd);
            endpoints.push(Endpoint {
                netns: ns,
                device,
                addr,
            });
        }
        let [imp_ab, imp_ba] = self.impairments;
        let lanes: [SharedLane; 2] = [
            Arc::new(Mutex::new(Lane::new(imp_ab, seed))),
            Arc::new(Mutex::new(Lane::new(imp_ba, seed.wrapping_add(1)))),
        ];
        let failure = Arc::new(Mutex::new(None));
        let fd_b = fds.pop().expect("two fds");
        let fd_a = fds.pop().expect("two fds");
        let forwarder = Forwarder::spawn(
            fd_a,
            fd_b,
            lanes[0].clone(),
            lanes[1].clone(),
            failure.clone(),
        )?;
        let b = endpoints.pop().expect("two endpoints");
        let a = endpoints.pop().expect("two endpoints");
        tracing::info!(a = %a.netns, b = %b.netns, seed, "link up");
        Ok(Link {
            a,
            b,
            seed,
            lanes,
            failure,
            forwarder: Some(forwarder),
            namespaces: guard,
        })
    }
}

/// Namespaces to delete on drop (also on a failed build).
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn remove_all(&mut self) -> Result<()> {
        let mut first_err = None;
        for ns in self.0.drain(..) {
            if let Err(e) = netns::delete(&ns) {
                tracing::warn!(netns = %ns, error = %e, "cannot delete namespace");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

/// A running emulated link. Dropping it stops the forwarder, which closes both TUN fds
/// (the devices disappear), then deletes both namespaces; [`Link::close`] does the same
/// and reports errors.
pub struct Link {
    a: Endpoint,
    b: Endpoint,
    seed: u64,
    lanes: [SharedLane; 2],
    failure: Arc<Mutex<Option<String>>>,
    forwarder: Option<Forwarder>,
    namespaces: Namespaces,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Start configuring a link.
    pub fn builder() -> LinkBuilder {
        LinkBuilder {
            impairments: [Impairment::default(), Impairment::default()],
            seed: None,
            mtu: DEFAULT_MTU,
            addrs: None,
        }
    }

    /// Side A.
    pub fn a(&self) -> &Endpoint {
        &self.a
    }

    /// Side B.
    pub fn b(&self) -> &Endpoint {
        &self.b
    }

    /// Either side.
    pub fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// The seed of the random draws.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `ip netns exec <side's namespace> program`; add arguments, env, stdio as usual.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.endpoint(side).netns])
            .arg(program);
        cmd
    }

    /// Change one direction's impairment while running; applies to packets arriving from
    /// now on (see [`crate::Shaper::set_impairment`]).
    pub fn set(&self, dir: Direction, imp: Impairment) {
        lock(&self.lanes[dir.index()]).set_impairment(imp);
    }

    /// Change both directions.
    pub fn set_both(&self, imp: Impairment) {
        self.set(Direction::AtoB, imp.clone());
        self.set(Direction::BtoA, imp);
    }

    /// The impairment in force in one direction.
    pub fn impairment(&self, dir: Direction) -> Impairment {
        lock(&self.lanes[dir.index()]).impairment().clone()
    }

    /// Counters of one direction since the link came up.
    pub fn stats(&self, dir: Direction) -> DirectionStats {
        lock(&self.lanes[dir.index()]).stats()
    }

    /// The I/O error that stopped the forwarder, if it stopped.
    pub fn forwarder_error(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tear down now, reporting the first error.
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(mut f) = self.forwarder.take() {
            f.stop();
        }
        self.namespaces.remove_all()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(error = %e, "link teardown incomplete");
        }
    }
}
