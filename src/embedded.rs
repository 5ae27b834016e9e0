//! The embedded Kafka: librdkafka's mock cluster, in process.
//!
//! `herald serve` without `--brokers` starts one (three brokers) so that a
//! first-time user needs nothing else, and tests get a real Kafka-protocol
//! broker on loopback that any Kafka client can reach at the printed
//! bootstrap address. The mock cluster is `!Send`, so it lives on its own
//! thread; topic creation goes to that thread over a channel. Its limits: no
//! offsets-for-times, about 5 MiB kept per partition.

use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rdkafka::mocking::MockCluster;

const BROKERS: i32 = 3;

enum Request {
    CreateTopic {
        name: String,
        partitions: i32,
        done: mpsc::SyncSender<Result<(), String>>,
    },
}

pub struct EmbeddedKafka {
    bootstrap: String,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedKafka {
    pub fn start() -> anyhow::Result<EmbeddedKafka> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("herald-embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(BROKERS) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serves requests until every sender is gone, then drops the cluster.
                for request in rx {
                    match request {
                        Request::CreateTopic {
                            name,
                            partitions,
                            done,
                        } => {
                            let r = cluster
                                .create_topic(&name, partitions, BROKERS)
                                .map_err(|e| e.to_string());
                            let _ = done.send(r);
                        }
                    }
                }
            })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("embedded Kafka thread died during start-up"))?
            .map_err(|e| anyhow::anyhow!("could not start the embedded Kafka: {e}"))?;
        Ok(EmbeddedKafka {
            bootstrap,
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (blocking; call from a blocking context).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let (done, result) = mpsc::sync_channel(1);
        let sent = self.requests.lock().as_ref().is_some_and(|tx| {
            tx.send(Request::CreateTopic {
                name: name.to_owned(),
                partitions,
                done,
            })
            .is_ok()
        });
        if !sent {
            anyhow::bail!("the embedded Kafka has stopped");
        }
        result
            .recv()
            .map_err(|_| anyhow::anyhow!("the embedded Kafka has stopped"))?
            .map_err(|e| anyhow::anyhow!("could not create topic `{name}`: {e}"))
    }

    /// Stops the cluster (blocking).
    pub fn stop(&self) {
        self.requests.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.stop();
    }
}
