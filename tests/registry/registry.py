#!/usr/bin/env python3
"""A small Confluent-compatible Schema Registry for herald's tests.

Stdlib only. It serves the REST subset that confluent-kafka's Python
serializers and deserializers (Avro, Protobuf, JSON Schema) use, plus a few
control endpoints under /__control/ for fault injection and request counting.

Usage: registry.py --port PORT [--state FILE] [--basic-auth USER:PASS]
                   [--bearer TOKEN] [--tls-cert PEM --tls-key PEM]

Prints "listening 127.0.0.1:PORT" on stdout once it accepts connections
(with --port 0 the port is picked by the OS). With --state FILE the schemas
and subjects survive a restart: the file is loaded at start and rewritten
atomically after every change.

Behaviour worth knowing (it follows Confluent's):
- Schema text is stored and returned exactly as registered. Two registrations
  with the same (schemaType, schema text, references) get the same global id,
  whatever the subject. Ids start at 1.
- "schemaType" is omitted from responses for AVRO schemas, and "references"
  is omitted when there are none.
- The "format" query parameter (the Protobuf serde asks for
  format=serialized) is accepted and ignored: a schema comes back as it was
  registered.
- Compatibility is never checked; /config answers NONE.
- GET /associations/resources/{namespace}/{topic} answers [] (no
  associations): confluent-kafka 2.16's default subject name strategy asks it
  before falling back to TOPIC-key / TOPIC-value.

Control endpoints (never need auth, and are not counted):
  POST /__control/garbage/{id}     GET /schemas/ids/{id} answers 200 with a
                                   body that is not JSON
  POST /__control/bad-schema/{id}  ... answers JSON whose "schema" does not
                                   parse as its schema type
  POST /__control/fail/{status}    every registry endpoint answers {status}
                                   (e.g. 500 or 503) with a Confluent error body
  POST /__control/delay-ms/{ms}    every registry endpoint waits {ms} first
  POST /__control/reset-faults     clears all of the above
  GET  /__control/requests         {"GET /schemas/ids/7": 1, ...}: counts per
                                   method and path (query string dropped)
  POST /__control/reset-requests   zeroes the counts
"""

import argparse
import base64
import json
import os
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

# Schema text returned by the bad-schema fault, per schema type: each is
# neither valid JSON (for AVRO and JSON) nor base64 nor .proto text.
BAD_SCHEMA_TEXT = {
    "AVRO": '{"type": "record", "name": "Broken", "fields": [',
    "JSON": '{"type": "object", "properties": ',
    "PROTOBUF": 'syntax = "proto3"; message Broken { int32 x = ',
}


class HttpError(Exception):
    """An error answered as Confluent does: {"error_code": N, "message": M}."""

    def __init__(self, status, error_code, message):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def not_found_subject(subject):
    return HttpError(404, 40401, f"Subject '{subject}' not found.")


def not_found_version(version):
    return HttpError(404, 40402, f"Version {version} not found.")


def not_found_schema():
    return HttpError(404, 40403, "Schema not found")


class Store:
    """Schemas, subjects and config, optionally persisted to a JSON file.

    schemas:  list of {"id", "schemaType", "schema", "references"}; id = index + 1
    subjects: {subject: [schema id of version 1, of version 2, ...]}
    """

    def __init__(self, state_path):
        self.lock = threading.Lock()
        self.state_path = state_path
        self.schemas = []
        self.subjects = {}
        self.compatibility = "NONE"
        self.subject_compatibility = {}
        if state_path and os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as f:
                state = json.load(f)
            self.schemas = state["schemas"]
            self.subjects = state["subjects"]
            self.compatibility = state.get("compatibility", "NONE")
            self.subject_compatibility = state.get("subject_compatibility", {})

    def save(self):
        """Rewrites the state file atomically (write a temp file, then rename)."""
        if not self.state_path:
            return
        state = {
            "schemas": self.schemas,
            "subjects": self.subjects,
            "compatibility": self.compatibility,
            "subject_compatibility": self.subject_compatibility,
        }
        directory = os.path.dirname(os.path.abspath(self.state_path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".registry-state-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def schema(self, schema_id):
        if 1 <= schema_id <= len(self.schemas):
            return self.schemas[schema_id - 1]
        raise not_found_schema()

    def find(self, schema_type, text, references):
        for entry in self.schemas:
            if (entry["schemaType"], entry["schema"], entry["references"]) == (
                schema_type,
                text,
                references,
            ):
                return entry
        return None

    def register(self, subject, schema_type, text, references):
        """Returns the global id, adding a schema and/or a subject version if new."""
        entry = self.find(schema_type, text, references)
        changed = False
        if entry is None:
            entry = {
                "id": len(self.schemas) + 1,
                "schemaType": schema_type,
                "schema": text,
                "references": references,
            }
            self.schemas.append(entry)
            changed = True
        versions = self.subjects.setdefault(subject, [])
        if entry["id"] not in versions:
            versions.append(entry["id"])
            changed = True
        if changed:
            self.save()
        return entry["id"]

    def version_of(self, subject, version):
        """(version number, schema entry) for "latest", "-1" or a number."""
        if subject not in self.subjects:
            raise not_found_subject(subject)
        versions = self.subjects[subject]
        if version in ("latest", "-1"):
            number = len(versions)
        else:
            try:
                number = int(version)
            except ValueError:
                raise HttpError(422, 42202, "The specified version is not a valid version id.")
        if not 1 <= number <= len(versions):
            raise not_found_version(version)
        return number, self.schema(versions[number - 1])

    def subject_versions(self, schema_id):
        """[(subject, version)] that hold schema_id, in subject registration order."""
        return [
            (subject, index + 1)
            for subject, versions in self.subjects.items()
            for index, sid in enumerate(versions)
            if sid == schema_id
        ]


def schema_fields(entry):
    """The "schema"/"schemaType"/"references" part of a response, Confluent style."""
    out = {}
    if entry["schemaType"] != "AVRO":
        out["schemaType"] = entry["schemaType"]
    out["schema"] = entry["schema"]
    if entry["references"]:
        out["references"] = entry["references"]
    return out


def version_response(subject, number, entry):
    return {"subject": subject, "version": number, "id": entry["id"], **schema_fields(entry)}


def parse_registration(body):
    """(schemaType, schema text, references) from a register/lookup request body."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise HttpError(422, 42201, "Invalid schema: the request needs a \"schema\" string")
    schema_type = (body.get("schemaType") or "AVRO").upper()
    if schema_type not in ("AVRO", "PROTOBUF", "JSON"):
        raise HttpError(422, 42201, f"Invalid schema type {schema_type}")
    references = []
    for ref in body.get("references") or []:
        references.append({"name": ref.get("name"), "subject": ref.get("subject"), "version": ref.get("version")})
    text = body["schema"]
    # The JSON-based schema types must at least be JSON. Protobuf schemas are
    # either .proto text or a base64 FileDescriptorProto: not checked.
    if schema_type in ("AVRO", "JSON"):
        try:
            json.loads(text)
        except ValueError as e:
            raise HttpError(422, 42201, f"Invalid schema: {e}")
    return schema_type, text, references


class Faults:
    """Test-controlled misbehaviour; in memory only, cleared by reset-faults."""

    def __init__(self):
        self.garbage = set()
        self.bad_schema = set()
        self.fail_status = None
        self.delay_ms = 0


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep connections alive; every answer has a
    # Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "herald-test-registry"

    def log_message(self, format, *args):  # noqa: A002 - signature is stdlib's
        pass  # quiet: stdout carries only the "listening" line

    # -- plumbing -----------------------------------------------------------

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status, payload, raw=None, extra_headers=()):
        data = raw if raw is not None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error_body(self, err):
        self.send(err.status, {"error_code": err.error_code, "message": err.message})

    def authorized(self):
        header = self.headers.get("Authorization", "")
        if self.server.bearer is not None:
            return header == f"Bearer {self.server.bearer}"
        expected = self.server.basic_auth
        if expected is None:
            return True
        token = base64.b64encode(expected.encode("utf-8")).decode("ascii")
        return header == f"Basic {token}"

    def dispatch(self, method):
        raw_body = self.read_body()  # always drain it, keep-alive depends on it
        path = urlsplit(self.path).path
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        try:
            if segments and segments[0] == "__control":
                self.send(200, self.control(method, segments[1:]))
                return
            self.server.count(f"{method} {path}")
            faults = self.server.faults
            if faults.delay_ms:
                time.sleep(faults.delay_ms / 1000)
            if not self.authorized():
                self.send(
                    401,
                    {"error_code": 401, "message": "Unauthorized"},
                    extra_headers=[("WWW-Authenticate", 'Basic realm="schema-registry"')],
                )
                return
            if faults.fail_status is not None:
                status = faults.fail_status
                raise HttpError(status, status * 100 + 1, "Injected failure")
            body = None
            if raw_body:
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise HttpError(400, 400, "Unrecognized request body: not JSON")
            result = self.route(method, segments, body)
            if isinstance(result, bytes):
                self.send(200, None, raw=result)
            else:
                self.send(200, result)
        except HttpError as err:
            self.send_error_body(err)
        except ValueError as err:  # e.g. a non-numeric id in a control path
            self.send_error_body(HttpError(400, 400, str(err)))

    # -- control endpoints ----------------------------------------------------

    def control(self, method, segments):
        server = self.server
        faults = server.faults
        with server.lock:
            if method == "GET" and segments == ["requests"]:
                return dict(server.requests)
            if method != "POST":
                raise HttpError(405, 405, "Method not allowed")
            if segments == ["reset-requests"]:
                server.requests.clear()
            elif segments == ["reset-faults"]:
                server.faults = Faults()
            elif len(segments) == 2 and segments[0] == "garbage":
                faults.garbage.add(int(segments[1]))
            elif len(segments) == 2 and segments[0] == "bad-schema":
                faults.bad_schema.add(int(segments[1]))
            elif len(segments) == 2 and segments[0] == "fail":
                faults.fail_status = int(segments[1])
            elif len(segments) == 2 and segments[0] == "delay-ms":
                faults.delay_ms = int(segments[1])
            else:
                raise HttpError(404, 404, "No such control endpoint")
        return {"ok": True}

    # -- the registry API ----------------------------------------------------

    def route(self, method, s, body):
        store = self.server.store
        with store.lock:
            n = len(s)
            # /schemas/...
            if method == "GET" and s == ["schemas", "types"]:
                return ["JSON", "PROTOBUF", "AVRO"]
            if method == "GET" and n >= 3 and s[:2] == ["schemas", "ids"]:
                schema_id = self.int_id(s[2])
                if n == 3:
                    return self.get_schema_by_id(schema_id)
                entry = store.schema(schema_id)
                pairs = store.subject_versions(entry["id"])
                if n == 4 and s[3] == "versions":
                    return [{"subject": sub, "version": v} for sub, v in pairs]
                if n == 4 and s[3] == "subjects":
                    return [sub for sub, _ in pairs]
            # /subjects/...
            if method == "GET" and s == ["subjects"]:
                return list(store.subjects)
            if n >= 2 and s[0] == "subjects":
                subject = s[1]
                if method == "POST" and n == 3 and s[2] == "versions":
                    schema_type, text, refs = parse_registration(body)
                    return {"id": store.register(subject, schema_type, text, refs)}
                if method == "POST" and n == 2:
                    return self.lookup(subject, body)
                if method == "GET" and n == 3 and s[2] == "versions":
                    if subject not in store.subjects:
                        raise not_found_subject(subject)
                    return list(range(1, len(store.subjects[subject]) + 1))
                if method == "GET" and n == 4 and s[2] == "versions":
                    number, entry = store.version_of(subject, s[3])
                    return version_response(subject, number, entry)
                if method == "GET" and n == 5 and s[2] == "versions" and s[4] == "schema":
                    # the bare schema text, as Confluent serves it
                    _, entry = store.version_of(subject, s[3])
                    return entry["schema"].encode("utf-8")
            # /config and /mode
            if s == ["config"] or (n == 2 and s[0] == "config"):
                return self.config(method, s[1] if n == 2 else None, body)
            if method == "GET" and (s == ["mode"] or (n == 2 and s[0] == "mode")):
                return {"mode": "READWRITE"}
            if method == "GET" and n == 4 and s[:2] == ["associations", "resources"]:
                # The serializers' default subject name strategy (confluent-kafka
                # 2.16's AssociatedNameStrategy) asks for topic associations
                # first; none here, so they fall back to TOPIC-key/TOPIC-value.
                return []
            if method == "GET" and s == ["contexts"]:
                return ["."]
            if method == "GET" and s == []:
                return {}
        raise HttpError(404, 404, f"HTTP 404 Not Found: {method} {self.path}")

    @staticmethod
    def int_id(text):
        if not re.fullmatch(r"-?[0-9]+", text):
            raise HttpError(404, 404, "HTTP 404 Not Found")
        return int(text)

    def get_schema_by_id(self, schema_id):
        faults = self.server.faults
        if schema_id in faults.garbage:
            return b"<html>this is not JSON {"
        if schema_id in faults.bad_schema:
            try:
                entry = self.server.store.schema(schema_id)
                schema_type = entry["schemaType"]
            except HttpError:
                entry, schema_type = None, "AVRO"
            broken = {"schemaType": schema_type, "schema": BAD_SCHEMA_TEXT[schema_type]}
            return schema_fields({**broken, "references": entry["references"] if entry else []})
        return schema_fields(self.server.store.schema(schema_id))

    def lookup(self, subject, body):
        store = self.server.store
        schema_type, text, refs = parse_registration(body)
        if subject not in store.subjects:
            raise not_found_subject(subject)
        entry = store.find(schema_type, text, refs)
        versions = store.subjects[subject]
        if entry is None or entry["id"] not in versions:
            raise not_found_schema()
        return version_response(subject, versions.index(entry["id"]) + 1, entry)

    def config(self, method, subject, body):
        store = self.server.store
        if method == "GET":
            level = store.subject_compatibility.get(subject, store.compatibility)
            return {"compatibilityLevel": level}
        if method == "PUT":
            level = (body or {}).get("compatibility", "NONE")
            if subject is None:
                store.compatibility = level
            else:
                store.subject_compatibility[subject] = level
            store.save()
            return {"compatibility": level}
        if method == "DELETE":
            level = store.subject_compatibility.pop(subject, store.compatibility)
            store.save()
            return {"compatibilityLevel": level}
        raise HttpError(405, 405, "Method not allowed")


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, store, basic_auth, bearer=None):
        super().__init__(address, Handler)
        self.store = store
        self.basic_auth = basic_auth
        self.bearer = bearer
        self.faults = Faults()
        self.lock = threading.Lock()  # guards faults and requests
        self.requests = {}

    def count(self, key):
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--state", help="JSON file keeping schemas across restarts")
    parser.add_argument("--basic-auth", metavar="USER:PASS", help="demand HTTP basic auth")
    parser.add_argument("--bearer", metavar="TOKEN", help="demand Authorization: Bearer TOKEN")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", help="the certificate's PEM private key")
    args = parser.parse_args()

    server = RegistryServer(("127.0.0.1", args.port), Store(args.state), args.basic_auth, args.bearer)
    if args.tls_cert:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    host, port = server.server_address[:2]
    print(f"listening {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
