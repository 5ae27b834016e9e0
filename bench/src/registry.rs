//! A schema registry for the Avro figures: one schema, id 1, served over
//! Confluent's REST API on a loopback port by a thread. Enough for herald,
//! which asks `GET /schemas/ids/1` and `/schemas/ids/1/versions` once.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};

use herald_bench::encoding::{AVRO_SCHEMA, SCHEMA_ID};

pub struct Registry {
    pub addr: SocketAddr,
}

/// Starts serving; the thread lives as long as the process.
pub fn serve() -> anyhow::Result<Registry> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let schema = serde_json::json!({ "schema": AVRO_SCHEMA }).to_string();
    let versions = serde_json::json!([{ "subject": "bench-value", "version": 1 }]).to_string();
    std::thread::Builder::new()
        .name("bench-registry".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // The rest of the head, up to the blank line.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = line.split_whitespace().nth(1).unwrap_or_default();
                let (status, body) = if path == format!("/schemas/ids/{SCHEMA_ID}") {
                    ("200 OK", schema.as_str())
                } else if path == format!("/schemas/ids/{SCHEMA_ID}/versions") {
                    ("200 OK", versions.as_str())
                } else {
                    ("404 Not Found", r#"{"error_code":40403,"message":"Schema not found"}"#)
                };
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(Registry { addr })
}
