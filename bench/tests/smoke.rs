//! The load generator works: `herald-bench smoke` drives a real node (a few
//! hundred connections for a few seconds: broadcast, keyed, resume) and fails
//! on any lost, duplicated or reordered record or failed connection. Figures
//! come from `make bench`, never from here.
//!
//! The node is the herald binary of the same build: cargo puts every binary
//! of the workspace in one directory, so it is found next to herald-bench.
//! Only a build that includes the herald package makes it (`cargo test
//! --workspace --all-targets`, or `cargo build -p herald --bin herald` first).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The smoke run must end within this, whatever the node does.
const BOUND: Duration = Duration::from_secs(300);

/// The herald binary next to herald-bench, or a failure saying how to build it.
fn herald_bin() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_herald-bench"));
    let dir = bench.parent().expect("herald-bench's path has a directory");
    let herald = dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        herald.is_file(),
        "no herald binary at {} (next to herald-bench): this test needs the herald package \
         built into the same target directory; run `cargo test --workspace --all-targets`, \
         or `cargo build -p herald --bin herald` first (with the same CARGO_TARGET_DIR and profile)",
        herald.display()
    );
    herald
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_smoke_run_loses_nothing() {
    let herald = herald_bin();
    // The workspace root, where the old test ran it (bench/nchan.conf is found from there).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("smoke")
        .arg("--herald-bin")
        .arg(&herald)
        .current_dir(root)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BOUND, out)
        .await
        .expect("the smoke run is bounded")
        .expect("herald-bench starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smoke failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("\"ok\":true") || stderr.contains("ok"),
        "a report: {stdout}{stderr}"
    );
    println!("{stdout}{stderr}");
}
