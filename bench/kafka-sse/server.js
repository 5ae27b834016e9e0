'use strict';
// Wikimedia's KafkaSSE (npm kafka-sse), a peer herald is measured against
// (scripts/bench.sh, `herald-bench ... --server kafka-sse`), set up the way
// its README shows: one http.createServer, every request handed to
// kafkaSse(), which gives it its own librdkafka consumer.
//
//   node server.js HOST:PORT BROKERS [KAFKA_CONFIG_JSON]
//
// KAFKA_CONFIG_JSON adds librdkafka properties to every consumer (herald-bench
// gives it herald's own fetch settings for the broker it runs on).
// GET /v1/stream/TOPIC streams the topic from its end; GET /status answers
// {"connections": N} (open streams) and is how herald-bench knows it is up.
const http = require('http');
const kafkaSse = require('kafka-sse');
const bunyan = require('bunyan');

const [listen, brokers, extra] = process.argv.slice(2);
if (!listen || !brokers) {
    console.error('usage: node server.js HOST:PORT BROKERS');
    process.exit(2);
}
const at = listen.lastIndexOf(':');
const kafkaConfig = Object.assign({ 'metadata.broker.list': brokers }, JSON.parse(extra || '{}'));
const logger = bunyan.createLogger({ name: 'kafka-sse', level: 'warn' });
let connections = 0;

http.createServer((req, res) => {
    if (req.url === '/status') {
        res.setHeader('Content-Type', 'application/json');
        res.end(JSON.stringify({ connections }));
        return;
    }
    const m = /^\/v1\/stream\/([A-Za-z0-9._-]+)$/.exec(req.url);
    if (!m) {
        res.statusCode = 404;
        res.end();
        return;
    }
    connections += 1;
    res.on('close', () => { connections -= 1; });
    kafkaSse(req, res, [m[1]], {
        kafkaConfig,
        logger,
    });
}).listen(Number(listen.slice(at + 1)), listen.slice(0, at));
