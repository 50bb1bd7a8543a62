//! Bounds on what clients can hold open: stream connections server-wide and per client IP,
//! and concurrent long-polls. Past a bound the answer is 503 with `Retry-After`, never an
//! unbounded queue.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use crate::{
    error::ApiError,
    metrics::{ConnectionGauge, METRICS, Transport},
};

#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    /// Open streams (SSE, WebSocket, Socket.IO, held long-polls) in the whole server.
    pub max_streams: usize,
    /// Open streams from one client IP.
    pub max_streams_per_ip: usize,
    /// Long-polls held at once (they count as streams too).
    pub max_pollers: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    pollers: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Hands out [`StreamSlot`]s within the limits.
#[derive(Clone, Debug)]
pub(crate) struct StreamSlots {
    limits: StreamLimits,
    /// Short critical sections only (a few integer updates).
    counts: Arc<Mutex<Counts>>,
}

/// One open stream; frees its place when dropped.
pub(crate) struct StreamSlot {
    slots: StreamSlots,
    ip: Option<IpAddr>,
    poller: bool,
    _gauge: ConnectionGauge,
}

impl StreamSlots {
    pub(crate) fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A place for a stream of `transport` from `ip`, or 503.
    pub(crate) fn acquire(
        &self,
        transport: Transport,
        ip: Option<IpAddr>,
    ) -> Result<StreamSlot, ApiError> {
        let poller = transport.is_poll();
        let mut counts = self.counts.lock().expect("stream counts poisoned");
        let refuse = |reason: &'static str, what: &str| {
            METRICS.refused(reason);
            Err(ApiError::Unavailable(format!(
                "too many open {what}; retry later"
            )))
        };
        if counts.total >= self.limits.max_streams {
            return refuse("streams", "streams on this server");
        }
        if poller && counts.pollers >= self.limits.max_pollers {
            return refuse("pollers", "long-polls on this server");
        }
        if let Some(ip) = ip
            && counts.by_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_streams_per_ip
        {
            return refuse("streams_per_ip", "streams from your address");
        }
        counts.total += 1;
        if poller {
            counts.pollers += 1;
        }
        if let Some(ip) = ip {
            *counts.by_ip.entry(ip).or_default() += 1;
        }
        Ok(StreamSlot {
            slots: self.clone(),
            ip,
            poller,
            _gauge: ConnectionGauge::open(transport),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().expect("stream counts poisoned");
        counts.total -= 1;
        if self.poller {
            counts.pollers -= 1;
        }
        if let Some(ip) = self.ip
            && let Some(n) = counts.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.by_ip.remove(&ip);
            }
        }
    }
}

/// The client's IP as poem saw it (no proxy headers are trusted).
pub(crate) fn client_ip(request: &poem::Request) -> Option<IpAddr> {
    match request.remote_addr().0 {
        poem::Addr::SocketAddr(addr) => Some(addr.ip()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_and_released() {
        let slots = StreamSlots::new(StreamLimits {
            max_streams: 3,
            max_streams_per_ip: 2,
            max_pollers: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (sse, poll) = (Transport::Sse, Transport::Poll);
        let first = slots.acquire(sse, Some(a)).unwrap();
        let _second = slots.acquire(sse, Some(a)).unwrap();
        assert!(slots.acquire(sse, Some(a)).is_err(), "per IP");
        let polling = slots.acquire(poll, Some(b)).unwrap();
        assert!(slots.acquire(sse, Some(b)).is_err(), "server-wide");
        drop(polling);
        assert!(slots.acquire(poll, Some(b)).is_ok());
        drop(first);
        assert!(slots.acquire(sse, Some(a)).is_ok());
    }
}
