//! Figures: every run's value per (scenario, server, transport, N, metric), their medians,
//! the CSV files, the chart, and BENCHMARKS.md.

use std::{fmt::Write as _, path::Path};

use anyhow::Context;
use plotters::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub scenario: String,
    pub server: String,
    pub transport: String,
    pub n: usize,
    pub metric: String,
    pub unit: String,
}

#[derive(Clone, Debug)]
pub struct Curve {
    pub chart: String,
    pub server: String,
    pub run: usize,
    pub x: f64,
    pub y: f64,
}

impl Curve {
    pub fn new(chart: &str, server: &str, run: usize, x: f64, y: f64) -> Self {
        Self {
            chart: chart.into(),
            server: server.into(),
            run,
            x,
            y,
        }
    }
}

#[derive(Default, Debug)]
pub struct Results {
    pub rows: Vec<(Key, Vec<f64>)>,
    pub curves: Vec<Curve>,
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        scenario: &str,
        server: &str,
        transport: &str,
        n: usize,
        metric: &str,
        unit: &str,
        value: f64,
    ) {
        let key = Key {
            scenario: scenario.into(),
            server: server.into(),
            transport: transport.into(),
            n,
            metric: metric.into(),
            unit: unit.into(),
        };
        match self.rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value),
            None => self.rows.push((key, vec![value])),
        }
    }

    pub fn curve(&mut self, curve: Curve) {
        self.curves.push(curve);
    }

    /// The median of a figure, if measured.
    pub fn get(
        &self,
        scenario: &str,
        server: &str,
        transport: &str,
        n: Option<usize>,
        metric: &str,
    ) -> Option<f64> {
        self.rows
            .iter()
            .find(|(k, _)| {
                k.scenario == scenario
                    && k.server == server
                    && k.transport == transport
                    && n.is_none_or(|n| k.n == n)
                    && k.metric == metric
            })
            .map(|(_, v)| median(v))
    }

    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let runs = self.rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let mut out = String::from("scenario,server,transport,n,metric,unit");
        for r in 1..=runs {
            let _ = write!(out, ",run{r}");
        }
        out.push_str(",median\n");
        for (k, v) in &self.rows {
            let _ = write!(
                out,
                "{},{},{},{},{},{}",
                k.scenario, k.server, k.transport, k.n, k.metric, k.unit
            );
            for r in 0..runs {
                match v.get(r) {
                    Some(x) => {
                        let _ = write!(out, ",{}", fmt_num(*x));
                    }
                    None => out.push(','),
                }
            }
            let _ = writeln!(out, ",{}", fmt_num(median(v)));
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_curves(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::from("chart,server,run,x,y\n");
        for c in &self.curves {
            let _ = writeln!(
                out,
                "{},{},{},{},{}",
                c.chart,
                c.server,
                c.run,
                fmt_num(c.x),
                fmt_num(c.y)
            );
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
    }
}

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub const OURS: &str = "funko-live";
pub const PEER: &str = "node-peer";
/// The kernel-floor rows (no server).
pub const KERNEL: &str = "kernel";

/// The slow-consumer bound on RSS growth in the run's second half.
const RSS_GROWTH_MIB: f64 = 8.0;

/// The slow-consumer rule for "readers' p99 unchanged": the most the readers' p99 beside the
/// non-readers may be, given their p99 alone.
fn readers_p99_limit(alone_ms: f64) -> f64 {
    1.5 * alone_ms + 2.0
}

type Series = Vec<(f64, f64)>;

/// The medians of a metric by N for one (scenario, server, transport).
fn series(r: &Results, scenario: &str, server: &str, transport: &str, metric: &str) -> Series {
    let mut pts: Series = r
        .rows
        .iter()
        .filter(|(k, _)| {
            k.scenario == scenario
                && k.server == server
                && k.transport == transport
                && k.metric == metric
        })
        .map(|(k, v)| (k.n as f64, median(v)))
        .filter(|p| p.1.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// fanout.png: on the left, fan-out p99 against subscribers for every transport, ours and the
/// peer's, beside the kernel floor; on the right, POST/s and fan-out p99 against instances on
/// PostgreSQL.
pub fn fanout_chart(r: &Results, path: &Path) -> anyhow::Result<bool> {
    register_font();
    let (red, blue, grey) = (
        RGBColor(200, 60, 30),
        RGBColor(40, 90, 200),
        RGBColor(90, 90, 90),
    );
    let lines: Vec<(String, RGBColor, u32, Series)> = [
        ("SSE", "sse", red, blue),
        (
            "WebSocket",
            "ws",
            RGBColor(235, 150, 20),
            RGBColor(20, 160, 170),
        ),
        (
            "Socket.IO",
            "socketio",
            RGBColor(150, 40, 150),
            RGBColor(40, 150, 60),
        ),
    ]
    .into_iter()
    .flat_map(|(label, t, ours, peer)| {
        [
            (
                format!("funko-live {label}"),
                ours,
                3,
                series(r, "fanout", OURS, t, "p99"),
            ),
            (
                format!("node peer {label}"),
                peer,
                2,
                series(r, "fanout", PEER, t, "p99"),
            ),
        ]
    })
    .chain([(
        "kernel floor (no server code)".to_owned(),
        grey,
        2,
        series(r, "floor", KERNEL, "tcp", "p99"),
    )])
    .map(|(l, c, w, pts)| {
        (
            l,
            c,
            w,
            pts.into_iter().map(|(x, y)| (x, y.max(0.01))).collect(),
        )
    })
    .filter(|(.., pts): &(_, _, _, Series)| !pts.is_empty())
    .collect();
    if lines.is_empty() {
        return Ok(false);
    }
    let posts = series(r, "cluster", OURS, "pg", "posts_per_s");
    let p99 = series(r, "cluster", OURS, "pg", "p99");
    let width = if posts.is_empty() { 900 } else { 1340 };
    let root = BitMapBackend::new(path, (width, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(900);
    let all: Series = lines.iter().flat_map(|l| l.3.clone()).collect();
    let bounds = |f: fn(&(f64, f64)) -> f64| {
        all.iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)))
    };
    let ((xmin, xmax), (ymin, ymax)) = (bounds(|p| p.0), bounds(|p| p.1));
    let mut chart = ChartBuilder::on(&left)
        .caption("Fan-out p99 (median of runs)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            ((xmin * 0.7)..(xmax * 1.4)).log_scale(),
            ((ymin * 0.5).max(0.01)..(ymax * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("subscribers")
        .y_desc("publish-to-deliver p99, ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (label, color, width, pts) in lines {
        let style = color.stroke_width(width);
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;

    if !posts.is_empty() {
        let (top, bottom) = right.split_vertically(310);
        let kmax = posts.iter().chain(&p99).map(|p| p.0).fold(1.0, f64::max);
        for (area, pts, caption, color) in [
            (
                &top,
                &posts,
                "PostgreSQL: POST/s through all instances",
                red,
            ),
            (
                &bottom,
                &p99,
                "PostgreSQL: fan-out p99, ms (1,000 SSE)",
                blue,
            ),
        ] {
            let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.25;
            let mut c = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 17))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.5..(kmax + 0.5), 0.0..ymax)?;
            c.configure_mesh()
                .x_desc("instances")
                .x_labels(kmax as usize)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style(("sans-serif", 13))
                .draw()?;
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
            c.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }
    root.present()?;
    Ok(true)
}

/// One line of the targets table.
pub struct TargetRow {
    pub scenario: String,
    pub target: &'static str,
    pub ours: String,
    /// The peer's figure, or the reference the target compares ours with.
    pub peer: String,
    pub ratio: String,
    pub met: Option<bool>,
    /// Why a miss cannot be helped here, measured in the same run.
    pub why: Option<String>,
}

fn num(x: Option<f64>, unit: &str) -> String {
    let text = match x {
        Some(v) if v.is_finite() && unit == "count" => return format!("{v:.0}"),
        Some(v) if v.is_finite() => {
            if v >= 10_000.0 {
                count(v.round() as usize)
            } else if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        }
        _ => return "n/a".into(),
    };
    if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    }
}

/// `a / b` with two decimals: a ratio near a threshold (1.97x against 2x) must not print as met.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

/// Thousands separated, for row names.
fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why an absolute latency target cannot be met on this machine, when the kernel floor
/// measured in the same run says so: a server with no code of its own would already miss it
/// (its frame p99 at the nearest socket count not above `n` is over `limit`).
fn floor_forbids(r: &Results, n: usize, limit_ms: f64) -> Option<String> {
    let (floor_n, p99) = series(r, "floor", KERNEL, "tcp", "p99")
        .into_iter()
        .rfind(|(k, _)| *k as usize <= n)?;
    (p99 > limit_ms).then(|| {
        format!(
            "impossible here: the kernel floor alone has p99 {p99:.1} ms at {} sockets",
            count(floor_n as usize)
        )
    })
}

/// The N measured for a transport's fan-out on our side.
fn ns(r: &Results, scenario: &str, transport: &str) -> Vec<usize> {
    series(r, scenario, OURS, transport, "p99")
        .iter()
        .map(|p| p.0 as usize)
        .collect()
}

pub fn targets(r: &Results) -> Vec<TargetRow> {
    let g = |s: &str, server: &str, tr: &str, n: Option<usize>, m: &str| r.get(s, server, tr, n, m);
    let mut rows = Vec::new();
    let mut row = |scenario: String, target, ours, peer, ratio, met, why| {
        rows.push(TargetRow {
            scenario,
            target,
            ours,
            peer,
            ratio,
            met,
            why,
        });
    };

    let (o, p) = (
        g("crud", OURS, "get_by_id", None, "requests_per_s"),
        g("crud", PEER, "get_by_id", None, "requests_per_s"),
    );
    row(
        "GET /funkos/{id}".into(),
        "≥ 5x the peer's req/s",
        num(o, "req/s"),
        num(p, "req/s"),
        ratio(o, p),
        o.zip(p).map(|(o, p)| o >= 5.0 * p),
        None,
    );
    let peer_posts = g("crud", PEER, "post", None, "requests_per_s");
    let o = g("crud", OURS, "post", None, "requests_per_s");
    row(
        "POST /funkos (SQLite)".into(),
        "≥ 2x the peer's (in-memory) req/s",
        num(o, "req/s"),
        num(peer_posts, "req/s"),
        ratio(o, peer_posts),
        o.zip(peer_posts).map(|(o, p)| o >= 2.0 * p),
        None,
    );

    let sse_ns = ns(r, "fanout", "sse");
    let sse_p99 = |n| g("fanout", OURS, "sse", Some(n), "p99");
    if let Some(&big) = sse_ns.last() {
        let (o, p) = (sse_p99(big), g("fanout", PEER, "sse", Some(big), "p99"));
        let lost = g("fanout", OURS, "sse", Some(big), "lost").unwrap_or(0.0);
        let quarter = o.zip(p).is_some_and(|(o, p)| o * 4.0 <= p);
        row(
            format!("SSE fan-out, {} subscribers", count(big)),
            "p99 ≤ 50 ms and ≤ 1/4 of the peer's",
            num(o, "ms"),
            num(p, "ms"),
            ratio(o, p),
            o.map(|o| o <= 50.0 && quarter && lost == 0.0),
            floor_forbids(r, big, 50.0)
                .filter(|_| quarter)
                .map(|why| format!("≤ 50 ms {why}; ≤ 1/4 of the peer's: met")),
        );
    }
    if sse_ns.contains(&1000) {
        let (o, p) = (sse_p99(1000), g("fanout", PEER, "sse", Some(1000), "p99"));
        row(
            "SSE fan-out, 1,000 subscribers".into(),
            "p99 ≤ 10 ms",
            num(o, "ms"),
            num(p, "ms"),
            ratio(o, p),
            o.map(|o| o <= 10.0),
            floor_forbids(r, 1000, 10.0),
        );
    }

    // Views against our own plain SSE at the same N, measured in the same run.
    for n in ns(r, "fanout", crate::scenarios::VIEW_TRANSPORT) {
        let view = |m| g("fanout", OURS, crate::scenarios::VIEW_TRANSPORT, Some(n), m);
        let sse = |m| g("fanout", OURS, "sse", Some(n), m);
        let (c, sc, p, sp) = (
            view("cpu_per_delivery"),
            sse("cpu_per_delivery"),
            view("p99"),
            sse("p99"),
        );
        let lost = view("lost").unwrap_or(0.0);
        row(
            format!(
                "SSE fan-out to {} view subscribers (a third each `category`, `maxPrice`, `q`; \
                 every write enters every view)",
                count(n)
            ),
            "a view costs no more per delivered event than the plain stream: CPU per delivery \
             ≤ 1.1x and p99 ≤ 1.25x our unfiltered SSE's at the same N",
            format!("{} CPU, p99 {}", num(c, "µs"), num(p, "ms")),
            format!("SSE: {} CPU, p99 {}", num(sc, "µs"), num(sp, "ms")),
            format!("{} / {}", ratio(c, sc), ratio(p, sp)),
            c.zip(sc)
                .zip(p.zip(sp))
                .map(|((c, sc), (p, sp))| c <= 1.1 * sc && p <= 1.25 * sp && lost == 0.0),
            None,
        );
    }

    let (o, p) = (
        g("throughput", OURS, "sse", None, "deliveries_per_s"),
        g("throughput", PEER, "sse", None, "deliveries_per_s"),
    );
    row(
        "SSE deliveries/s, 1,000 subscribers, writes as fast as they go".into(),
        "≥ 200,000/s",
        num(o, "/s"),
        num(p, "/s"),
        ratio(o, p),
        o.map(|o| o >= 200_000.0),
        None,
    );

    let sse_conn_max = series(r, "connections", OURS, "sse", "held")
        .last()
        .map(|p| p.0 as usize);
    if let Some(max) = sse_conn_max {
        let held = |s| g("connections", s, "sse", Some(max), "held");
        let kib = |s| g("connections", s, "sse", Some(max), "rss_per_connection");
        row(
            format!("idle SSE connections, {}", count(max)),
            "all held by one process; ≤ 16 KiB RSS each",
            format!(
                "{} held, {}",
                num(held(OURS), "count"),
                num(kib(OURS), "KiB")
            ),
            format!(
                "{} held, {}",
                num(held(PEER), "count"),
                num(kib(PEER), "KiB")
            ),
            ratio(kib(OURS), kib(PEER)),
            held(OURS)
                .zip(kib(OURS))
                .map(|(h, k)| h >= max as f64 && k <= 16.0),
            None,
        );
    }

    // Long-poll: the CPU of a delivery against the CPU of a plain read.
    let (o, p) = (
        g("fanout", OURS, "poll", None, "p99"),
        g("fanout", PEER, "poll", None, "p99"),
    );
    if o.is_some() {
        let idle = g("fanout", OURS, "poll", None, "idle_cpu");
        let cpu = g("fanout", OURS, "poll", None, "cpu_per_delivery");
        let get_cpu = g("crud", OURS, "get_by_id", None, "cpu_per_request");
        let cpu_ok = match (cpu, get_cpu) {
            (Some(c), Some(gc)) => c <= 2.0 * gc,
            _ => true,
        };
        row(
            "long-poll, 1,000 pollers".into(),
            "p99 ≤ 40 ms; CPU per delivery ≤ 2x a GET /funkos/{id}'s per request; idle CPU < 0.5 %",
            format!(
                "p99 {}; {} CPU per delivery; idle {}",
                num(o, "ms"),
                num(cpu, "µs"),
                num(idle, "%")
            ),
            format!(
                "peer p99 {}; GET {} CPU per request",
                num(p, "ms"),
                num(get_cpu, "µs")
            ),
            format!("CPU {}", ratio(cpu, get_cpu)),
            o.zip(idle).map(|(o, i)| o <= 40.0 && i < 0.5 && cpu_ok),
            None,
        );
    }

    let (o, p) = (
        g("replay", OURS, "sse", None, "events_per_s"),
        g("replay", PEER, "sse", None, "events_per_s"),
    );
    row(
        "replay of 100,000 events to one subscriber".into(),
        "≥ 200,000 events/s",
        num(o, "events/s"),
        num(p, "events/s"),
        ratio(o, p),
        o.map(|o| o >= 200_000.0),
        None,
    );

    let s = |server, m| g("slow", server, "sse", None, m);
    let (growth, alone, beside) = (
        s(OURS, "rss_growth_2nd_half"),
        s(OURS, "readers_p99_alone"),
        s(OURS, "readers_p99_with_slow"),
    );
    let slow = |server| {
        format!(
            "RSS max {}, 2nd half +{}; readers' p99 {} → {}",
            num(s(server, "rss_max"), "MiB"),
            num(s(server, "rss_growth_2nd_half"), "MiB"),
            num(s(server, "readers_p99_alone"), "ms"),
            num(s(server, "readers_p99_with_slow"), "ms"),
        )
    };
    row(
        "1,000 non-reading subscribers beside 100 readers, 1,000 writes/s for 30 s".into(),
        "RSS grows < 8 MiB in the 2nd half; readers' p99 ≤ 1.5x alone + 2 ms",
        slow(OURS),
        slow(PEER),
        ratio(s(OURS, "rss_max"), s(PEER, "rss_max")),
        match (growth, alone, beside) {
            (Some(g), Some(a), Some(b)) => Some(g < RSS_GROWTH_MIB && b <= readers_p99_limit(a)),
            _ => None,
        },
        None,
    );

    // WebSocket against our own SSE at the same N.
    for n in ns(r, "fanout", "ws") {
        let ws = |m| g("fanout", OURS, "ws", Some(n), m);
        let sse = |m| g("fanout", OURS, "sse", Some(n), m);
        let (c, sc, p, sp) = (
            ws("cpu_per_delivery"),
            sse("cpu_per_delivery"),
            ws("p99"),
            sse("p99"),
        );
        row(
            format!("WebSocket fan-out, {} subscribers", count(n)),
            "CPU per delivery and p99 each ≤ 1.25x our SSE's",
            format!("{} CPU, p99 {}", num(c, "µs"), num(p, "ms")),
            format!("SSE: {} CPU, p99 {}", num(sc, "µs"), num(sp, "ms")),
            format!("{} / {}", ratio(c, sc), ratio(p, sp)),
            c.zip(sc)
                .zip(p.zip(sp))
                .map(|((c, sc), (p, sp))| c <= 1.25 * sc && p <= 1.25 * sp),
            None,
        );
    }
    if let Some(n) = series(r, "connections", OURS, "ws", "rss_per_connection")
        .last()
        .map(|p| p.0 as usize)
    {
        let (o, sse) = (
            g("connections", OURS, "ws", Some(n), "rss_per_connection"),
            g("connections", OURS, "sse", Some(n), "rss_per_connection"),
        );
        row(
            format!("idle WebSockets, {}", count(n)),
            "RSS per connection ≤ our SSE's at the same count + 2 KiB",
            num(o, "KiB"),
            format!("SSE: {}", num(sse, "KiB")),
            ratio(o, sse),
            o.zip(sse).map(|(o, s)| o <= s + 2.0),
            None,
        );
    }

    // Socket.IO: latency against the peer's socket.io, CPU against our own SSE.
    for n in ns(r, "fanout", "socketio") {
        let (o, p) = (
            g("fanout", OURS, "socketio", Some(n), "p99"),
            g("fanout", PEER, "socketio", Some(n), "p99"),
        );
        let (c, sc) = (
            g("fanout", OURS, "socketio", Some(n), "cpu_per_delivery"),
            g("fanout", OURS, "sse", Some(n), "cpu_per_delivery"),
        );
        row(
            format!("Socket.IO fan-out (WebSocket), {} subscribers", count(n)),
            "p99 ≤ 1/4 of the peer's; CPU per delivery ≤ 1.5x our SSE's",
            format!("p99 {}, {} CPU", num(o, "ms"), num(c, "µs")),
            format!("peer p99 {}; SSE {} CPU", num(p, "ms"), num(sc, "µs")),
            format!("{} / {}", ratio(o, p), ratio(c, sc)),
            o.zip(p)
                .zip(c.zip(sc))
                .map(|((o, p), (c, sc))| 4.0 * o <= p && c <= 1.5 * sc),
            None,
        );
    }

    // Several instances on one PostgreSQL.
    let cluster = |k, m| g("cluster", OURS, "pg", Some(k), m);
    if let Some(posts) = cluster(2, "posts_per_s") {
        row(
            "two instances on one PostgreSQL: POST/s through both".into(),
            "≥ the peer's (in-memory) POST/s",
            num(Some(posts), "req/s"),
            num(peer_posts, "req/s"),
            ratio(Some(posts), peer_posts),
            peer_posts.map(|p| posts >= p),
            None,
        );
    }
    if let Some(p99) = cluster(2, "p99") {
        let sqlite = sse_p99(1000);
        row(
            "cross-instance fan-out: 1,000 SSE subscribers on B, writes on A".into(),
            "p99 ≤ SQLite's single-instance p99 + 5 ms",
            num(Some(p99), "ms"),
            format!("SQLite: {}", num(sqlite, "ms")),
            ratio(Some(p99), sqlite),
            sqlite.map(|s| p99 <= s + 5.0),
            None,
        );
    }
    rows
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Notes {
    /// /proc/loadavg at the start and at the end of the run.
    pub load: (String, String),
    pub runs: usize,
    pub pinned: bool,
    pub minutes: f64,
    /// Problems seen during the run.
    pub extra: Vec<String>,
}

pub fn markdown(r: &Results, m: &Machine, notes: &Notes, findings: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         funko-live against a minimal Node.js peer (`bench/peers/node`: express, socket.io and ws \
         over an in-memory list), driven by one Rust load generator in the same run. The harness \
         writes this page; every run's figures are in `bench/results/results.csv`, notes on \
         causes in `bench/NOTES.md`.\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(
        s,
        "- {} × {}, {}; Linux {}; {}; Node.js {}",
        m.nproc, m.model, m.mem, m.kernel, m.rustc, m.node
    );
    let _ = writeln!(
        s,
        "- {}; the run took {:.0} min; load average {} at the start, {} at the end (a shared \
         machine: compare ratios within one run)",
        m.date, notes.minutes, notes.load.0, notes.load.1
    );
    if notes.pinned {
        let _ = writeln!(
            s,
            "- Core 0: the server under test (the Node peer, or every funko-live instance). \
             Core 1: the generator processes, the harness, and the private PostgreSQL of the \
             instance rows (its CPU is in their table). Loopback only; each figure is the median \
             of {} runs.",
            notes.runs
        );
    } else {
        let _ = writeln!(s, "- Not pinned to cores (`--no-pin` or no `taskset`).");
    }
    let _ = writeln!(
        s,
        "\n## Commands\n\n```sh\n\
         cargo run --release -p bench -- all      # this page and bench/results/\n\
         cargo run --release -p bench -- fanout   # one scenario: crud, fanout, connections, replay, slow, floor, cluster\n\
         cargo run -p bench -- smoke              # every scenario at a tiny size (run by the test suite)\n\
         ```\n"
    );
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| scenario | target | funko-live | peer or reference | ratio | met? |\n|---|---|---|---|---|---|"
    );
    for row in targets(r) {
        if row.ours.starts_with("n/a") {
            continue;
        }
        let met = match (row.met, row.why) {
            (Some(true), _) => "**met**".to_owned(),
            (Some(false), Some(why)) => format!("**missed**: {why}"),
            (Some(false), None) => "**missed**".to_owned(),
            (None, _) => "not measured".to_owned(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            row.scenario, row.target, row.ours, row.peer, row.ratio, met
        );
    }
    let _ = writeln!(
        s,
        "\n![fan-out p99 and instances](bench/results/fanout.png)\n"
    );
    let ks = series(r, "cluster", OURS, "pg", "posts_per_s");
    if !ks.is_empty() {
        let _ = writeln!(
            s,
            "## Instances on one PostgreSQL\n\n\
             POSTs through every instance at once (32 connections in all); fan-out to 1,000 SSE \
             subscribers spread over the instances that do not take the writes (with one \
             instance, on it), 10 writes/s.\n\n\
             | instances | POST/s | fan-out p50 | fan-out p99 | PostgreSQL CPU while POSTing |\n|---|---|---|---|---|"
        );
        for (k, posts) in ks {
            let c = |m| r.get("cluster", OURS, "pg", Some(k as usize), m);
            let _ = writeln!(
                s,
                "| {k:.0} | {} | {} | {} | {} |",
                num(Some(posts), "req/s"),
                num(c("p50"), "ms"),
                num(c("p99"), "ms"),
                num(c("pg_cpu"), "% of a core"),
            );
        }
        s.push('\n');
    }
    if !findings.trim().is_empty() {
        let _ = writeln!(s, "## Findings\n\n{}", findings.trim());
    }
    if !notes.extra.is_empty() {
        let _ = writeln!(s, "\n## Problems seen during the run\n");
        for e in &notes.extra {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub model: String,
    pub mem: String,
    pub kernel: String,
    pub rustc: String,
    pub node: String,
    pub date: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1048576.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "n/a".into())
        };
        Self {
            nproc,
            model,
            mem,
            kernel,
            rustc: run("rustc", &["--version"]),
            node: run("node", &["--version"]),
            date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run's facts beside its figures, so `bench report` can redraw the page.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub machine: Machine,
    pub notes: Notes,
}

impl Results {
    /// Reads back what [`write_csv`](Self::write_csv) and [`write_curves`](Self::write_curves) wrote.
    pub fn read(csv: &Path, curves: &Path) -> anyhow::Result<Self> {
        let mut r = Results::default();
        let text =
            std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let runs = header.iter().filter(|h| h.starts_with("run")).count();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 6 + runs {
                continue;
            }
            let key = Key {
                scenario: f[0].into(),
                server: f[1].into(),
                transport: f[2].into(),
                n: f[3].parse().unwrap_or(0),
                metric: f[4].into(),
                unit: f[5].into(),
            };
            let values = f[6..6 + runs]
                .iter()
                .filter_map(|v| v.parse().ok())
                .collect();
            r.rows.push((key, values));
        }
        if let Ok(text) = std::fs::read_to_string(curves) {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split(',').collect();
                if f.len() == 5 {
                    r.curves.push(Curve::new(
                        f[0],
                        f[1],
                        f[2].parse().unwrap_or(0),
                        f[3].parse().unwrap_or(0.0),
                        f[4].parse().unwrap_or(0.0),
                    ));
                }
            }
        }
        Ok(r)
    }
}
