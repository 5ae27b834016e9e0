//! Clients nobody here wrote: the PyPI `httpx-sse` parser checks the wire
//! format byte for byte; Debian's Chromium runs the built-in page with a real
//! EventSource. Both are installed by `make test` (scripts/install-deps.sh).

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::*;

fn tools() -> PathBuf {
    std::env::var_os("HERALD_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

fn require(path: &std::path::Path) {
    assert!(
        path.exists(),
        "{} is missing: run `make test` (or `bash scripts/install-deps.sh test`) to install the test clients",
        path.display()
    );
}

async fn run(program: &std::path::Path, args: &[&str], cwd: Option<&std::path::Path>) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("client finishes within two minutes")
        .expect("client starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {:?} failed\nstdout: {stdout}\nstderr: {stderr}",
        program.display(),
        args
    );
    println!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_values_round_trip_byte_for_byte_through_httpx_sse() {
    let python = tools().join("bin/python");
    require(&python);
    let node = node().await;
    let base = format!("http://{}", node.local_addr());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire/sse_roundtrip.py");
    run(&python, &[script.to_str().unwrap_or_default(), &base], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_page_receives_a_record_in_headless_chromium() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require(&dir.join("node_modules/playwright-core"));
    require(std::path::Path::new("/usr/bin/chromium"));
    let node = node().await;
    let base = format!("http://{}", node.local_addr());
    run(
        std::path::Path::new("node"),
        &["page.mjs", &base],
        Some(&dir),
    )
    .await;
}
