//! The load generator works: `herald-bench smoke` drives a real node (a few
//! hundred connections for a few seconds: broadcast, keyed, resume) and fails
//! on any lost, duplicated or reordered record or failed connection. Figures
//! come from `make bench`, never from here.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_smoke_run_loses_nothing() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["smoke", "--herald-bin", env!("CARGO_BIN_EXE_herald")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
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
