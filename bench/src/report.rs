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

    /// How many runs measured a figure (the first row of `scenario` with `metric`; 0 if none).
    pub fn runs_of(&self, scenario: &str, metric: &str) -> usize {
        self.rows
            .iter()
            .find(|(k, _)| k.scenario == scenario && k.metric == metric)
            .map_or(0, |(_, values)| values.len())
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

/// The slow-consumer target's row, and its bound on RSS growth in the run's second half.
const SLOW_ROW: &str = "1,000 non-reading subscribers, 1,000 writes/s for 30 s";
const RSS_GROWTH_MIB: f64 = 8.0;

/// The slow-consumer rule for "readers' p99 unchanged": the most the readers' p99 beside the
/// non-readers may be, given their p99 alone.
fn readers_p99_limit(alone_ms: f64) -> f64 {
    1.5 * alone_ms + 2.0
}
const OURS: &str = "funko-live";
const PEER: &str = "node-peer";
/// The kernel-floor rows (no server).
pub const KERNEL: &str = "kernel";

/// fanout.png: SSE publish-to-deliver p99 (solid) and p50 (thin) vs N, ours vs the peer.
pub fn fanout_chart(results: &Results, path: &Path) -> anyhow::Result<bool> {
    register_font();
    let series = |scenario: &str, transport: &str, server: &str, metric: &str| {
        let mut pts: Vec<(f64, f64)> = results
            .rows
            .iter()
            .filter(|(k, _)| {
                k.scenario == scenario
                    && k.transport == transport
                    && k.server == server
                    && k.metric == metric
            })
            .map(|(k, v)| (k.n as f64, median(v).max(0.01)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let fanout = |server: &'static str, metric: &'static str| {
        (
            format!("{server} {metric}"),
            series("fanout", "sse", server, metric),
        )
    };
    // The kernel floor's p99: a server with no code of its own, read by the same generator.
    let floor = (
        "kernel floor p99 (no server code)".to_owned(),
        series("floor", "tcp", KERNEL, "p99"),
    );
    let lines = [
        (fanout(OURS, "p99"), RGBColor(200, 60, 30), 3),
        (fanout(PEER, "p99"), RGBColor(40, 90, 200), 3),
        (floor, RGBColor(90, 90, 90), 2),
        (fanout(OURS, "p50"), RGBColor(200, 60, 30), 1),
        (fanout(PEER, "p50"), RGBColor(40, 90, 200), 1),
    ];
    let data: Vec<_> = lines
        .into_iter()
        .map(|((label, pts), color, width)| (label, color, width, pts))
        .collect();
    let all: Vec<(f64, f64)> = data.iter().flat_map(|d| d.3.clone()).collect();
    if all.is_empty() {
        return Ok(false);
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "SSE fan-out: publish-to-deliver latency vs subscribers (median of runs)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            ((xmin * 0.7)..(xmax * 1.4)).log_scale(),
            ((ymin * 0.5).max(0.01)..(ymax * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("subscribers (N)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .y_desc("latency, ms (log)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (label, color, width, pts) in data {
        if pts.is_empty() {
            continue;
        }
        let style = color.stroke_width(width);
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(true)
}

/// One line of the issue's target table.
pub struct TargetRow {
    pub scenario: &'static str,
    pub target: &'static str,
    pub ours: String,
    pub peer: String,
    pub ratio: String,
    pub met: Option<bool>,
}

fn num(x: Option<f64>, unit: &str) -> String {
    let text = match x {
        Some(v) if v.is_finite() && unit == "count" => return format!("{v:.0}"),
        Some(v) if v.is_finite() => {
            if v >= 100.0 {
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

/// `a / b` as "N.Nx good", or as "N.Nx bad" of the inverse when below 1.
fn ratio_word(a: Option<f64>, b: Option<f64>, good: &str, bad: &str) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() => {
            let x = a / b;
            if x >= 1.0 {
                format!("{x:.1}x {good}")
            } else {
                format!("{:.1}x {bad}", 1.0 / x)
            }
        }
        _ => "n/a".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        // Two decimals: a ratio near a threshold (1.97x against 2x) must not print as met.
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

pub struct Thresholds {
    pub fanout_big: usize,
    pub fanout_small: usize,
    pub conn_max: usize,
    pub replay_k: usize,
}

/// Why an absolute latency target cannot be met on this machine, when the kernel floor
/// measured in the same run says so: a server with no code of its own and no commit would
/// already miss it (its frame p99 at the nearest socket count not above `n` is over `limit`).
pub fn floor_forbids(r: &Results, n: usize, limit_ms: f64) -> Option<String> {
    let (floor_n, p99) = r
        .rows
        .iter()
        .filter(|(k, _)| k.scenario == "floor" && k.metric == "p99" && k.n <= n)
        .filter_map(|(k, _)| Some((k.n, r.get("floor", KERNEL, "tcp", Some(k.n), "p99")?)))
        .max_by_key(|(floor_n, _)| *floor_n)?;
    (p99 > limit_ms).then(|| {
        format!("impossible here: the kernel floor alone has p99 {p99:.1} ms at {floor_n} sockets")
    })
}

/// Why "readers' p99 unchanged" cannot be met on this machine, when the slow-consumer floor
/// measured in the same run says so: with no server code, no commit and no way to tell the
/// readers apart, the kernel's own work for the non-readers already raises the readers' p99
/// by more than the rule lets ours rise ([`readers_p99_limit`] of ours alone, minus ours alone).
pub fn slow_floor_forbids(r: &Results) -> Option<String> {
    let floor = |metric| r.get("floor", KERNEL, "tcp", None, metric);
    let (alone, beside) = (floor("slow_p99_alone")?, floor("slow_p99_beside")?);
    let ours = r.get("slow", OURS, "sse", None, "readers_p99_alone")?;
    let allowed = readers_p99_limit(ours) - ours;
    (beside - alone > allowed).then(|| {
        format!(
            "readers' p99 impossible here: with no server code (kernel floor) it goes \
             {alone:.1} → {beside:.1} ms beside the non-readers, +{:.1} ms, more than the \
             +{allowed:.1} ms the rule allows ours",
            beside - alone
        )
    })
}

pub fn targets(r: &Results, t: &Thresholds) -> Vec<TargetRow> {
    let g = |s: &str, server: &str, tr: &str, n: Option<usize>, m: &str| r.get(s, server, tr, n, m);
    let mut rows = Vec::new();

    let (o, p) = (
        g("crud", OURS, "get_by_id", None, "requests_per_s"),
        g("crud", PEER, "get_by_id", None, "requests_per_s"),
    );
    rows.push(TargetRow {
        scenario: "GET /funkos/{id}",
        target: "≥ 5x the peer's req/s",
        ours: num(o, "req/s"),
        peer: num(p, "req/s"),
        ratio: ratio(o, p),
        met: o.zip(p).map(|(o, p)| o >= 5.0 * p),
    });

    let (o, p) = (
        g("crud", OURS, "post", None, "requests_per_s"),
        g("crud", PEER, "post", None, "requests_per_s"),
    );
    rows.push(TargetRow {
        scenario: "POST /funkos (durable, SQLite)",
        target: "≥ 2x the peer's (in-memory) req/s",
        ours: num(o, "req/s"),
        peer: num(p, "req/s"),
        ratio: ratio(o, p),
        met: o.zip(p).map(|(o, p)| o >= 2.0 * p),
    });

    let n = t.fanout_big;
    let (o, p) = (
        g("fanout", OURS, "sse", Some(n), "p99"),
        g("fanout", PEER, "sse", Some(n), "p99"),
    );
    let lost = g("fanout", OURS, "sse", Some(n), "lost").unwrap_or(0.0);
    rows.push(TargetRow {
        scenario: if n == 10_000 {
            "SSE fan-out to 10,000 subscribers"
        } else {
            "SSE fan-out, largest N"
        },
        target: "p99 ≤ 50 ms and ≤ 1/4 of the peer's p99",
        ours: format!("p99 {}", num(o, "ms")),
        peer: format!("p99 {}", num(p, "ms")),
        ratio: ratio_word(p, o, "lower", "higher"),
        met: o
            .zip(p)
            .map(|(o, p)| o <= 50.0 && o * 4.0 <= p && lost == 0.0),
    });

    let n = t.fanout_small;
    let (o, p) = (
        g("fanout", OURS, "sse", Some(n), "p99"),
        g("fanout", PEER, "sse", Some(n), "p99"),
    );
    rows.push(TargetRow {
        scenario: "SSE fan-out to 1,000 subscribers",
        target: "p99 ≤ 10 ms",
        ours: format!("p99 {}", num(o, "ms")),
        peer: format!("p99 {}", num(p, "ms")),
        ratio: ratio_word(p, o, "lower", "higher"),
        met: o.map(|o| o <= 10.0),
    });

    let (o, p) = (
        g("throughput", OURS, "sse", None, "deliveries_per_s"),
        g("throughput", PEER, "sse", None, "deliveries_per_s"),
    );
    rows.push(TargetRow {
        scenario: "deliveries/s, 1,000 subscribers, writes as fast as they go",
        target: "≥ 200,000/s on the server's one core",
        ours: num(o, "/s"),
        peer: num(p, "/s"),
        ratio: ratio(o, p),
        met: o.map(|o| o >= 200_000.0),
    });

    let (oh, ph) = (
        g("connections", OURS, "sse", None, "held"),
        g("connections", PEER, "sse", None, "held"),
    );
    let (ok, pk) = (
        g("connections", OURS, "sse", None, "rss_per_connection"),
        g("connections", PEER, "sse", None, "rss_per_connection"),
    );
    rows.push(TargetRow {
        scenario: "idle SSE connections",
        target: "19,000 held by one process; ≤ 16 KiB RSS each",
        ours: format!("{} held, {}", num(oh, ""), num(ok, "KiB/conn")),
        peer: format!("{} held, {}", num(ph, ""), num(pk, "KiB/conn")),
        ratio: ratio_word(pk, ok, "less memory", "more memory"),
        met: oh.zip(ok).map(|(h, k)| h >= t.conn_max as f64 && k <= 16.0),
    });

    let (o, p) = (
        g("fanout", OURS, "poll", None, "p99"),
        g("fanout", PEER, "poll", None, "p99"),
    );
    let (oc, pc) = (
        g("fanout", OURS, "poll", None, "idle_cpu"),
        g("fanout", PEER, "poll", None, "idle_cpu"),
    );
    rows.push(TargetRow {
        scenario: "long-poll, 1,000 pollers",
        target: "p99 write-to-answer ≤ 50 ms; no CPU while idle (< 0.5 % of a core)",
        ours: format!("p99 {}, idle {}", num(o, "ms"), num(oc, "% CPU")),
        peer: format!("p99 {}, idle {}", num(p, "ms"), num(pc, "% CPU")),
        ratio: ratio_word(p, o, "lower", "higher"),
        met: o.zip(oc).map(|(o, c)| o <= 50.0 && c < 0.5),
    });

    let (o, p) = (
        g("replay", OURS, "sse", None, "events_per_s"),
        g("replay", PEER, "sse", None, "events_per_s"),
    );
    rows.push(TargetRow {
        scenario: if t.replay_k == 100_000 {
            "replay of 100,000 events"
        } else {
            "replay"
        },
        target: "≥ 200,000 events/s to one subscriber",
        ours: num(o, "events/s"),
        peer: num(p, "events/s"),
        ratio: ratio(o, p),
        met: o.map(|o| o >= 200_000.0),
    });

    let (oa, ob) = (
        g("slow", OURS, "sse", None, "readers_p99_alone"),
        g("slow", OURS, "sse", None, "readers_p99_with_slow"),
    );
    let (pa, pb) = (
        g("slow", PEER, "sse", None, "readers_p99_alone"),
        g("slow", PEER, "sse", None, "readers_p99_with_slow"),
    );
    let (og, pg) = (
        g("slow", OURS, "sse", None, "rss_growth_2nd_half"),
        g("slow", PEER, "sse", None, "rss_growth_2nd_half"),
    );
    let (om, pm) = (
        g("slow", OURS, "sse", None, "rss_max"),
        g("slow", PEER, "sse", None, "rss_max"),
    );
    // Where the readers' tail comes from: the steady state after the first second, and how
    // much of the stream one non-reader's socket took before writes to it stalled.
    let settled = |kind: &str| {
        let (a, b, held, held_s) = (
            g("slow", kind, "sse", None, "readers_p99_settled_alone"),
            g("slow", kind, "sse", None, "readers_p99_settled"),
            g("slow", kind, "sse", None, "nonreader_held"),
            g("slow", kind, "sse", None, "nonreader_held_s"),
        );
        format!(
            "; after the 1st second {} → {}; each non-reader took {} ({})",
            num(a, "ms"),
            num(b, "ms"),
            num(held, "KiB"),
            num(held_s, "s of the stream"),
        )
    };
    rows.push(TargetRow {
        scenario: SLOW_ROW,
        target: "RSS bounded (grows < 8 MiB in the 2nd half); readers' p99 unchanged (≤ 1.5x alone + 2 ms)",
        ours: format!("RSS max {}, 2nd-half +{}; readers p99 {} → {}{}", num(om, "MiB"), num(og, "MiB"), num(oa, "ms"), num(ob, "ms"), settled(OURS)),
        peer: format!("RSS max {}, 2nd-half +{}; readers p99 {} → {}{}", num(pm, "MiB"), num(pg, "MiB"), num(pa, "ms"), num(pb, "ms"), settled(PEER)),
        ratio: ratio_word(pm, om, "less peak RSS", "more peak RSS"),
        met: match (og, oa, ob) {
            (Some(g), Some(a), Some(b)) => Some(g < RSS_GROWTH_MIB && b <= readers_p99_limit(a)),
            _ => None,
        },
    });
    rows
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

/// Medians of a curve per x, per server.
fn curve_medians(r: &Results, chart: &str, server: &str, bucket: f64) -> Vec<(f64, f64)> {
    let mut by_x: Vec<(f64, Vec<f64>)> = Vec::new();
    for c in r
        .curves
        .iter()
        .filter(|c| c.chart == chart && c.server == server)
    {
        let x = (c.x / bucket).round() * bucket;
        match by_x.iter_mut().find(|(bx, _)| *bx == x) {
            Some((_, v)) => v.push(c.y),
            None => by_x.push((x, vec![c.y])),
        }
    }
    by_x.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_x.into_iter().map(|(x, v)| (x, median(&v))).collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Notes {
    /// /proc/loadavg at the start and at the end of the run.
    pub load: (String, String),
    pub runs: usize,
    pub pinned: bool,
    pub plan: String,
    pub minutes: f64,
    pub extra: Vec<String>,
}

pub fn markdown(r: &Results, t: &Thresholds, m: &Machine, notes: &Notes) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "funko-live against a minimal Node.js peer (`bench/peers/node`: express + socket.io + ws, SSE and \
         long-poll over an in-memory Funko list), driven by the same Rust load generator (`bench/`) in the \
         same run. This page is written by the harness; do not edit it by hand.\n"
    );
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "- CPU: {} × {}", m.nproc, m.model);
    let _ = writeln!(s, "- Memory: {}", m.mem);
    let _ = writeln!(
        s,
        "- Kernel: Linux {}; {}; Node.js {}",
        m.kernel, m.rustc, m.node
    );
    let _ = writeln!(
        s,
        "- Measured: {} (the whole run took {:.1} min)",
        m.date, notes.minutes
    );
    let _ = writeln!(
        s,
        "- Load average (1, 5, 15 min) at the start: {}; at the end: {}. Anything else running on the \
         machine competes with the pinned processes for their cores.",
        notes.load.0, notes.load.1
    );
    let _ = writeln!(
        s,
        "- Layout: {}; every figure is the median of {} runs; servers on 127.0.0.1, all traffic on loopback.\n",
        if notes.pinned {
            "each server alone on core 0 (`taskset -c 0`), every generator process on core 1 (`taskset -c 1`)"
        } else {
            "NOT pinned (taskset missing or --no-pin)"
        },
        notes.runs
    );
    let _ = writeln!(s, "## Commands\n");
    let _ = writeln!(s, "```sh");
    let _ = writeln!(
        s,
        "cargo run --release -p bench -- all          # everything below: ~{:.0} min on this machine",
        notes.minutes.ceil()
    );
    let _ = writeln!(
        s,
        "cargo run --release -p bench -- crud         # or fanout, connections, replay, slow, floor"
    );
    let _ = writeln!(
        s,
        "cargo run -p bench -- smoke                  # a few subscribers and events, both servers, seconds"
    );
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "The harness builds `target/release/funko-live` (or takes `--server-bin PATH` / `FUNKO_BENCH_SERVER_BIN`), \
         installs the peer with `npm ci` into a temp copy of `bench/peers/node`, starts each server as its own process with a fresh temp data dir \
         for every scenario and run, and writes `bench/results/results.csv` (every run and the median), \
         `bench/results/curves.csv` (RSS curves), `bench/results/fanout.png` and this page. Plan: {}.\n",
        notes.plan
    );
    let _ = writeln!(s, "## Targets (issue 7)\n");
    let _ = writeln!(
        s,
        "| scenario | target | funko-live | node peer | ratio | met? |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for row in targets(r, t) {
        let forbids = match row.scenario {
            "SSE fan-out to 10,000 subscribers" => floor_forbids(r, 10_000, 50.0).map(|why| {
                let p99 = |server| r.get("fanout", server, "sse", Some(10_000), "p99");
                let quarter = p99(OURS).zip(p99(PEER)).is_some_and(|(o, p)| o * 4.0 <= p);
                let quarter = if quarter { "met" } else { "missed" };
                format!("≤ 50 ms {why}; ≤ 1/4 of the peer's p99: {quarter}")
            }),
            "SSE fan-out to 1,000 subscribers" => floor_forbids(r, 1_000, 10.0),
            SLOW_ROW => r
                .get("slow", OURS, "sse", None, "rss_growth_2nd_half")
                .filter(|growth| *growth < RSS_GROWTH_MIB)
                .and(slow_floor_forbids(r))
                .map(|why| format!("{why}; RSS bounded: met")),
            _ => None,
        };
        let met = match (row.met, forbids) {
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
        "\n![SSE fan-out latency vs N](bench/results/fanout.png)\n"
    );
    // Per N: the median per-write cost, and how the page describes that N's floor.
    let floor: Vec<(usize, f64, String)> = r
        .rows
        .iter()
        .filter(|(k, _)| k.scenario == "floor" && k.metric == "write_us")
        .filter_map(|(k, _)| {
            let get = |m: &str| r.get("floor", KERNEL, "tcp", Some(k.n), m);
            let (n, median, best) = (k.n, get("write_us")?, get("write_us_best")?);
            let phases = match (get("write_us_quick"), get("write_us_later")) {
                (Some(quick), Some(later)) => {
                    format!(", {quick:.1} in the quick-ACK rounds and {later:.1} after")
                }
                _ => String::new(),
            };
            let p99 = get("p99").map_or(String::new(), |p| format!(", frame p99 {p:.1} ms"));
            let step = format!("{median:.1} µs at {n} sockets (best round {best:.1}{phases}{p99})");
            Some((n, median, step))
        })
        .collect();
    let floor_runs = r.runs_of("floor", "write_us");
    if let Some(&(n, median, _)) = floor.last() {
        let steps: Vec<&str> = floor.iter().map(|(.., step)| step.as_str()).collect();
        let _ = writeln!(
            s,
            "**Kernel floor** (`bench floor`: a thread on core 0 plays a server with no code of \
             its own for N subscribers, the fan-out's own generator processes on core 1, which \
             connect with `GET /events` and read, parse and time each frame as they do a \
             server's; it answers them with an SSE response head, then writes one ~{}-byte event \
             frame to each in one `write()` a round, in rounds shaped like the SSE fan-out (as \
             many as its events, at its rate); medians of {} runs of the per-write cost of the \
             median round and of the frame p99, each frame's time from the start of its round to \
             its receipt, over every round): {}. \
             A receiver acknowledges the first 16 segments of a stream (and of one idle past its \
             retransmission timeout) at once; on loopback those quick ACKs are built and taken in \
             on the writing core, inside its `write`, so the first 16 rounds cost more. \
             On loopback the writing core also runs the receiver's TCP input and wake-up, so this \
             is what one delivery costs before any server code runs, and the frame p99 is the \
             fan-out p99 of a server with no code of its own and no commit: one event to 10,000 \
             subscribers needs at least 10,000 × {median:.1} µs ≈ {:.0} ms of the server's core \
             here (per-write cost at {n} sockets), and one to {} subscribers at least {:.1} ms.\n",
            400,
            floor_runs,
            steps.join(", "),
            10_000.0 * median / 1000.0,
            floor[0].0,
            floor[0].0 as f64 * floor[0].1 / 1000.0,
        );
    }
    let slow = |metric| r.get("floor", KERNEL, "tcp", None, metric);
    if let (Some(alone), Some(beside), Some(settled), Some(held)) = (
        slow("slow_p99_alone"),
        slow("slow_p99_beside"),
        slow("slow_p99_settled"),
        slow("slow_held"),
    ) {
        let runs = r.runs_of("floor", "slow_p99_beside");
        let _ = writeln!(
            s,
            "**Slow-consumer floor** (`bench floor`, median of {runs} runs): the slow scenario's \
             readers and non-readers with no server: a thread on core 0 writes each 400-byte \
             frame that has come due (1,000 a second) to every socket in one non-blocking \
             `write` per round, in a shuffled order that does not know who reads, and leaves a \
             socket that did not take its write to epoll until it has room \
             (`TCP_NOTSENT_LOWAT` as funko-live sets it); the non-readers are held by a thread \
             of their own on core 1 that waits in epoll and never reads, as a generator \
             process does. The readers' p99 goes {alone:.1} → {beside:.1} ms beside the \
             non-readers ({settled:.1} ms after the first second): each non-reader's socket \
             takes {held:.0} KiB before a write to it blocks, and until then nothing on the \
             socket tells it from a reader, so every round goes to all of them.\n"
        );
    }
    if !notes.extra.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for e in &notes.extra {
            let _ = writeln!(s, "- {e}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## All figures (medians)\n");
    let _ = writeln!(
        s,
        "| scenario | transport | N | metric | funko-live | node peer |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let mut seen: Vec<(String, String, usize, String)> = Vec::new();
    for (k, _) in r.rows.iter().filter(|(k, _)| k.scenario != "floor") {
        let id = (
            k.scenario.clone(),
            k.transport.clone(),
            k.n,
            k.metric.clone(),
        );
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let o = r.get(&k.scenario, OURS, &k.transport, Some(k.n), &k.metric);
        let p = r.get(&k.scenario, PEER, &k.transport, Some(k.n), &k.metric);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            k.scenario,
            k.transport,
            k.n,
            k.metric,
            num(o, &k.unit),
            num(p, &k.unit)
        );
    }
    let _ = writeln!(s, "\n## Server RSS curves (medians of runs)\n");
    for (chart, title, xname, bucket) in [
        (
            "connections",
            "Idle SSE connections",
            "connections held",
            1.0,
        ),
        (
            "slow",
            "1,000 non-reading subscribers while 1,000 writes/s go on",
            "seconds",
            5.0,
        ),
    ] {
        let o = curve_medians(r, chart, OURS, bucket);
        let p = curve_medians(r, chart, PEER, bucket);
        if o.is_empty() && p.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title}:\n");
        let _ = writeln!(s, "| {xname} | funko-live RSS | node peer RSS |");
        let _ = writeln!(s, "|---|---|---|");
        let mut xs: Vec<f64> = o.iter().chain(&p).map(|c| c.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for x in xs {
            let f = |v: &[(f64, f64)]| {
                v.iter()
                    .find(|c| c.0 == x)
                    .map(|c| format!("{:.1} MiB", c.1 / 1048576.0))
                    .unwrap_or_default()
            };
            let _ = writeln!(s, "| {x:.0} | {} | {} |", f(&o), f(&p));
        }
        s.push('\n');
    }
    s
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
    pub fanout_big: usize,
    pub fanout_small: usize,
    pub conn_max: usize,
    pub replay_k: usize,
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
