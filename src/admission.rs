//! Admission control: how many streams a node, and each client address,
//! may hold, and how fast new ones may arrive.
//!
//! A full or flooded node is an overload, not a client error: it answers
//! `200` with `retry:` and an immediate end (the load balancer sends the
//! client elsewhere). A single address over its share gets `429`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds its maximum number of streams.
    Full,
    /// New streams arrive faster than the configured rate.
    Flooded,
    /// This client address holds its maximum, `held` streams.
    TooManyFromAddress { held: usize },
}

pub struct Admission {
    max_streams: usize,
    max_per_address: usize,
    trusted_proxy_header: Option<http::HeaderName>,
    per_second: u32,
    streams: AtomicUsize,
    per_address: DashMap<IpAddr, usize>,
    bucket: Mutex<(f64, Instant)>,
}

/// A held stream slot; released on drop.
pub struct Ticket {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.streams.fetch_sub(1, Ordering::AcqRel);
        if let Some(a) = self.address {
            let empty = match self.admission.per_address.get_mut(&a) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if empty {
                self.admission.per_address.remove_if(&a, |_, n| *n == 0);
            }
        }
    }
}

impl Admission {
    pub fn new(
        max_streams: usize,
        max_per_address: usize,
        trusted_proxy_header: Option<&str>,
        per_second: u32,
    ) -> anyhow::Result<Admission> {
        let header = match trusted_proxy_header {
            Some(h) => Some(
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| anyhow::anyhow!("`{h}` is not an HTTP header name"))?,
            ),
            None => None,
        };
        Ok(Admission {
            max_streams,
            max_per_address,
            trusted_proxy_header: header,
            per_second,
            streams: AtomicUsize::new(0),
            per_address: DashMap::new(),
            bucket: Mutex::new((f64::from(per_second), Instant::now())),
        })
    }

    pub fn is_full(&self) -> bool {
        self.max_streams > 0 && self.streams.load(Ordering::Acquire) >= self.max_streams
    }

    /// The client's address: the socket peer, or the address the trusted
    /// proxy saw when configured. That is the last entry of the header's
    /// last line: a proxy appends (HAProxy's `option forwardfor` adds a
    /// line of its own), and everything before it came from the client.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.trusted_proxy_header
            .as_ref()
            .and_then(|h| headers.get_all(h).iter().next_back())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    }

    fn take_token(&self) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let mut b = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * f64::from(self.per_second);
        b.0 = (b.0 + refill).min(f64::from(self.per_second));
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Ticket, Refusal> {
        if self.is_full() {
            return Err(Refusal::Full);
        }
        if !self.take_token() {
            return Err(Refusal::Flooded);
        }
        if self.max_per_address > 0 {
            let mut n = self.per_address.entry(address).or_insert(0);
            if *n >= self.max_per_address {
                return Err(Refusal::TooManyFromAddress { held: *n });
            }
            *n += 1;
        }
        self.streams.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            admission: self.clone(),
            address: (self.max_per_address > 0).then_some(address),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let a = Arc::new(
            Admission::new(2, 1, Some("x-forwarded-for"), 0).unwrap_or_else(|e| panic!("{e}")),
        );
        let ip1: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ip2: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let t1 = a.admit(ip1);
        assert!(t1.is_ok());
        assert_eq!(
            a.admit(ip1).err(),
            Some(Refusal::TooManyFromAddress { held: 1 })
        );
        let t2 = a.admit(ip2);
        assert!(t2.is_ok());
        assert_eq!(
            a.admit("10.0.0.3".parse().unwrap_or(ip1)).err(),
            Some(Refusal::Full)
        );
        drop(t1);
        assert!(a.admit(ip1).is_ok(), "released on drop");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("1.2.3.4, 10.9.9.9"),
        );
        assert_eq!(a.client_address(ip1, &h), "10.9.9.9".parse().unwrap_or(ip1));
        // A client's own header line comes first; the proxy's line is last.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", http::HeaderValue::from_static("6.6.6.6"));
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_static("10.1.1.1"),
        );
        assert_eq!(a.client_address(ip1, &h), "10.1.1.1".parse().unwrap_or(ip1));
    }
}
