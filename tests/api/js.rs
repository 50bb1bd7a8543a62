//! Running clients nobody here wrote (Node.js packages, headless Chromium) from the tests.
//! Their packages are installed from `tests/js/package-lock.json` on first use. Missing
//! tools skip the test with a message, unless `FUNKO_REQUIRE_NODE` (or
//! `FUNKO_REQUIRE_CHROMIUM`) is set, as in CI, where they fail it.

use std::{path::PathBuf, process::Command, sync::OnceLock};

pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

/// True when Node.js and the packages are ready; installs the packages once per process.
pub fn node_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let version = Command::new("node").arg("--version").output();
        if !version.is_ok_and(|o| o.status.success()) {
            return Err("node is not installed (apt-get install nodejs npm)".to_owned());
        }
        if dependencies_installed() {
            return Ok(());
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(js_dir())
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("npm ci in tests/js failed: {other:?}")),
        }
    });
    match ready {
        Ok(()) => true,
        Err(why) if required("FUNKO_REQUIRE_NODE") => panic!("{why}"),
        Err(why) => {
            eprintln!("Node.js client tests skipped: {why}");
            false
        }
    }
}

/// Whether every dependency of `tests/js/package.json` is in `node_modules` (a checkout
/// whose packages predate a new dependency gets `npm ci` again).
fn dependencies_installed() -> bool {
    let manifest = std::fs::read_to_string(js_dir().join("package.json")).expect("package.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest).expect("package.json is JSON");
    manifest["dependencies"]
        .as_object()
        .expect("dependencies")
        .keys()
        .all(|name| {
            js_dir()
                .join("node_modules")
                .join(name)
                .join("package.json")
                .exists()
        })
}

/// The Chromium binary, when installed.
pub fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let why = "Chromium is not installed (apt-get install chromium)";
        if required("FUNKO_REQUIRE_CHROMIUM") {
            panic!("{why}");
        }
        eprintln!("browser tests skipped: {why}");
    }
    found
}

/// Runs `node tests/js/<script> <args>` to completion within `timeout`; returns stdout.
pub async fn run_node(script: &str, args: &[String], timeout: std::time::Duration) -> String {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(js_dir().join(script))
        .args(args)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(path) = chromium() {
        command.env("CHROMIUM", path);
    }
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish within {timeout:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "node {script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
