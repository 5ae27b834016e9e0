//! `smoke`: a few hundred connections for a few seconds against one herald
//! node: broadcast, keyed and resume in turn on the same server; exits
//! non-zero on any lost, duplicated or reordered record or failed
//! connection. `make bench-smoke` and bench/tests/smoke.rs run it.
//!
//! It owns the small fixed parameters and the strict verdict; the parts are
//! the ordinary flows and resume. It does not measure anything worth
//! quoting (debug builds, a busy machine). The decision to know: unlike the
//! other scenarios it neither waits for a quiet machine nor tolerates an
//! overload note: every part must be `ok` with nothing failed, lost or
//! closed, and its last line on stdout is one JSON summary that tests read.

use serde_json::{json, Value};

use crate::engine::{print_problems, run_flow, write_result, Flow};
use crate::scenarios::resume::resume_on;
use crate::servers::Server;
use crate::{FlowArgs, ResumeArgs, SmokeArgs};

/// Worker processes when --workers does not say.
const WORKERS: usize = 2;
/// Each part's one step, seconds.
const STEP_SECONDS: f64 = 2.0;
/// The flows' settings: 100-byte records, a short warm-up and settle, and a
/// p99 limit no debug build on a busy machine misses (order and loss are
/// what count here).
fn knobs() -> FlowArgs {
    FlowArgs {
        size: 100,
        warmup: 0.3,
        p99_limit_ms: 5_000.0,
        settle: 0.5,
        linger_ms: 0,
        encoding: herald_bench::encoding::Encoding::Raw,
    }
}

/// Runs the parts; Ok(false) if any failed.
pub async fn smoke(a: SmokeArgs) -> anyhow::Result<bool> {
    let server = Server::start(&a.server, 1).await?;
    let outcome = smoke_on(&server, &a).await;
    server.stop().await;
    let results = outcome?;
    let mut ok = true;
    for r in &results {
        let strict = r["ok"].as_bool() == Some(true)
            && r["failed"].as_u64() == Some(0)
            && r["lost"].as_u64().unwrap_or(0) == 0
            && r["closed"].as_u64().unwrap_or(0) == 0;
        let detail = if r["scenario"] == "resume" {
            format!(
                "{} of {} live after {} ms, {} replayed",
                r["live"], r["connected"], r["all_live_ms"], r["replayed"]
            )
        } else {
            format!(
                "{} delivered of {}, lost {}, closed {}",
                r["delivered"], r["expected"], r["lost"], r["closed"]
            )
        };
        println!(
            "smoke {}: {} ({} clients, {detail}; gaps {}, dups {}, reorders {}, failed connections {})",
            r["scenario"].as_str().unwrap_or(""),
            if strict { "ok" } else { "FAILED" },
            r["clients"],
            r["gaps"],
            r["dups"],
            r["reorders"],
            r["failed"],
        );
        print_problems(r);
        ok &= strict;
    }
    // One machine-readable line last, for tests that run the smoke.
    let summary: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "scenario": r["scenario"], "ok": r["ok"], "clients": r["clients"],
                "failed": r["failed"], "lost": r["lost"], "closed": r["closed"],
                "gaps": r["gaps"], "dups": r["dups"], "reorders": r["reorders"],
                "live": r["live"], "problems": r["problems"],
            })
        })
        .collect();
    println!(
        "{}",
        json!({"scenario": "smoke", "ok": ok, "parts": summary})
    );
    write_result(
        &a.run,
        &json!({"scenario": "smoke", "ok": ok, "parts": results}),
    )?;
    Ok(ok)
}

async fn smoke_on(server: &Server, a: &SmokeArgs) -> anyhow::Result<Vec<Value>> {
    let n = a.clients.max(2);
    let mut run = a.run.clone();
    run.workers = Some(run.workers.unwrap_or(WORKERS));
    let knobs = knobs();
    let mut out = Vec::new();
    let hot = "smoke-hot";
    let flow = Flow::shared(
        "broadcast",
        &knobs,
        server.path(Some(hot))?,
        vec![hot.into()],
        n,
    )
    .steps(vec![50.0], STEP_SECONDS);
    out.push(run_flow(server, flow, &run).await?);
    let keys: Vec<String> = (0..n / 2).map(|i| format!("smoke-k{i}")).collect();
    let flow = Flow::per_key("keyed", &knobs, server, keys)?.steps(vec![200.0], STEP_SECONDS);
    out.push(run_flow(server, flow, &run).await?);
    if server.is_herald() {
        let r = ResumeArgs {
            server: a.server.clone(),
            run,
            clients: n / 2,
            keys: (n / 10).max(1),
            rate: 100.0,
            behind: 1.0,
            size: 100,
            timeout: 30.0,
        };
        out.push(resume_on(server, &r, "smoke-r").await?);
    }
    Ok(out)
}
