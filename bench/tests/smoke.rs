//! Runs the harness's smoke scenario (a few subscribers and events on funko-live and the Node
//! peer) and checks it completes: every event delivered, no request failed. It measures
//! nothing and asserts no timing.
//!
//! The server binary is `FUNKO_BENCH_SERVER_BIN` when set, else the harness builds
//! `target/debug/funko-live` itself.

use std::process::Command;

#[test]
fn smoke_run_of_the_harness_completes() {
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("smoke")
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("running bench smoke");
    assert!(status.success(), "bench smoke failed: {status}");
    for file in ["results.csv", "curves.csv", "fanout.png"] {
        assert!(out.path().join(file).exists(), "{file} was not written");
    }
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    for server in ["funko-live", "node-peer"] {
        for scenario in [
            "crud",
            "fanout",
            "throughput",
            "connections",
            "replay",
            "slow",
        ] {
            assert!(
                csv.lines()
                    .any(|l| l.starts_with(&format!("{scenario},{server},"))),
                "no {scenario} figures for {server} in:\n{csv}"
            );
        }
    }
    for transport in ["ws", "socketio", "poll", "sse_view"] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("fanout,funko-live,{transport},"))),
            "no {transport} fan-out in:\n{csv}"
        );
    }
    let postgres = std::path::Path::new("/usr/lib/postgresql").exists()
        || std::env::var_os("FUNKO_REQUIRE_POSTGRES").is_some();
    if postgres {
        for k in [1, 2] {
            assert!(
                csv.lines()
                    .any(|l| l.starts_with(&format!("cluster,funko-live,pg,{k},posts_per_s,"))),
                "no cluster of {k} in:\n{csv}"
            );
        }
    }
    for metric in ["write_us", "p99"] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with("floor,kernel,") && l.contains(&format!(",{metric},"))),
            "no floor {metric} in:\n{csv}"
        );
    }
}
