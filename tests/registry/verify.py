#!/usr/bin/env python3
"""Self-check of produce.py: reads its records back with the real Confluent deserializers.

  produce.py ... --kind K > out.jsonl
  verify.py --bootstrap HOST:PORT --registry URL --topic T --kind K
            [--key-format string|avro] [--message Outer.Inner] < out.jsonl

For each line produce.py printed, it fetches the record at that partition and
offset, checks the schema id in the framing, decodes key and value with
confluent-kafka's deserializers (which fetch the writer schema from the
registry), maps the result to JSON the way herald must, and compares it with
"expected". Prints "ok N records" or the first mismatch (exit status 1).
"""

import argparse
import json
import sys
import warnings

import authlib.deprecate  # noqa: E402,F401  (installs an "always" filter; ours goes in front)

warnings.filterwarnings("ignore", message="The httpx module is deprecated")

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroDeserializer  # noqa: E402
from confluent_kafka.schema_registry.json_schema import JSONDeserializer  # noqa: E402
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer  # noqa: E402
from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402

import produce  # noqa: E402  (same directory: the expected-JSON mapping)


def fetch(consumer, topic, partition, offset):
    consumer.assign([TopicPartition(topic, partition, offset)])
    for _ in range(100):
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise SystemExit(f"consume error: {msg.error()}")
        if msg.offset() == offset:
            return msg
    raise SystemExit(f"record {topic}/{partition}@{offset} not found")


def value_decoder(args, client):
    """A function (value bytes, ctx) → the JSON herald must deliver."""
    if args.kind in ("avro-all", "avro-v1v2"):
        avro = AvroDeserializer(client)

        def decode_avro(data, ctx):
            writer = json.loads(client.get_schema(produce.framed_id(data)).schema_str)
            return produce.expected_avro(writer, avro(data, ctx))

        return decode_avro
    if args.kind == "protobuf-all":
        from google.protobuf.json_format import MessageToDict

        orders, _ = produce.compile_protos()
        cls = orders.Outer.Inner if args.message == "Outer.Inner" else orders.Order
        proto = ProtobufDeserializer(cls, {"use.deprecated.format": False}, client)
        return lambda data, ctx: MessageToDict(proto(data, ctx))
    if args.kind == "jsonschema":
        schema = json.dumps(produce.EVENT_JSON_SCHEMA)
        return JSONDeserializer(schema, schema_registry_client=client)
    return lambda data, ctx: json.loads(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--kind", required=True, choices=sorted(produce.KINDS))
    parser.add_argument("--key-format", choices=["string", "avro"], default="string")
    parser.add_argument("--message", default="Order")
    args = parser.parse_args()

    client = SchemaRegistryClient({"url": args.registry}) if args.registry else None
    decode_value = value_decoder(args, client)
    avro_key = AvroDeserializer(client) if args.key_format == "avro" else None
    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": "herald-verify", "enable.auto.commit": False}
    )
    lines = [json.loads(line) for line in sys.stdin if line.strip()]
    for line in lines:
        msg = fetch(consumer, args.topic, line["partition"], line["offset"])
        where = f"{args.topic}/{line['partition']}@{line['offset']}"
        if produce.framed_id(msg.value()) != line["schema_id"] and args.kind != "plain-json":
            raise SystemExit(f"{where}: framing id {produce.framed_id(msg.value())} != {line['schema_id']}")
        got = decode_value(msg.value(), SerializationContext(args.topic, MessageField.VALUE))
        if got != line["expected"]:
            raise SystemExit(f"{where}: value mismatch\n got      {got}\n expected {line['expected']}")
        if avro_key is not None:
            key = avro_key(msg.key(), SerializationContext(args.topic, MessageField.KEY))
            key = produce.expected_avro(produce.AVRO_KEY_SCHEMA, key)
        else:
            key = msg.key().decode("utf-8")
        if key != line["key"]:
            raise SystemExit(f"{where}: key {key!r} != {line['key']!r}")
    consumer.close()
    print(f"ok {len(lines)} records")


if __name__ == "__main__":
    main()
