# A probe, run by hand: does a Tansu broker slow a consumer whose fetch also
# holds idle (or slowly written) partitions of a compacted topic? It times
# produce → poll on topic `busy` (8 partitions, 200 records/s), with and
# without topic `idle` (8 partitions, a record every 0.5 s) in the same
# assignment, with herald's fetch settings for real brokers. It answered no,
# which is why BENCHMARKS.md leaves the cost of presence's partitions on
# Tansu unexplained.
#
#   tansu broker --listener-url tcp://127.0.0.1:29092 \
#     --advertised-listener-url tcp://127.0.0.1:29092 --storage-engine sqlite://tansu.db &
#   tansu topic create busy --partitions 8 --broker tcp://127.0.0.1:29092
#   tansu topic create idle --partitions 8 --config cleanup.policy=compact --broker tcp://127.0.0.1:29092
#   .tools/bin/python bench/tansu-fetch-probe.py 127.0.0.1:29092
#
# (.tools/bin/python is the test venv, which has confluent-kafka.)
import sys, time, threading
from confluent_kafka import Producer, Consumer, TopicPartition, OFFSET_END
bs = sys.argv[1]
def run(idle):
    c = Consumer({"bootstrap.servers": bs, "group.id": f"probe-{idle}-{time.time()}", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 10, "fetch.queue.backoff.ms": 5})
    tps = [TopicPartition("busy", p, OFFSET_END) for p in range(8)]
    if idle:
        tps += [TopicPartition("idle", p, OFFSET_END) for p in range(8)]
    c.assign(tps)
    t0 = time.time()
    while time.time() - t0 < 1.5: c.poll(0.05)
    p = Producer({"bootstrap.servers": bs, "linger.ms": 0})
    stop = [False]
    def prod():
        i = 0
        while not stop[0]:
            p.produce("busy", value=str(time.time()).encode(), partition=i % 8); p.poll(0); i += 1; time.sleep(0.005)
            if idle and i % 100 == 0: p.produce("idle", value=b"hb", key=b"h", partition=(i // 100) % 8)
        p.flush()
    th = threading.Thread(target=prod); th.start()
    lat = []; t0 = time.time()
    while time.time() - t0 < 5:
        m = c.poll(0.05)
        if m and not m.error() and m.topic() == "busy": lat.append((time.time() - float(m.value())) * 1000)
    stop[0] = True; th.join(); c.close()
    lat.sort(); return len(lat), lat[len(lat)//2], lat[int(len(lat)*0.99)]
for idle in (False, True, False, True):
    n, p50, p99 = run(idle)
    print(f"idle partitions in the fetch: {idle}: {n} records, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
