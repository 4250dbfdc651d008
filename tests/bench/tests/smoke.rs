//! Runs two tiny benchmark scenarios end to end against a real Roomcast cluster (the debug
//! binaries `cargo build --workspace` made, and `redis-server`) and checks only that every event
//! arrived and every dropped client got its session back. Speed is not asserted: the benchmark
//! is not a test.

use std::process::Command;

use serde_json::Value;

/// Runs `roomcast-bench ARGS --json` with the servers next to it; the parsed report.
fn bench(args: &[&str]) -> Value {
    let exe = env!("CARGO_BIN_EXE_roomcast-bench");
    let dir = std::path::Path::new(exe).parent().expect("bin dir");
    for bin in ["roomcast-gateway", "roomcast-fanout"] {
        assert!(
            dir.join(bin).exists(),
            "{}/{bin} is missing: run `cargo build --workspace` first",
            dir.display()
        );
    }
    let log_dir = std::env::temp_dir().join(format!("roomcast-bench-smoke-{}", std::process::id()));
    let output = Command::new(exe)
        .args(args)
        .args(["--json", "--target", "roomcast", "--clients", "200"])
        .arg("--log-dir")
        .arg(&log_dir)
        .output()
        .expect("roomcast-bench runs");
    assert!(
        output.status.success(),
        "roomcast-bench {args:?} failed: {}\n(logs in {})",
        String::from_utf8_lossy(&output.stderr),
        log_dir.display()
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

#[test]
fn a_tiny_fanout_delivers_every_event_once() {
    let report = bench(&[
        "fanout",
        "--rooms",
        "4",
        "--start-rate",
        "2000",
        "--max-rate",
        "2000",
        "--warmup-secs",
        "1",
        "--step-secs",
        "2",
        "--drain-secs",
        "20",
        "--refine",
        "0",
        "--half-step",
        "false",
    ]);
    let run = &report["runs"][0];
    assert_eq!(run["ramp"]["connected"], 200, "{run}");
    let step = &run["steps"][0];
    assert!(step["expected"].as_u64().unwrap_or(0) > 0, "{step}");
    assert_eq!(step["received"], step["expected"], "{step}");
    assert_eq!(step["duplicates"], 0, "{step}");
    assert_eq!(step["gaps"], 0, "{step}");
}

#[test]
fn a_tiny_recovery_storm_recovers_every_dropped_client_with_nothing_missed() {
    let report = bench(&[
        "recovery-storm",
        "--rooms",
        "4",
        "--rate",
        "1000",
        "--drop",
        "0.2",
        "--warmup-secs",
        "1",
        "--before-secs",
        "1",
        "--after-secs",
        "2",
        "--drain-secs",
        "20",
    ]);
    let run = &report["runs"][0];
    assert!(run["dropped"].as_u64().unwrap_or(0) > 0, "{run}");
    assert_eq!(run["recovered"], run["dropped"], "{run}");
    assert_eq!(run["received"], run["expected"], "{run}");
    assert_eq!(run["duplicates"], 0, "{run}");
    assert_eq!(run["gaps"], 0, "{run}");
    // The clients never dropped are measured apart (live delivery during the storm): fewer
    // events than all clients together, but some.
    let steady = run["steady_latency"]["count"].as_u64().unwrap_or(0);
    let all = run["latency"]["count"].as_u64().unwrap_or(0);
    assert!(steady > 0 && steady < all, "{run}");
}
