//! `RELIABILITY.md`: what a soak survived, as figures, written by the harness.

use std::{collections::BTreeMap, fmt::Write};

use super::{Fault, FaultRecord, check::Verdict};

pub struct Run {
    pub command: String,
    pub instances: usize,
    /// Writing and faults, seconds.
    pub seconds: f64,
    /// Including the final catch-up and the check.
    pub total_seconds: f64,
    pub retention_events: u64,
    /// Writes per second attempted, all writers.
    pub write_rate: f64,
    /// How long the final write took, every fault over.
    pub fence_ms: f64,
    pub faults: Vec<FaultRecord>,
    /// Anything that did not go as planned.
    pub notes: Vec<String>,
}

pub fn summary(v: &Verdict) -> String {
    format!(
        "writes acknowledged {}, events in the log {} ({} pruned), losses {}, duplicates {}, \
         reorderings {}, wrong deliveries {}, unjustified resets {}, rows mismatched {}",
        v.acked,
        v.log_events,
        v.pruned,
        v.losses,
        v.duplicates,
        v.reorders,
        v.wrong,
        v.unjustified_resets,
        v.rows_mismatched
    )
}

pub fn markdown(run: &Run, v: &Verdict) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Reliability\n");
    let _ = writeln!(
        md,
        "Written by `{}` (the `bench` crate's `soak`; see docs/soak.md). \
         {} funko-live instances on one private PostgreSQL (`synchronous_commit = on`), each in its \
         own network namespace; one writer per instance over REST; subscribers on SSE, long-poll, \
         `/ws` and Socket.IO (plain, `entity`, `entity`+`types` and the views `category`, `q`, \
         `minPrice`/`maxPrice`), each reconnecting by cursor to a random instance whenever it is \
         cut off or hears nothing for 6 s (Socket.IO by `pid`/`offset`). Faults are injected at \
         random in two overlapping lanes (processes; network), and the log keeps only the newest \
         {} events, pruned every second. After the faults, one last write every filter sees; \
         every subscriber must reach it. A trigger keeps every event ever appended and when each \
         was pruned, and the checker proves the promise against that.\n",
        run.command, run.instances, run.retention_events
    );
    let verdict = if v.ok() && run.notes.is_empty() {
        "**passed**"
    } else {
        "**FAILED**"
    };
    let _ = writeln!(md, "Result: {verdict}.\n");
    let _ = writeln!(md, "| Figure | Value |\n|---|---|");
    let rows: Vec<(String, String)> = vec![
        (
            "Duration (writes and faults; whole run)".into(),
            format!("{:.0} s; {:.0} s", run.seconds, run.total_seconds),
        ),
        (
            "Writes attempted per second (all writers)".into(),
            format!("{:.0}", run.write_rate),
        ),
        ("Writes acknowledged".into(), v.acked.to_string()),
        (
            "The final write, every fault over, took".into(),
            format!("{:.1} s", run.fence_ms / 1000.0),
        ),
        (
            "Writes without an answer (or 5xx); of them committed".into(),
            format!("{}; {}", v.unknown, v.unknown_committed),
        ),
        ("Writes refused (4xx)".into(), v.refused.to_string()),
        (
            "Events appended; pruned during the run".into(),
            format!("{}; {}", v.log_events, v.pruned),
        ),
        (
            "Rows checked against their last event".into(),
            v.rows_checked.to_string(),
        ),
        (
            "Resets, all justified by pruning past the cursor; events they skipped".into(),
            format!("{}; {}", v.justified_resets, v.skipped_by_resets),
        ),
    ];
    for (k, val) in rows {
        let _ = writeln!(md, "| {k} | {val} |");
    }
    let _ = writeln!(md, "\n## Found\n\n| Kind | Count |\n|---|---|");
    for (k, n) in [
        (
            "Acknowledged writes missing from the log, or events missing for a subscriber",
            v.losses,
        ),
        (
            "Duplicates (a write twice in the log, an event twice to a subscriber)",
            v.duplicates,
        ),
        ("Reorderings", v.reorders),
        (
            "Deliveries outside the filter, with a wrong view tag, or from no write",
            v.wrong,
        ),
        (
            "Resets without pruning past the cursor",
            v.unjustified_resets,
        ),
        ("Rows that differ from their last event", v.rows_mismatched),
    ] {
        let _ = writeln!(md, "| {k} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Per transport\n\nLag: from the append (the trigger's clock, in the writing \
         transaction) to receipt, including any time the subscriber was cut off or away. Catch-up: from a subscriber losing its connection (or finding \
         it silent for 6 s) until it held every event it should see that had committed by then.\n"
    );
    let _ = writeln!(
        md,
        "| Transport | Subscribers | Events delivered | Reconnections | Long absences | Socket.IO recoveries | Resets | Longest lag | Longest catch-up |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (name, t) in &v.transports {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {:.1} s | {:.1} s |",
            t.subscribers,
            t.delivered,
            t.reconnects,
            t.aways,
            if *name == "socketio" {
                t.recovered.to_string()
            } else {
                "-".into()
            },
            t.resets,
            t.max_lag_ms / 1000.0,
            t.max_catch_up_ms / 1000.0
        );
    }
    let mut by_kind: BTreeMap<Fault, (usize, f64)> = BTreeMap::new();
    for f in &run.faults {
        let e = by_kind.entry(f.fault).or_default();
        e.0 += 1;
        e.1 = e.1.max(f.held_ms);
    }
    let _ = writeln!(
        md,
        "\n## Faults injected\n\n| Fault | Count | Longest |\n|---|---|---|"
    );
    for (fault, (n, longest)) in &by_kind {
        let _ = writeln!(md, "| {} | {n} | {:.1} s |", fault.name(), longest / 1000.0);
    }
    let _ = writeln!(
        md,
        "| Retention pruning (events pruned, above) | every second | - |"
    );
    if !v.problems.is_empty() || !run.notes.is_empty() {
        let _ = writeln!(md, "\n## Problems\n");
        for p in run.notes.iter().chain(&v.problems) {
            let _ = writeln!(md, "- {p}");
        }
    }
    md
}
