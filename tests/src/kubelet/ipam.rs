//! Pod addresses on loopback: every pod gets its own 127.x.y.z, so many pods can each bind the
//! same container port, as they would in their own network namespaces.

use super::error::{Error, Result};
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

/// An IPv4 range inside 127.0.0.0/8 that pod addresses are taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Default for PodCidr {
    /// `127.0.1.0/24`.
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(127, 0, 1, 0),
            prefix: 24,
        }
    }
}

impl PodCidr {
    /// A /24 that no other call in this process returns and that other test processes are
    /// unlikely to use: `127.(100 + pid % 100).(n % 256).0/24`.
    pub fn unique_for_tests() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % 256;
        let second = 100 + std::process::id() % 100;
        Self {
            network: Ipv4Addr::new(127, second as u8, n as u8, 0),
            prefix: 24,
        }
    }

    /// Number of usable pod addresses (network and broadcast addresses excluded).
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `i`th usable address (0-based).
    fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1 + i)
    }

    /// Whether `ip` is a usable address of this range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (ip, net) = (u32::from(ip), u32::from(self.network));
        ip > net && ip - net <= self.hosts()
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for PodCidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidCidr {
            cidr: s.into(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("expected A.B.C.D/N"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        if addr.octets()[0] != 127 {
            return Err(bad("pod addresses must be on loopback (127.0.0.0/8)"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

/// Hands out pod addresses from a [`PodCidr`] in order, skipping those in use, wrapping around.
#[derive(Debug)]
pub struct Ipam {
    cidr: PodCidr,
    next: u32,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// An allocator with every address of `cidr` free.
    pub fn new(cidr: PodCidr) -> Self {
        Self {
            cidr,
            next: 0,
            used: BTreeSet::new(),
        }
    }

    /// Takes `preferred` if it is in range and free (a pod re-adopted after a restart keeps its
    /// address), else the next free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        if let Some(ip) = preferred {
            if self.cidr.contains(ip) && self.used.insert(ip) {
                return Ok(ip);
            }
        }
        let hosts = self.cidr.hosts();
        for _ in 0..hosts {
            let ip = self.cidr.host(self.next);
            self.next = (self.next + 1) % hosts;
            if self.used.insert(ip) {
                return Ok(ip);
            }
        }
        Err(Error::AddressesExhausted {
            cidr: self.cidr.to_string(),
        })
    }

    /// Returns `ip` to the pool.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

/// Hands out GPU indices `0..n`, as the NVIDIA device plugin does for `nvidia.com/gpu`.
#[derive(Debug)]
pub struct GpuAllocator {
    free: BTreeSet<u32>,
}

impl GpuAllocator {
    /// `n` free GPUs.
    pub fn new(n: u32) -> Self {
        Self {
            free: (0..n).collect(),
        }
    }

    /// The `count` lowest free indices, or `None` (nothing taken) if fewer are free.
    pub fn allocate(&mut self, count: u32) -> Option<Vec<u32>> {
        if (self.free.len() as u64) < u64::from(count) {
            return None;
        }
        let taken: Vec<u32> = self.free.iter().copied().take(count as usize).collect();
        for i in &taken {
            self.free.remove(i);
        }
        Some(taken)
    }

    /// Returns `indices` to the pool.
    pub fn release(&mut self, indices: &[u32]) {
        self.free.extend(indices);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> PodCidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn cidrs_must_be_loopback_with_room() {
        assert_eq!(cidr("127.0.1.7/24").to_string(), "127.0.1.0/24");
        assert!("10.0.0.0/24".parse::<PodCidr>().is_err());
        assert!("127.0.0.0/31".parse::<PodCidr>().is_err());
        assert!("127.0.0.0".parse::<PodCidr>().is_err());
        assert_eq!(cidr("127.0.1.0/30").hosts(), 2);
    }

    #[test]
    fn addresses_are_handed_out_in_order_and_reused_after_wrapping() {
        let mut ipam = Ipam::new(cidr("127.0.1.0/30"));
        let a = ipam.allocate(None).expect("first");
        let b = ipam.allocate(None).expect("second");
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(127, 0, 1, 1), Ipv4Addr::new(127, 0, 1, 2))
        );
        assert!(ipam.allocate(None).is_err());
        ipam.release(a);
        assert_eq!(ipam.allocate(None).ok(), Some(a));
    }

    #[test]
    fn a_free_preferred_address_is_kept() {
        let mut ipam = Ipam::new(PodCidr::default());
        let want = Ipv4Addr::new(127, 0, 1, 9);
        assert_eq!(ipam.allocate(Some(want)).ok(), Some(want));
        // Taken now, and out-of-range preferences are ignored.
        assert_ne!(ipam.allocate(Some(want)).ok(), Some(want));
        assert_ne!(
            ipam.allocate(Some(Ipv4Addr::new(10, 0, 0, 1))).ok(),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn test_cidrs_differ() {
        assert_ne!(PodCidr::unique_for_tests(), PodCidr::unique_for_tests());
    }

    #[test]
    fn gpus_are_never_handed_out_twice() {
        let mut gpus = GpuAllocator::new(2);
        assert_eq!(gpus.allocate(1), Some(vec![0]));
        assert_eq!(gpus.allocate(2), None);
        assert_eq!(gpus.allocate(1), Some(vec![1]));
        gpus.release(&[0]);
        assert_eq!(gpus.allocate(1), Some(vec![0]));
    }
}
