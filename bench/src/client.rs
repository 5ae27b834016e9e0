//! Client connections: source addresses, opening one event stream, and the
//! small HTTP GETs the coordinator makes to control endpoints.
//!
//! It owns the client side of the wire up to the end of the response head;
//! reading the event stream after that is the worker's (worker.rs). The
//! decision to know: clients speak HTTP/1.0, so the body is the raw event
//! stream with no chunked framing to undo, and each connection binds its own
//! 127.x.y.z source address (IP_BIND_ADDRESS_NO_PORT), so that hundreds of
//! thousands of connections to one port do not run out of source ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use herald_bench::record::now_us;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::sys;

/// Source addresses are 127.(1..=250).0.(2..=251).
const SOURCE_OCTETS: usize = 250;
const SOURCE_ADDRS: usize = SOURCE_OCTETS * SOURCE_OCTETS;
/// Connecting, and reading the response head, each give up after this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// A response head longer than this is an error.
const MAX_HEAD: usize = 16 * 1024;
/// A control request (stats, metrics, rate) gives up after this.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

fn source_addr(j: usize) -> Ipv4Addr {
    let j = j % SOURCE_ADDRS;
    Ipv4Addr::new(
        127,
        1 + (j / SOURCE_OCTETS) as u8,
        0,
        2 + (j % SOURCE_OCTETS) as u8,
    )
}

/// Hands out distinct source addresses; starts somewhere new each run.
pub struct Sources {
    next: usize,
}

impl Sources {
    pub fn new() -> Sources {
        Sources {
            next: (now_us() / 1_000_000 * 7919) as usize % SOURCE_ADDRS,
        }
    }

    /// Enough addresses for `connections` at `per_source` each (at least one).
    pub fn take(&mut self, connections: usize, per_source: usize) -> Vec<Ipv4Addr> {
        let n = connections.div_ceil(per_source.max(1)).max(1);
        let out = (0..n).map(|k| source_addr(self.next + k)).collect();
        self.next += n;
        out
    }
}

/// Opens one stream: connects from `source`, sends the request and reads the
/// response head. Returns the stream and any body bytes read with the head.
pub async fn open_stream(
    target: SocketAddr,
    source: Ipv4Addr,
    path: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    let socket = TcpSocket::new_v4()?;
    // Best effort: without it, bind() takes a port of its own.
    let _ = sys::bind_address_no_port(socket.as_raw_fd());
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, socket.connect(target))
        .await
        .context("connect timed out")??;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: bench\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 2048];
    let head = tokio::time::timeout(OPEN_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "closed before the response head: {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end);
            }
            if got.len() > MAX_HEAD {
                bail!("response head too long");
            }
        }
    })
    .await
    .context("response head timed out")??;
    if got.get(9..12) != Some(b"200") {
        let line = got.split(|&b| b == b'\r').next().unwrap_or_default();
        bail!("not 200: {}", String::from_utf8_lossy(line));
    }
    let body = got.split_off(head + 4);
    Ok((stream, body))
}

/// A small HTTP/1.0 GET for control endpoints: (status, body).
/// A bearer token control GETs send (a scenario whose node requires one).
static CONTROL_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Control GETs (stats, metrics) carry `token` from now on.
pub fn set_control_token(token: String) {
    let _ = CONTROL_TOKEN.set(token);
}

pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        let auth = CONTROL_TOKEN
            .get()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n{auth}\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(CONTROL_TIMEOUT, work)
        .await
        .context("HTTP request timed out")?
}

/// GET `path`, which must answer 200 with JSON.
pub async fn http_json(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let (status, body) = http_get(addr, path).await?;
    if status != 200 {
        bail!("GET {path}: {status}");
    }
    Ok(serde_json::from_str(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_loopback_and_distinct() {
        let mut s = Sources {
            next: SOURCE_ADDRS - 1,
        };
        let got = s.take(4001, 2000);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|a| a.is_loopback()));
        assert_eq!(got[0], Ipv4Addr::new(127, 250, 0, 251));
        assert_eq!(got[1], Ipv4Addr::new(127, 1, 0, 2), "wraps around");
        assert_eq!(s.take(0, 0).len(), 1, "at least one");
    }
}
