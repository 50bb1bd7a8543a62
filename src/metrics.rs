//! Process-wide metrics, served as Prometheus text at `/metrics`.
//!
//! One registry per process (like a global recorder): every transport, the engine and the
//! request middleware count into it without threading a handle through every call.

use std::sync::LazyLock;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The transports a stream can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    Sse,
    /// A held long-poll.
    Poll,
    Ws,
    SocketIo,
    /// A Durable Streams read held open: a long-poll.
    DurablePoll,
    /// A Durable Streams read held open: Server-Sent Events.
    DurableSse,
}

impl Transport {
    pub(crate) const ALL: [Self; 6] = [
        Self::Sse,
        Self::Poll,
        Self::Ws,
        Self::SocketIo,
        Self::DurablePoll,
        Self::DurableSse,
    ];

    /// Whether a stream of this transport is a held long-poll (which has its own bound).
    pub(crate) fn is_poll(self) -> bool {
        matches!(self, Self::Poll | Self::DurablePoll)
    }

    /// Its name in metrics labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Poll => "poll",
            Self::Ws => "ws",
            Self::SocketIo => "socketio",
            Self::DurablePoll => "durable_poll",
            Self::DurableSse => "durable_sse",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    /// One of the standard methods, or `other`: a client may send any token as a method.
    pub method: &'static str,
    /// The operation id, or `other` (bounded cardinality: never the raw path).
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabel {
    pub pool: &'static str,
    pub state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub(crate) struct Metrics {
    /// Open stream connections by transport (sse, poll, ws, socketio).
    pub connections: Family<TransportLabel, Gauge>,
    pub events_appended: Counter,
    pub events_delivered: Family<TransportLabel, Counter>,
    /// Subscriptions that resumed from a cursor (a replay from the log, possibly empty).
    pub replays: Counter,
    pub resets: Family<ReasonLabel, Counter>,
    /// Subscribers cut off for falling behind.
    pub slow_cut_off: Counter,
    /// Requests refused at a limit (503), by which limit.
    pub refused: Family<ReasonLabel, Counter>,
    pub requests: Family<RequestLabel, Counter>,
    pub request_seconds: HistogramFamily<RequestLabel>,
    /// Database connections by pool and state (idle, in use), sampled at scrape.
    pub db_connections: Family<PoolLabel, Gauge>,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("funko_live");
        let metrics = Self {
            connections: Family::default(),
            events_appended: Counter::default(),
            events_delivered: Family::default(),
            replays: Counter::default(),
            resets: Family::default(),
            slow_cut_off: Counter::default(),
            refused: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            db_connections: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "stream_connections",
            "Open stream connections by transport",
            metrics.connections.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended to the log by this process",
            metrics.events_appended.clone(),
        );
        registry.register(
            "events_delivered",
            "Events sent to subscribers, by transport",
            metrics.events_delivered.clone(),
        );
        registry.register(
            "stream_replays",
            "Subscriptions resumed from a cursor",
            metrics.replays.clone(),
        );
        registry.register(
            "stream_resets",
            "Resets sent, by reason",
            metrics.resets.clone(),
        );
        registry.register(
            "stream_slow_cut_off",
            "Subscribers cut off for falling behind",
            metrics.slow_cut_off.clone(),
        );
        registry.register(
            "refused",
            "Requests refused at a limit, by limit",
            metrics.refused.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency (to the response head) by method, route and status",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by pool and state",
            metrics.db_connections.clone(),
        );
        // Every known series exists from the start, at zero, so dashboards and alerts see
        // it before the first occurrence.
        for transport in Transport::ALL.map(Transport::as_str) {
            metrics
                .connections
                .get_or_create(&TransportLabel { transport })
                .set(0);
            metrics
                .events_delivered
                .get_or_create(&TransportLabel { transport })
                .inc_by(0);
        }
        for reason in ["expired", "unknown"] {
            metrics
                .resets
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        for reason in ["streams", "streams_per_ip", "pollers", "connections_per_ip"] {
            metrics
                .refused
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub(crate) fn delivered(&self, transport: Transport, count: usize) {
        self.delivered_counter(transport).inc_by(count as u64);
    }

    /// The delivery counter of one transport, for a stream to keep: counting through it skips
    /// the family's lock and label lookup on every delivery.
    pub(crate) fn delivered_counter(&self, transport: Transport) -> Counter {
        self.events_delivered
            .get_or_create(&TransportLabel {
                transport: transport.as_str(),
            })
            .clone()
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// The label of a request's method: the standard ones by name, anything else `other`, so a
/// client cannot add series by inventing methods.
pub(crate) fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Counts one open stream connection while it lives.
pub(crate) struct ConnectionGauge(Gauge);

impl ConnectionGauge {
    pub(crate) fn open(transport: Transport) -> Self {
        let gauge = METRICS
            .connections
            .get_or_create(&TransportLabel {
                transport: transport.as_str(),
            })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
