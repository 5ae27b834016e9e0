//! `decode`: what decoding costs herald per record, on one core, against
//! the plain path. The plain path is what herald does with every record's
//! value anyway: copy it into its SSE frame (`put_data`). A decoded record
//! adds the decoder (herald's own, through `herald::formats`) and frames the
//! JSON instead. 200-byte-class trade records ([`herald_bench::encoding`]),
//! a few thousand distinct ones, timed over rounds; medians reported.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use herald::formats::{Kind, Standalone};
use herald::sse::put_data;
use herald_bench::encoding::{protobuf_body, write_encoded, Encoding, AVRO_SCHEMA, PROTO_SCHEMA};
use herald_bench::record::make_value;
use serde_json::{json, Value};

use crate::engine::{quiet, write_result};
use crate::DecodeArgs;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Nanoseconds per record of `f` over `inputs`, one value per round.
fn time_rounds(rounds: usize, inputs: &[Vec<u8>], mut f: impl FnMut(&[u8]) -> usize) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            let mut total = 0usize;
            for input in inputs {
                total = total.wrapping_add(f(input));
            }
            black_box(total);
            started.elapsed().as_nanos() as f64 / inputs.len().max(1) as f64
        })
        .collect()
}

pub async fn decode(a: DecodeArgs) -> anyhow::Result<Value> {
    let machine_before = quiet(&a.run).await;
    let avro = Standalone::compile(Kind::Avro, AVRO_SCHEMA).map_err(anyhow::Error::msg)?;
    let proto = Standalone::compile(Kind::Protobuf, PROTO_SCHEMA).map_err(anyhow::Error::msg)?;
    let json_schema =
        Standalone::compile(Kind::Json, r#"{"type":"object"}"#).map_err(anyhow::Error::msg)?;
    let ts = 1_764_579_000_000_000;
    let n = a.records.max(1) as u64;
    let plain: Vec<Vec<u8>> = (0..n).map(|i| make_value(ts, 0, i, a.size)).collect();
    let avro_in: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = Vec::new();
            write_encoded(&mut v, Encoding::Avro, ts, 0, i, a.size);
            v.split_off(5) // the body after magic byte and schema id
        })
        .collect();
    let proto_in: Vec<Vec<u8>> = (0..n).map(|i| protobuf_body(ts, 0, i, a.size)).collect();
    let json_in: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = Vec::new();
            write_encoded(&mut v, Encoding::Json, ts, 0, i, a.size);
            v
        })
        .collect();
    let frame = |value: &[u8]| {
        let mut out = BytesMut::with_capacity(value.len() + 16);
        put_data(&mut out, value);
        out.len()
    };
    fn decoded<'s>(
        s: &'s Standalone,
        frame: impl Fn(&[u8]) -> usize + 's,
    ) -> impl FnMut(&[u8]) -> usize + 's {
        move |body: &[u8]| match s.decode(body) {
            Ok(text) => frame(&text),
            Err(_) => 0,
        }
    }
    // Every input must decode, or the figures would time error paths.
    for (name, s, inputs) in [
        ("avro", &avro, &avro_in),
        ("protobuf", &proto, &proto_in),
        ("json-schema", &json_schema, &json_in),
    ] {
        if let Some(bad) = inputs.iter().find_map(|i| s.decode(i).err()) {
            anyhow::bail!("{name} input does not decode: {bad}");
        }
    }
    let rounds = a.rounds.max(1);
    let plain_ns = time_rounds(rounds, &plain, frame);
    let avro_ns = time_rounds(rounds, &avro_in, decoded(&avro, frame));
    let proto_ns = time_rounds(rounds, &proto_in, decoded(&proto, frame));
    let json_ns = time_rounds(rounds, &json_in, decoded(&json_schema, frame));
    let per_core = |ns: f64| if ns > 0.0 { (1e9 / ns).round() } else { 0.0 };
    let (p, av, pr, js) = (
        median(plain_ns.clone()),
        median(avro_ns.clone()),
        median(proto_ns.clone()),
        median(json_ns.clone()),
    );
    let result = json!({
        "scenario": "decode",
        "label": a.run.label,
        "ok": true,
        "size": a.size,
        "wire_bytes": {
            "avro": avro_in[0].len() + 5,
            "protobuf": proto_in[0].len() + 5,
            "json": json_in[0].len(),
        },
        "records": n,
        "rounds": rounds,
        "ns_per_record": {"plain": p, "avro": av, "protobuf": pr, "json-schema": js},
        "records_per_core_s": {"plain": per_core(p), "avro": per_core(av), "protobuf": per_core(pr), "json-schema": per_core(js)},
        "times_plain": {
            "avro": if p > 0.0 { av / p } else { 0.0 },
            "protobuf": if p > 0.0 { pr / p } else { 0.0 },
            "json-schema": if p > 0.0 { js / p } else { 0.0 },
        },
        "per_round_ns": {"plain": plain_ns, "avro": avro_ns, "protobuf": proto_ns, "json-schema": json_ns},
        "machine_before": machine_before,
    });
    println!(
        "decode, {} B records, one core, median of {rounds} rounds: plain {p:.0} ns ({:.0}/s), avro {av:.0} ns ({:.0}/s, {:.1}x plain), protobuf {pr:.0} ns ({:.0}/s, {:.1}x), json-schema {js:.0} ns ({:.0}/s, {:.1}x)",
        a.size,
        per_core(p),
        per_core(av),
        av / p.max(1e-9),
        per_core(pr),
        pr / p.max(1e-9),
        per_core(js),
        js / p.max(1e-9),
    );
    write_result(&a.run, &result)?;
    Ok(result)
}
