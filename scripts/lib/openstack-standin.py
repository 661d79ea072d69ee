#!/usr/bin/python3
"""openstack-standin.py: the Glance and Neutron that banyan's OpenStack test harness (scripts/lib/openstack)
puts in front of a real Nova. Python standard library only.

Nova calls Glance when it boots a server and Neutron when it boots one with "networks": "none" and when it
deletes one; nothing else in a fake-driver test needs either. This process serves, with one thread per port:
  Glance  (--glance-port):  GET /, /versions, /v2/images, /v2/images/ID (the one image, --image-id),
                            /v2/images/ID/file (a few zero bytes), /v2/schemas/image and /v2/schemas/images
  Neutron (--neutron-port): GET /, /v2.0, /v2.0/extensions and any /v2.0/COLLECTION (an empty list, whatever
                            the filters), 404 for one item; other methods answer 404 (nothing exists)
No authentication: every request is accepted. Each request is logged to stderr as one line.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CREATED = "2026-01-01T00:00:00Z"
IMAGE_SIZE = 1048576

# The properties Nova reads from an image, with types lax enough for what this stand-in returns; any other
# property is a string (Glance's own schema says the same for additional properties).
IMAGE_SCHEMA = {
    "name": "image",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": ["null", "string"]},
        "status": {"type": "string"},
        "visibility": {"type": "string"},
        "protected": {"type": "boolean"},
        "os_hidden": {"type": "boolean"},
        "checksum": {"type": ["null", "string"]},
        "os_hash_algo": {"type": ["null", "string"]},
        "os_hash_value": {"type": ["null", "string"]},
        "owner": {"type": ["null", "string"]},
        "size": {"type": ["null", "integer"]},
        "virtual_size": {"type": ["null", "integer"]},
        "min_ram": {"type": "integer"},
        "min_disk": {"type": "integer"},
        "container_format": {"type": ["null", "string"]},
        "disk_format": {"type": ["null", "string"]},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "direct_url": {"type": "string"},
        "locations": {"type": "array"},
        "self": {"type": "string"},
        "file": {"type": "string"},
        "schema": {"type": "string"},
    },
    "additionalProperties": {"type": "string"},
    "links": [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ],
}


def image(image_id, name):
    return {
        "id": image_id,
        "name": name,
        "status": "active",
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "checksum": "b6d81b360a5672d80c27430f39153e2c",
        "os_hash_algo": "sha512",
        "os_hash_value": "0" * 128,
        "owner": None,
        "size": IMAGE_SIZE,
        "virtual_size": IMAGE_SIZE,
        "min_ram": 0,
        "min_disk": 0,
        "container_format": "bare",
        "disk_format": "raw",
        "created_at": CREATED,
        "updated_at": CREATED,
        "tags": [],
        "self": "/v2/images/" + image_id,
        "file": "/v2/images/" + image_id + "/file",
        "schema": "/v2/schemas/image",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "banyan-openstack-standin"
    kind = "?"  # set per server: "glance" or "neutron"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s %s\n" % (self.log_date_time_string(), self.kind, fmt % args))
        sys.stderr.flush()

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_bytes(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def drain(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 0:
            self.rfile.read(n)

    def base(self):
        return "http://%s" % (self.headers.get("Host") or "%s:%d" % self.server.server_address[:2])

    def do_GET(self):
        self.drain()
        path = urlsplit(self.path).path.rstrip("/")
        if self.kind == "glance":
            self.glance(path)
        else:
            self.neutron(path)

    do_HEAD = do_GET

    def not_found(self):
        self.drain()
        if self.kind == "neutron":
            self.send_json(404, {"NeutronError": {"type": "NotFound", "message": "not found", "detail": ""}})
        else:
            self.send_json(404, {"message": "not found"})

    do_POST = do_PUT = do_PATCH = do_DELETE = not_found

    def glance(self, path):
        img = self.server.image
        if path in ("", "/versions"):
            self.send_json(200 if path else 300, {"versions": [
                {"id": "v2.9", "status": "CURRENT", "links": [{"rel": "self", "href": self.base() + "/v2/"}]}]})
        elif path == "/v2/images":
            self.send_json(200, {"images": [img], "schema": "/v2/schemas/images", "first": "/v2/images"})
        elif path == "/v2/images/" + img["id"]:
            self.send_json(200, img)
        elif path == "/v2/images/" + img["id"] + "/file":
            self.send_bytes(b"\0" * 4096)
        elif path == "/v2/schemas/image":
            self.send_json(200, IMAGE_SCHEMA)
        elif path == "/v2/schemas/images":
            self.send_json(200, {"name": "images", "properties": {"images": {"type": "array", "items": IMAGE_SCHEMA},
                                                                   "schema": {"type": "string"},
                                                                   "first": {"type": "string"},
                                                                   "next": {"type": "string"}},
                                 "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                                           {"rel": "describedby", "href": "{schema}"}]})
        else:
            self.not_found()

    def neutron(self, path):
        if path.endswith(".json"):
            path = path[: -len(".json")]
        parts = [p for p in path.split("/") if p]
        if not parts:
            self.send_json(200, {"versions": [
                {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": self.base() + "/v2.0/"}]}]})
        elif parts == ["v2.0"]:
            self.send_json(200, {"resources": []})
        elif parts[0] == "v2.0" and len(parts) == 2:
            self.send_json(200, {parts[1].replace("-", "_"): []})
        else:
            self.not_found()


def serve(kind, addr, port, image_doc):
    handler = type(kind.capitalize() + "Handler", (Handler,), {"kind": kind})
    server = ThreadingHTTPServer((addr, port), handler)
    server.daemon_threads = True
    server.image = image_doc
    return server


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--glance-port", type=int, required=True)
    ap.add_argument("--neutron-port", type=int, required=True)
    ap.add_argument("--image-id", required=True)
    ap.add_argument("--image-name", default="banyan-test-image")
    ap.add_argument("--state-dir", help="only to name this process's state on its command line")
    args = ap.parse_args()
    doc = image(args.image_id, args.image_name)
    servers = [serve("glance", args.addr, args.glance_port, doc), serve("neutron", args.addr, args.neutron_port, doc)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    sys.stderr.write("standin: glance on %s:%d, neutron on %s:%d\n"
                     % (args.addr, args.glance_port, args.addr, args.neutron_port))
    sys.stderr.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
