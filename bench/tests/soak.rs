//! Runs a short soak (about 30 s, a few faults) and checks that it completes with the
//! checker's verdict passed and its figures written. It needs root, `ip`, `nft`, `tc` and
//! PostgreSQL; without them it is skipped with a message, unless `FUNKO_REQUIRE_NETNS` or
//! `FUNKO_REQUIRE_POSTGRES` is set (as `.ci/run` does), when it fails instead.
//!
//! The server binary is `FUNKO_BENCH_SERVER_BIN` when set, else the harness builds
//! `target/debug/funko-live` itself.

use std::{os::unix::fs::MetadataExt, process::Command};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the soak cannot run here, if it cannot (and may be skipped).
fn missing() -> Option<String> {
    let postgres = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut d| d.next().is_some());
    if !postgres {
        return (std::env::var_os("FUNKO_REQUIRE_POSTGRES").is_none())
            .then(|| "PostgreSQL is not installed".to_owned());
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let tools = ["ip", "nft", "tc"].into_iter().find(|t| !have(t));
    let why = match (root, tools) {
        (false, _) => "network namespaces need root".to_owned(),
        (true, Some(t)) => format!("`{t}` is not installed"),
        (true, None) => return None,
    };
    (std::env::var_os("FUNKO_REQUIRE_NETNS").is_none()).then_some(why)
}

#[test]
fn short_soak_under_faults_loses_nothing() {
    if let Some(why) = missing() {
        eprintln!("skipping the soak: {why} (set FUNKO_REQUIRE_NETNS=1 to fail instead)");
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    let report = out.path().join("RELIABILITY.md");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "soak",
            "--debug-server",
            "--seconds",
            "30",
            "--fault-every",
            "2",
        ])
        .args([
            "--per-transport",
            "4",
            "--retention-events",
            "20",
            "--seed",
            "3",
        ])
        .arg("--report")
        .arg(&report)
        .status()
        .expect("running bench soak");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(status.success(), "bench soak failed: {status}\n{text}");
    assert!(text.contains("Result: **passed**"), "{text}");
    for transport in ["| sse |", "| poll |", "| ws |", "| socketio |"] {
        assert!(
            text.contains(transport),
            "no {transport} figures in:\n{text}"
        );
    }
    let faults = text
        .split("## Faults injected")
        .nth(1)
        .expect("a faults table")
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| Fault") && !l.starts_with("| Retention")
        })
        .count();
    // All three of the processes' lane, and most of the network's five.
    assert!(faults >= 6, "too few kinds of fault in:\n{text}");
    let pruned: u64 = text
        .lines()
        .find(|l| l.starts_with("| Events appended; pruned"))
        .and_then(|l| l.split('|').nth(2)?.split(';').nth(1)?.trim().parse().ok())
        .expect("a pruned figure");
    assert!(pruned > 0, "nothing was pruned:\n{text}");
}
