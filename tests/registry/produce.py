#!/usr/bin/env python3
"""Produces Confluent-framed test records with the real confluent-kafka serializers.

For every record it prints one JSON line on stdout, in produce order:

  {"partition": P, "offset": O, "schema_id": ID, "key": KEY, "expected": VALUE}

"expected" is the JSON value herald must deliver for the record and "key" is
the string key, or the expected JSON of an Avro key (then "key_schema_id" is
added too). "schema_id" is the id in the value's framing (null for
plain-json).

Usage:
  produce.py --bootstrap HOST:PORT --registry URL --topic T --kind KIND
             [--count N] [--partition P] [--key-format string|avro]
             [--message Outer.Inner]          (protobuf-all: the record type)
             [--schema-only]                  register, print {"schema_ids": [...]}
  produce.py --bootstrap HOST:PORT --topic T --raw-framed ID --hex HEX
             one record: 0x00, ID as 4 bytes big-endian, then the bytes of HEX
  produce.py --bootstrap HOST:PORT --topic T --raw-hex HEX
             one record whose value is exactly the bytes of HEX

Kinds: avro-all, avro-v1v2, protobuf-all, jsonschema, plain-json.
"""

import argparse
import base64
import datetime as dt
import decimal
import importlib
import importlib.resources
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import uuid
import warnings

# Authlib (imported by the schema registry client) warns about httpx on import.
import authlib.deprecate  # noqa: E402,F401  (installs an "always" filter; ours goes in front)

warnings.filterwarnings("ignore", message="The httpx module is deprecated")

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroSerializer  # noqa: E402
from confluent_kafka.schema_registry.json_schema import JSONSerializer  # noqa: E402
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer  # noqa: E402
from confluent_kafka.serialization import (  # noqa: E402
    MessageField,
    SerializationContext,
    StringSerializer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")

# JavaScript's safe integers: longs outside this range are delivered as strings.
MAX_SAFE = 2**53 - 1
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------
# The Avro → JSON mapping herald implements, computed from the Python values
# we hand to the serializer (not from fastavro's conversions).
# ---------------------------------------------------------------------------


def expected_avro(schema, value, named=None):
    """The JSON herald must deliver for `value` written with Avro `schema`.

    `schema` is the parsed JSON schema (dict/list/str); `named` collects the
    named types seen so far, so later references by name resolve.
    """
    if named is None:
        named = {}
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    if isinstance(schema, list):  # union: the branch's value, unwrapped
        return expected_avro(union_branch(schema, value, named), value, named)
    if isinstance(schema, str):
        return expected_primitive(schema, value)

    kind = schema["type"]
    if "name" in schema and kind in ("record", "enum", "fixed"):
        named[schema["name"]] = schema
    logical = schema.get("logicalType")
    if logical:
        return expected_logical(schema, logical, value)
    if kind == "record":
        return {f["name"]: expected_avro(f["type"], value[f["name"]], named) for f in schema["fields"]}
    if kind == "enum":
        return value
    if kind == "array":
        return [expected_avro(schema["items"], item, named) for item in value]
    if kind == "map":
        return {k: expected_avro(schema["values"], v, named) for k, v in value.items()}
    if kind == "fixed":
        return b64(value)
    return expected_avro(kind, value, named)  # {"type": "long"} and the like


def union_branch(branches, value, named):
    """The union branch a Python value is written as (enough for our schemas)."""
    for branch in branches:
        resolved = named.get(branch, branch) if isinstance(branch, str) else branch
        kind = resolved if isinstance(resolved, str) else resolved["type"]
        if value is None and kind == "null":
            return branch
        if isinstance(value, dict) and kind in ("record", "map"):
            return branch
        if isinstance(value, str) and kind in ("string", "enum"):
            return branch
        if isinstance(value, bool) and kind == "boolean":
            return branch
        if isinstance(value, int) and not isinstance(value, bool) and kind in ("int", "long"):
            return branch
    raise ValueError(f"no union branch of {branches} for {value!r}")


def expected_primitive(kind, value):
    if kind in ("null", "boolean", "int", "string"):
        return value
    if kind == "long":
        return value if -MAX_SAFE <= value <= MAX_SAFE else str(value)
    if kind in ("float", "double"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if kind == "bytes":
        return b64(value)
    raise ValueError(f"unknown Avro type {kind}")


def expected_logical(schema, logical, value):
    if logical == "decimal":
        return decimal_text(value, schema.get("scale", 0))
    if logical == "date":
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if logical == "time-millis":
        return f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}"
    if logical == "time-micros":
        return f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    if logical in ("timestamp-millis", "local-timestamp-millis"):
        suffix = "Z" if logical == "timestamp-millis" else ""
        return f"{date_time_text(value)}.{value.microsecond // 1000:03d}{suffix}"
    if logical in ("timestamp-micros", "local-timestamp-micros"):
        suffix = "Z" if logical == "timestamp-micros" else ""
        return f"{date_time_text(value)}.{value.microsecond:06d}{suffix}"
    if logical == "uuid":
        return str(value)
    raise ValueError(f"unknown logical type {logical}")


def date_time_text(value):
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )


def decimal_text(value, scale):
    """A Decimal as text with exactly `scale` fraction digits, from its unscaled integer."""
    unscaled = int(value.scaleb(scale))
    assert decimal.Decimal(unscaled).scaleb(-scale) == value, "value has more digits than the scale"
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    if scale == 0:
        return sign + digits
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def b64(data):
    return base64.standard_b64encode(data).decode("ascii")


def dec(unscaled, scale):
    """Decimal with exactly `scale` fraction digits, e.g. dec(1234, 2) = 12.34."""
    return decimal.Decimal(unscaled).scaleb(-scale)


def f32(value):
    """Checks a float survives a trip through 32 bits (so expected == decoded)."""
    if not math.isnan(value):
        assert struct.unpack("<f", struct.pack("<f", value))[0] == value, value
    return value


# ---------------------------------------------------------------------------
# Kinds. Each returns a list of (serializer, python value, expected JSON).
# ---------------------------------------------------------------------------

AVRO_ALL_SCHEMA = {
    "type": "record",
    "name": "AllTypes",
    "namespace": "herald.test",
    "doc": "Every Avro type and logical type herald decodes.",
    "fields": [
        {"name": "null_field", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "int_field", "type": "int"},
        {"name": "long_small", "type": "long"},
        {"name": "long_big", "type": "long"},
        {"name": "long_edge", "type": "long"},
        {"name": "float_field", "type": "float"},
        {"name": "double_field", "type": "double"},
        {"name": "bytes_field", "type": "bytes"},
        {"name": "string_field", "type": "string"},
        {"name": "fixed_field", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {
            "name": "enum_field",
            "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]},
        },
        {"name": "int_array", "type": {"type": "array", "items": "int"}},
        {"name": "string_map", "type": {"type": "map", "values": "string"}},
        {
            "name": "nested",
            "type": {
                "type": "record",
                "name": "Nested",
                "fields": [
                    {"name": "label", "type": "string"},
                    {"name": "amount", "type": "long"},
                ],
            },
        },
        {"name": "maybe_string", "type": ["null", "string"]},
        {"name": "choice", "type": ["null", "int", "Nested"]},
        {
            "name": "dec_bytes",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        },
        {
            "name": "dec_fixed",
            "type": {
                "type": "fixed",
                "name": "Dec8",
                "size": 8,
                "logicalType": "decimal",
                "precision": 18,
                "scale": 4,
            },
        },
        {
            "name": "dec_scale0",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 0},
        },
        {"name": "date_field", "type": {"type": "int", "logicalType": "date"}},
        {"name": "time_millis", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "time_micros", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ts_millis", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {
            "name": "local_ts_millis",
            "type": {"type": "long", "logicalType": "local-timestamp-millis"},
        },
        {
            "name": "local_ts_micros",
            "type": {"type": "long", "logicalType": "local-timestamp-micros"},
        },
        {"name": "uuid_field", "type": {"type": "string", "logicalType": "uuid"}},
    ],
}

# Values cycled through by record index (list lengths are 5, the default count,
# so every value shows up in a default run).
LONG_BIG = [2**53 + 1, -(2**53 + 1), 2**63 - 1, -(2**63), 2**53]
LONG_EDGE = [MAX_SAFE, -MAX_SAFE, 0, -1, 2**31]
INTS = [0, 2**31 - 1, -(2**31), 7, -7]
FLOATS = [1.5, -0.25, float("nan"), float("inf"), float("-inf")]
DOUBLES = [0.1, -1e300, float("-inf"), 2.0**53, float("nan")]
STRINGS = [
    'quote " backslash \\ newline \n CR \r tab \t',
    "unicode: héllo wörld ✓ 日本語 😀",
    "",
    "</script><b>not html</b>",
    "nul \u0000 and ctrl \u001f",
]
BYTES = [b"\x00\xff\xfe\x80", b"", b"plain ascii", bytes(range(256))[:7], b"\xc3\x28"]
DEC_BYTES = [1234, -5, 0, 9999999999, -1000000000]  # unscaled, scale 2
DEC_FIXED = [123456789, -1, 0, 999999999999999999, -10000]  # unscaled, scale 4
DEC_SCALE0 = [123, -999999, 0, 1, -10]
DATES = [dt.date(2024, 2, 29), dt.date(1970, 1, 1), dt.date(1969, 12, 31), dt.date(1900, 1, 1), dt.date(9999, 12, 31)]
TIMES_MILLIS = [dt.time(0, 0, 0), dt.time(23, 59, 59, 999000), dt.time(12, 34, 56, 789000), dt.time(1, 2, 3), dt.time(9, 0, 0, 1000)]
TIMES_MICROS = [dt.time(0, 0, 0), dt.time(23, 59, 59, 999999), dt.time(12, 34, 56, 789012), dt.time(1, 2, 3, 4), dt.time(9, 0, 0, 100)]
TIMESTAMPS = [
    dt.datetime(2024, 2, 29, 12, 34, 56, 789123, tzinfo=UTC),
    dt.datetime(1970, 1, 1, 0, 0, 0, 0, tzinfo=UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # just before the epoch
    dt.datetime(2000, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
    dt.datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC),
]


def truncate_to_millis(value):
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def avro_all_records(count):
    records = []
    for i in range(count):
        c = i % 5
        ts = TIMESTAMPS[c]
        ts_millis = truncate_to_millis(ts)
        nested = {"label": f"nested {i}", "amount": -i * 1000}
        choice = [None, 42, {"label": "in union", "amount": 2**53 + 3}, -1, None][c]
        records.append(
            {
                "null_field": None,
                "flag": i % 2 == 0,
                "int_field": INTS[c],
                "long_small": i * 10 - 20,
                "long_big": LONG_BIG[c],
                "long_edge": LONG_EDGE[c],
                "float_field": f32(FLOATS[c]),
                "double_field": DOUBLES[c],
                "bytes_field": BYTES[c],
                "string_field": STRINGS[c],
                "fixed_field": bytes([0xDE, 0xAD, 0xBE, i % 256]),
                "enum_field": ["RED", "GREEN", "BLUE"][i % 3],
                "int_array": list(range(-1, c * 2 - 1)),
                "string_map": {f"key{j}": f"value {j} ✓" for j in range(c)},
                "nested": nested,
                "maybe_string": None if i % 2 else f"present {i}",
                "choice": choice,
                "dec_bytes": dec(DEC_BYTES[c], 2),
                "dec_fixed": dec(DEC_FIXED[c], 4),
                "dec_scale0": dec(DEC_SCALE0[c], 0),
                "date_field": DATES[c],
                "time_millis": TIMES_MILLIS[c],
                "time_micros": TIMES_MICROS[c],
                "ts_millis": ts_millis,
                "ts_micros": ts,
                "local_ts_millis": ts_millis.replace(tzinfo=None),
                "local_ts_micros": ts.replace(tzinfo=None),
                "uuid_field": str(uuid.UUID(int=(0x1234 << 64) + i * 0x1000000000001)),
            }
        )
    return records


def kind_avro_all(args, client):
    schema = AVRO_ALL_SCHEMA
    serializer = AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": True})
    return [(serializer, value, expected_avro(schema, value)) for value in avro_all_records(args.count)]


USER_V1 = {
    "type": "record",
    "name": "User",
    "namespace": "herald.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
    ],
}
USER_V2 = {
    **USER_V1,
    "fields": USER_V1["fields"]
    + [
        {"name": "email", "type": ["null", "string"], "default": None},
        {"name": "tier", "type": "string", "default": "basic"},
    ],
}


def kind_avro_v1v2(args, client):
    """First half (rounded up) written with v1, the rest with v2, same subject."""
    v1 = AvroSerializer(client, json.dumps(USER_V1), conf={"auto.register.schemas": True})
    v2 = AvroSerializer(client, json.dumps(USER_V2), conf={"auto.register.schemas": True})
    first_half = (args.count + 1) // 2
    out = []
    for i in range(args.count):
        if i < first_half:
            value = {"id": 2**53 + i if i == 1 else i, "name": f"user {i}"}
            out.append((v1, value, expected_avro(USER_V1, value)))
        else:
            value = {
                "id": i,
                "name": f"user {i}",
                "email": None if i % 2 else f"user{i}@example.com",
                "tier": "gold" if i % 3 == 0 else "basic",
            }
            out.append((v2, value, expected_avro(USER_V2, value)))
    return out


def compile_protos():
    """Compiles tests/registry/proto/*.proto and imports the generated modules."""
    from grpc_tools import protoc  # bundles protoc and the well-known .proto files

    out_dir = tempfile.mkdtemp(prefix="herald-proto-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    argv = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out_dir}", "common.proto", "orders.proto"]
    if protoc.main(argv) != 0:
        raise SystemExit("protoc failed on tests/registry/proto")
    sys.path.insert(0, out_dir)
    try:
        return importlib.import_module("orders_pb2"), importlib.import_module("common_pb2")
    finally:
        sys.path.remove(out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)  # the modules are loaded by now


def order_message(orders, common, i):
    """An Order that uses a different oneof branch and edge values per index."""
    c = i % 5
    Money = common.Money
    order = orders.Order(
        order_id=f"order-{i}",
        quantity=[3, 0, -7, 0, 2**31 - 1][c],
        big_number=[2**53 + 1, -(2**63), 0, 2**63 - 1, -1][c],
        unsigned_number=[2**64 - 1, 1, 0, 2**53 + 5, 42][c],
        paid=c % 2 == 0,
        ratio=[0.5, float("nan"), -1e-300, 0.0, float("inf")][c],
        blob=[b"\x00\xff\xfe", b"", b"hello", b"", bytes(range(10))][c],
        status=[1, 2, 99, 0, 1][c],  # 99 is not a declared value: JSON gives the number
        scores=[[1, -1, 2**31 - 1], [], [0], [-(2**31)], [5, 5]][c],
        counts=[{"a": 1, "b": -2}, {}, {"zero": 0}, {"ünï": 7}, {"x": 2**31 - 1}][c],
        priority=[1, 2, 0, 1, 2][c],
        weight=f32([1.25, -0.5, 0.0, float("-inf"), 3.0][c]),
        signed_delta=[-5, 5, 0, -(2**63), 2**62][c],
    )
    if c != 3:  # leave message fields unset in one record
        order.first_line.CopyFrom(orders.Order.Line(sku=f"sku-{i}", quantity=i + 1, price=Money(currency="EUR", units=i * 100)))
        order.lines.extend([orders.Order.Line(sku="a", quantity=1), orders.Order.Line(sku="b", price=Money(currency="USD", units=-3))])
        order.total.CopyFrom(Money(currency="EUR", units=2**53 + i))
    branch = c % 4
    if branch == 0:
        order.card_token = "tok_✓\"quoted\""
    elif branch == 1:
        order.cash.CopyFrom(Money(currency="CHF", units=0))  # present but all defaults: {}
    elif branch == 2:
        order.invoice = False  # a oneof member set to its default is still printed
    # branch 3: no oneof member set
    seconds_nanos = [(1709210096, 789000000), (0, 0), (-1, 999999999), (1700000000, 1), (253402300799, 999999999)][c]
    order.created_at.seconds, order.created_at.nanos = seconds_nanos
    if c in (0, 1):
        order.note.value = ["hello\nworld", ""][c]  # "" in a wrapper is present
    if c in (0, 2, 4):
        order.big_wrapper.value = [2**53 + 1, 0, -(2**53 + 1)][c // 2]
    return order


def inner_message(orders, common, i):
    c = i % 5
    return orders.Outer.Inner(
        label=f"inner {i}",
        big=[2**53 + 1, 0, -1, 2**63 - 1, 12][c],
        tags=[f"t{j}" for j in range(c)],
        priority=[0, 1, 2, 1, 0][c],
    )


def kind_protobuf_all(args, client):
    from google.protobuf.json_format import MessageToDict

    orders, common = compile_protos()
    if args.message == "Order":
        cls, build = orders.Order, order_message
    elif args.message == "Outer.Inner":
        cls, build = orders.Outer.Inner, inner_message
    else:
        raise SystemExit("--message must be Order or Outer.Inner")
    serializer = ProtobufSerializer(cls, client, conf={"auto.register.schemas": True})
    out = []
    for i in range(args.count):
        message = build(orders, common, i)
        out.append((serializer, message, MessageToDict(message)))
    return out


EVENT_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Event",
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "score": {"type": "number"},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
            "required": ["city"],
        },
    },
    "required": ["id", "name"],
}


def json_records(count):
    records = []
    for i in range(count):
        c = i % 5
        records.append(
            {
                "id": [i, 2**53 + 1, -3, 0, 2**63 - 1][c],
                "name": ["plain", "ünïcödé ✓ \"q\" \n", "", "😀", "a\\b"][c],
                "score": [1.5, -0.001, 0, 1e21, 3][c],
                "active": c % 2 == 0,
                "tags": [f"t{j}" for j in range(c)],
                "address": {"city": "Zürich", "zip": None if c % 2 else "8001"},
            }
        )
    return records


def kind_jsonschema(args, client):
    serializer = JSONSerializer(json.dumps(EVENT_JSON_SCHEMA), client, conf={"auto.register.schemas": True})
    return [(serializer, value, value) for value in json_records(args.count)]


def plain_json_serializer(value, ctx):
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def kind_plain_json(args, client):
    return [(plain_json_serializer, value, value) for value in json_records(args.count)]


KINDS = {
    "avro-all": kind_avro_all,
    "avro-v1v2": kind_avro_v1v2,
    "protobuf-all": kind_protobuf_all,
    "jsonschema": kind_jsonschema,
    "plain-json": kind_plain_json,
}

AVRO_KEY_SCHEMA = {
    "type": "record",
    "name": "OrderKey",
    "namespace": "herald.test",
    "fields": [{"name": "region", "type": "string"}, {"name": "id", "type": "int"}],
}


def key_for(args, client):
    """A function index → (key bytes, expected key JSON, key schema id or None)."""
    if args.key_format == "string":
        strings = StringSerializer("utf_8")
        ctx = SerializationContext(args.topic, MessageField.KEY)
        return lambda i: (strings(f"k{i}", ctx), f"k{i}", None)
    serializer = AvroSerializer(client, json.dumps(AVRO_KEY_SCHEMA), conf={"auto.register.schemas": True})
    ctx = SerializationContext(args.topic, MessageField.KEY)

    def avro_key(i):
        key = {"region": ["eu", "us", "ap"][i % 3], "id": i}
        data = serializer(key, ctx)
        return data, expected_avro(AVRO_KEY_SCHEMA, key), framed_id(data)

    return avro_key


def framed_id(data):
    """The schema id of a Confluent-framed payload (magic byte 0, then 4 bytes)."""
    if len(data) >= 5 and data[0] == 0:
        return struct.unpack(">I", data[1:5])[0]
    return None


# ---------------------------------------------------------------------------
# Producing
# ---------------------------------------------------------------------------


def produce_all(args, records):
    """records: [(key bytes, value bytes, line dict)]; prints lines with partition/offset."""
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0})
    errors = []

    def delivered(line):
        def callback(err, msg):
            if err is not None:
                errors.append(str(err))
            else:
                line["partition"], line["offset"] = msg.partition(), msg.offset()

        return callback

    lines = []
    for key, value, extra in records:
        line = {"partition": None, "offset": None, **extra}
        kwargs = {"partition": args.partition} if args.partition is not None else {}
        producer.produce(args.topic, key=key, value=value, on_delivery=delivered(line), **kwargs)
        producer.poll(0)
        lines.append(line)
    remaining = producer.flush(30)
    if remaining or errors:
        raise SystemExit(f"produce failed: {remaining} undelivered, errors: {errors}")
    for line in lines:
        print(json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", help="schema registry URL")
    parser.add_argument("--registry-auth", metavar="USER:PASS", help="basic auth for the registry")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--kind", choices=sorted(KINDS))
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--partition", type=int)
    parser.add_argument("--key-format", choices=["string", "avro"], default="string")
    parser.add_argument("--message", default="Order", help="protobuf-all record type: Order or Outer.Inner")
    parser.add_argument("--schema-only", action="store_true")
    parser.add_argument("--raw-framed", type=int, metavar="ID")
    parser.add_argument("--hex", default="")
    parser.add_argument("--raw-hex", metavar="HEX")
    args = parser.parse_args()

    # Raw payloads: no serializer, no registry.
    if args.raw_framed is not None or args.raw_hex is not None:
        if args.raw_framed is not None:
            value = b"\x00" + struct.pack(">I", args.raw_framed) + bytes.fromhex(args.hex)
        else:
            value = bytes.fromhex(args.raw_hex)
        produce_all(args, [(b"k0", value, {"schema_id": framed_id(value), "key": "k0"})])
        return

    if args.kind is None:
        parser.error("--kind is required")
    client = None
    if args.kind != "plain-json" or args.key_format == "avro":
        if not args.registry:
            parser.error("--registry is required for this kind")
        conf = {"url": args.registry}
        if args.registry_auth:
            conf["basic.auth.user.info"] = args.registry_auth
        client = SchemaRegistryClient(conf)

    items = KINDS[args.kind](args, client)
    value_ctx = SerializationContext(args.topic, MessageField.VALUE)
    make_key = key_for(args, client)

    if args.schema_only:
        # Serializing registers the schemas; nothing is produced.
        ids = []
        for i, (serializer, value, _) in enumerate(items):
            for schema_id in (framed_id(serializer(value, value_ctx)), make_key(i)[2]):
                if schema_id is not None and schema_id not in ids:
                    ids.append(schema_id)
        print(json.dumps({"schema_ids": ids}), flush=True)
        return

    records = []
    for i, (serializer, value, expected) in enumerate(items):
        data = serializer(value, value_ctx)
        key, key_json, key_schema_id = make_key(i)
        extra = {"schema_id": framed_id(data) if args.kind != "plain-json" else None, "key": key_json}
        if key_schema_id is not None:
            extra["key_schema_id"] = key_schema_id
        extra["expected"] = expected
        records.append((key, data, extra))
    produce_all(args, records)


if __name__ == "__main__":
    main()
