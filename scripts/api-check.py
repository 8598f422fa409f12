#!/usr/bin/env python3
"""Check api/swagger.yaml against itself and against a running peerd, offline.

    python3 scripts/api-check.py target/debug/peerd [api/swagger.yaml]

1. Validates the spec with openapi-spec-validator. When this interpreter lacks it (or PyYAML),
   a venv under ${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools} gets it from PyPI and the script
   re-runs itself there.
2. Starts a small HTTP file server on 127.0.0.1 (this interpreter running UPSTREAM_SERVER: one
   file with an ETag, paths answering 403 and 500, Range ignored; under /v2/ a redirect to a
   metadata address and a manifest sent as text/plain) as the /blobs upstream and a second
   registry, and the peerd binary on 127.0.0.1 with free ports, --no-p2p (so no peer listener),
   a containerd socket that does not exist, a closed loopback port as its default registry,
   169.254.169.254 as a mirrored registry (refused before any connection), and
   blobs.allowed_hosts = that file server and another closed port: nothing leaves the machine.
3. Sends a request for every path and method in the spec to every listener its `servers` name
   (example values, plus variants: the `ns` example, header examples, a malformed Range,
   invalid path values) and checks that the status is one the operation declares, that error
   bodies are `application/json` OCI errors with a code the status allows, and that required
   headers are there. Methods a path does not declare must get the status in its
   `x-peerd-other-methods` (405 with `Allow: GET, HEAD` under /v2 and /blobs). Unknown routes
   must get 404, and so must every path on a listener its `servers` do not name (/blobs-chunk
   and /swarm on the front end, /blobs and health on the peer listener, ...). A server entry
   marked `x-peerd-requires` (the metrics listener's /debug, `metrics.debug`) that the peerd
   under test lacks must answer the unknown route's 404 (`no route for <path>`).
   On the peer listener every request is signed as another peerd signs it (HMAC over method,
   target, Range, timestamp, nonce, node) and every answer's signature is verified; the same
   request unsigned or signed with another secret must get 401.
4. /v2 refusals: an upstream on a metadata address, a redirect to one (an IPv6 NAT64 form) get
   502 `DENIED`; a manifest sent as text/plain gets 502 `MANIFEST_INVALID`.
5. /blobs in detail, with exact statuses, codes, headers and bytes: whole file, HEAD, single,
   open-ended, suffix and cross-chunk ranges, 416s, refusals (allow-list, metadata address,
   credentials, upstream 403/500/404, unreachable upstream), the query passed upstream with
   If-Match, and the cached file served after the upstream is stopped.
6. A second peerd with p2p on and a cluster secret (127.0.0.1, its own --peer-addr, no
   bootstrap peers, metrics.debug on): the generic checks of step 3 on its peer and metrics
   listeners; /blobs-chunk answered from the cache with the chunk's sha256 after its front end
   read the file, unsigned or wrongly signed 401, a replayed request 401, a request whose
   Range was changed after signing 401, `fetch=1&wait=` answers; /swarm with no download in
   progress: signed 404 `BLOB_UNKNOWN`, a malformed digest signed 400 `DIGEST_INVALID`, a
   chunk size or index that is not a number the framework's plain-text 404.

Every process started is stopped by PID at the end. Exit 1 on any mismatch, listing each one.
"""

import hashlib
import hmac
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC = os.path.normpath(os.path.join(HERE, "..", "api", "swagger.yaml"))
METHODS = ["get", "head", "put", "post", "delete", "patch", "options", "trace"]
# Listener of a path, by the default port of its server entries.
FRONT_PORT, PEER_PORT, METRICS_PORT = "5000", "5001", "5004"


def die(msg):
    print(f"api-check: {msg}", file=sys.stderr)
    sys.exit(1)


def ensure_tools():
    """Import yaml and openapi_spec_validator, or re-run this script in a venv that has them."""
    try:
        import openapi_spec_validator  # noqa: F401
        import yaml  # noqa: F401

        return
    except ImportError:
        pass
    if os.environ.get("PEERD_API_CHECK_IN_VENV"):
        die("openapi-spec-validator still missing inside the tools venv")
    tools = os.environ.get("PEERD_TOOLS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "peerd-tools")
    venv = os.path.join(tools, "api-check-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        print(f"api-check: installing openapi-spec-validator into {venv}", file=sys.stderr)
        os.makedirs(tools, exist_ok=True)
        if subprocess.call([sys.executable, "-m", "venv", venv]) != 0:
            die("cannot create a venv (on Debian: apt-get install python3-venv)")
    if subprocess.call([py, "-c", "import openapi_spec_validator, yaml"], stderr=subprocess.DEVNULL) != 0:
        if subprocess.call([py, "-m", "pip", "install", "-q", "openapi-spec-validator"]) != 0:
            die("pip install openapi-spec-validator failed")
    env = dict(os.environ, PEERD_API_CHECK_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


def validate_spec(spec):
    try:
        from openapi_spec_validator import validate
    except ImportError:  # openapi-spec-validator < 0.7
        from openapi_spec_validator import validate_spec as validate
    try:
        validate(spec)
    except Exception as e:  # the validator's error types differ between versions
        die(f"spec is not valid OpenAPI: {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Spec:
    def __init__(self, doc):
        self.doc = doc

    def resolve(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = self.doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def code_enum(self, schema):
        """Allowed `errors[].code` values of an OCI error schema, or None if it is not one."""
        schema = self.resolve(schema)
        errors = self.resolve(schema.get("properties", {}).get("errors", {}))
        items = self.resolve(errors.get("items", {}))
        allowed = None
        for part in [items] + [self.resolve(p) for p in items.get("allOf", [])]:
            enum = self.resolve(part.get("properties", {}).get("code", {})).get("enum")
            if enum:
                allowed = set(enum) if allowed is None else allowed & set(enum)
        return allowed if errors else None


def example_values(param):
    if "example" in param:
        return [param["example"]]
    if "examples" in param:
        return [e["value"] for e in param["examples"].values()]
    schema = param.get("schema", {})
    if "example" in schema:
        return [schema["example"]]
    if "enum" in schema:
        return [schema["enum"][0]]
    if "default" in schema:
        return [schema["default"]]
    return []


# Values that break each path parameter's grammar (each must get 400).
INVALID_PATH = {"name": "Not_A_Valid/NAME", "reference": "sha256:nothex", "digest": "md5:abc", "url": "ftp://127.0.0.1/f"}

# /blobs test settings: small chunks so a small file spans several (4 KiB is the smallest allowed).
CHUNK = 4096
FILE_SIZE = 3 * CHUNK + 1234
SECRET = "api-check-cluster-secret-0001"

# The /blobs upstream, run as `python3 -c UPSTREAM_SERVER PORT DIR LOG`: files from DIR with an
# ETag (size and mtime), /denied/* -> 403, /broken/* -> 500; Range is ignored (200, whole file),
# so peerd has to cut chunks out itself. Each request is logged as "METHOD PATH RANGE IF-MATCH".
UPSTREAM_SERVER = r"""
import http.server, os, sys
port, root, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *a):
        pass
    def route(self):
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path} {self.headers.get('Range')} {self.headers.get('If-Match')}\n")
        if self.path.startswith("/v2/redirect/"):
            # A registry (or a hijacked one) redirecting to the metadata service, in a NAT64 form.
            self.send_response(307)
            self.send_header("Location", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        if self.path.startswith("/v2/textplain/"):
            # A manifest-shaped body that does not come as a manifest.
            body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            return False
        for prefix, status in (("/denied/", 403), ("/broken/", 500)):
            if self.path.startswith(prefix):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
        return True
    def do_GET(self):
        if self.route():
            super().do_GET()
    def do_HEAD(self):
        if self.route():
            super().do_HEAD()
    def end_headers(self):
        p = os.path.join(root, self.path.split("?")[0].lstrip("/"))
        if os.path.isfile(p):
            st = os.stat(p)
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
        super().end_headers()
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class Checker:
    def __init__(self, spec, ports, upstream, path_values=None, features=(), signed=()):
        self.spec = spec
        self.ports = ports  # listener default port -> actual port (the listeners this peerd has)
        self.upstream = upstream
        self.path_values = path_values or {}  # path parameter -> values used instead of its examples
        self.features = set(features)  # `x-peerd-requires` values the peerd under test has
        self.signed = set(signed)  # actual ports where every request is signed (the peer listener)
        self.failures = []
        self.count = 0

    def fail(self, what, msg):
        self.failures.append(f"{what}: {msg}")

    def send(self, port, method, target, headers, sign=True):
        """One request. On a signed port it is signed (unless sign=False) and the answer's
        signature is verified (every answer but a 401, or a 503 of the replay guard)."""
        headers = dict(headers)
        if port in self.signed and sign:
            headers.update(peer_headers(target, method=method.upper(), range_=headers.get("Range", "")))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method.upper(), target, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status, h = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if port in self.signed and sign and status != 401 and not (status == 503 and b"UNAVAILABLE" in body):
            if h.get("x-peerd-signature") != response_signature(headers["X-Peerd-Nonce"], status, h):
                self.fail(f"{method.upper()} :{port}{target} (signed)", f"{status} answer signature does not verify: {h.get('x-peerd-signature')!r}")
        return status, h, body

    def servers(self, item):
        return item.get("servers") or self.spec.doc.get("servers", [])

    def listeners(self, item):
        """(actual port, requirement the peerd lacks or None) of each listener of a path it has."""
        out = []
        for s in self.servers(item):
            default = s["variables"]["port"]["default"]
            if default in self.ports:
                need = s.get("x-peerd-requires")
                out.append((self.ports[default], need if need and need not in self.features else None))
        return out

    def check_response(self, what, method, status, headers, body, resp, sent_headers, port):
        resp = self.spec.resolve(resp)
        content = resp.get("content", {})
        ctype = headers.get("content-type")
        types = [t.split(";")[0].strip() for t in content]
        if content:
            if ctype is None:
                if "application/json" in types:
                    self.fail(what, f"{status} without Content-Type; the spec declares application/json")
                elif "without a Content-Type header" not in resp.get("description", ""):
                    self.fail(what, f"{status} without Content-Type; the spec declares {types}")
            elif ctype.split(";")[0].strip() not in types:
                self.fail(what, f"{status} Content-Type {ctype!r}, the spec declares {types}")
        if status >= 400 and "application/json" in types and ctype != "application/json":
            self.fail(what, f"error {status} has Content-Type {ctype!r}, not application/json")
        if "application/json" in types and method != "head":
            try:
                doc = json.loads(body)
            except ValueError:
                self.fail(what, f"{status} body is not JSON: {body[:120]!r}")
                doc = None
            allowed = self.spec.code_enum(content.get("application/json", {}).get("schema", {}))
            if doc is not None and allowed is not None:
                errs = doc.get("errors") if isinstance(doc, dict) else None
                if not isinstance(errs, list) or len(errs) != 1:
                    self.fail(what, f"{status} body is not an OCI error: {doc}")
                else:
                    e = errs[0]
                    missing = {"code", "message", "detail"} - set(e)
                    if missing:
                        self.fail(what, f"{status} error lacks {sorted(missing)}: {e}")
                    if e.get("code") not in allowed:
                        self.fail(what, f"{status} code {e.get('code')!r} not among {sorted(allowed)}")
        correlated = port in (self.ports.get(FRONT_PORT), self.ports.get(PEER_PORT))
        for name, h in resp.get("headers", {}).items():
            h = self.spec.resolve(h)
            if name.lower() == "content-type":
                continue  # checked above against the media types
            got = headers.get(name.lower())
            if name.lower() == "x-ms-peerd-correlationid" and not correlated:
                continue  # set by the front end and the peer listener only
            if name.lower() == "x-peerd-signature" and port in self.signed and got is None:
                self.fail(what, f"{status} answer of the peer listener is not signed")
            if h.get("required") and got is None:
                self.fail(what, f"{status} lacks required header {name}")
            enum = h.get("schema", {}).get("enum")
            if got is not None and enum and got not in enum:
                self.fail(what, f"{status} header {name}: {got!r} not among {enum}")
        cid = sent_headers.get("X-MS-Peerd-CorrelationId")
        if correlated and cid and headers.get("x-ms-peerd-correlationid") != cid:
            self.fail(what, f"correlation id not echoed: sent {cid!r}, got {headers.get('x-ms-peerd-correlationid')!r}")

    def cases(self, path, item, method, op):
        """(label, target, headers, expected status or None) for one operation."""
        params = {}
        for p in item.get("parameters", []) + op.get("parameters", []):
            p = self.spec.resolve(p)
            params[(p["in"], p["name"])] = p  # operation-level wins
        path_params = [p for (where, _), p in params.items() if where == "path"]
        choices = [[(p["name"], v) for v in self.path_values.get(p["name"]) or example_values(p)] for p in path_params]
        combos = [dict(c) for c in itertools.product(*choices)] if choices else [{}]

        def target(values, query):
            t = path
            for k, v in values.items():
                t = t.replace("{" + k + "}", str(v))
            return t + ("?" + urllib.parse.urlencode(query) if query else "")

        required_q = {p["name"]: example_values(p)[0] for (w, _), p in params.items() if w == "query" and p.get("required")}
        optional_q = {
            p["name"]: example_values(p)[0]
            for (w, _), p in params.items()
            if w == "query" and not p.get("required") and example_values(p)
        }
        hdr_examples = {
            p["name"]: example_values(p)[0] for (w, _), p in params.items() if w == "header" and example_values(p)
        }
        out = []
        for values in combos:
            tag = ",".join(f"{k}={v}" for k, v in values.items())
            out.append((f"minimal {tag}", target(values, required_q), {}, None))
            if optional_q:
                q = dict(required_q, **optional_q)
                # The `ns` example (docker.io) is not mirrored here: 404 without leaving the machine.
                expect = 404 if "ns" in optional_q and path.startswith("/v2/{name}/") else None
                out.append((f"optional query {tag}", target(values, q), {}, expect))
            if hdr_examples:
                out.append((f"header examples {tag}", target(values, required_q), dict(hdr_examples), None))
            if ("header", "Range") in params:
                out.append((f"malformed Range {tag}", target(values, required_q), {"Range": "bytes=5-2"}, 416))
        if required_q:
            out.append(("required query missing", target(combos[0], {}), {}, None))
        if "400" in op.get("responses", {}):
            for p in path_params:
                if p["name"] not in INVALID_PATH:
                    continue  # numbers (chunk_size, index): a non-number gets the framework's 404, not 400
                bad = dict(combos[0], **{p["name"]: INVALID_PATH[p["name"]]})
                out.append((f"invalid {p['name']}", target(bad, required_q), {}, 400))
        return out

    def example_target(self, path, item):
        values = {}
        for p in item.get("parameters", []):
            p = self.spec.resolve(p)
            if p["in"] == "path":
                values[p["name"]] = (self.path_values.get(p["name"]) or example_values(p))[0]
        for k, v in values.items():
            path = path.replace("{" + k + "}", str(v))
        return path

    def expect_401(self, port, method, tgt, label):
        """The peer listener: the request unsigned, and signed with another secret, gets 401."""
        for how, extra in (
            ("unsigned", {"X-MS-Peerd-RequestFromPeer": "true"}),
            ("wrong secret", peer_headers(tgt, "not-the-cluster-secret", method=method.upper())),
        ):
            what = f"{method.upper()} :{port}{tgt} ({label}, {how})"
            status, headers, body = self.send(port, method, tgt, extra, sign=False)
            self.count += 1
            if status != 401:
                self.fail(what, f"expected 401, got {status}; body {body[:200]!r}")
                continue
            if method != "head" and b'"code":"UNAUTHORIZED"' not in body:
                self.fail(what, f"401 without code UNAUTHORIZED: {body[:200]!r}")
            if "x-peerd-signature" in headers:
                self.fail(what, "a 401 must not be signed")

    def run(self):
        paths = self.spec.doc["paths"]
        for path, item in paths.items():
            mine = self.listeners(item)
            for port, lacking in mine:
                for method in METHODS:
                    if method not in item:
                        continue
                    op = item[method]
                    declared = {int(s) for s in op["responses"] if s != "default"}
                    for label, tgt, hdrs, expect in self.cases(path, item, method, op):
                        if lacking:
                            expect = 404
                        elif expect not in declared:
                            expect = None  # e.g. PUT: 405 whatever the variant
                        what = f"{method.upper()} :{port}{tgt} ({label})"
                        status, headers, body = self.send(port, method, tgt, hdrs)
                        self.count += 1
                        if lacking:
                            # Not on this listener without the setting: the unknown route's 404.
                            if status != 404 or (method != "head" and b"no route for" not in body):
                                self.fail(what, f"requires {lacking}: expected the unknown route's 404, got {status} {body[:200]!r}")
                            continue
                        if status not in declared and "default" not in op["responses"]:
                            self.fail(what, f"status {status} is not declared (declared: {sorted(declared)}); body {body[:200]!r}")
                            continue
                        if expect is not None and status != expect:
                            self.fail(what, f"expected {expect}, got {status}; body {body[:200]!r}")
                        resp = op["responses"].get(str(status)) or op["responses"].get("default")
                        self.check_response(what, method, status, headers, body, resp, hdrs, port)
                        if port in self.signed and label.startswith("minimal"):
                            self.expect_401(port, method, tgt, label)
                self.check_undeclared(path, item, port)
            # Every listener this peerd has that the path does not name: 404, never content.
            named = {p for p, _ in mine} | {
                self.ports.get(s["variables"]["port"]["default"]) for s in self.servers(item)
            }
            for port in sorted(set(self.ports.values()) - named):
                tgt = self.example_target(path, item)
                what = f"GET :{port}{tgt} (not a path of this listener)"
                status, headers, body = self.send(port, "get", tgt, {})
                self.count += 1
                if status != 404 or headers.get("content-type") != "application/json" or b'"code":"UNSUPPORTED"' not in body:
                    self.fail(what, f"expected 404 application/json UNSUPPORTED, got {status} {headers.get('content-type')!r} {body[:160]!r}")
                elif not path.startswith("/v2/") and b"no route for" not in body:
                    self.fail(what, f"expected the unknown route's 404, got {body[:160]!r}")
        for port in self.ports.values():
            what = f"GET :{port}/no/such/route"
            status, headers, body = self.send(port, "get", "/no/such/route", {})
            self.count += 1
            if status != 404 or headers.get("content-type") != "application/json" or b"UNSUPPORTED" not in body:
                self.fail(what, f"unknown route: expected 404 application/json UNSUPPORTED, got {status} {headers.get('content-type')!r} {body[:120]!r}")
            if port in self.signed:
                self.expect_401(port, "get", "/no/such/route", "unknown route")

    def check_undeclared(self, path, item, port):
        other = item.get("x-peerd-other-methods")
        if not other:
            self.fail(path, "no x-peerd-other-methods: what do undeclared methods get?")
            return
        tgt = self.example_target(path, item)
        undeclared = [m for m in METHODS if m not in item] + ["propfind"]
        for method in undeclared:
            what = f"{method.upper()} :{port}{tgt} (undeclared method)"
            status, headers, body = self.send(port, method, tgt, {})
            self.count += 1
            if status != other["status"]:
                self.fail(what, f"expected {other['status']}, got {status}")
                continue
            if headers.get("content-type") != "application/json":
                self.fail(what, f"Content-Type {headers.get('content-type')!r}, not application/json")
            if method != "head" and other.get("code") and f'"code":"{other["code"]}"'.encode() not in body:
                self.fail(what, f"body lacks code {other['code']}: {body[:120]!r}")
            if status == 405 and headers.get("allow") != "GET, HEAD":
                self.fail(what, f"405 without 'Allow: GET, HEAD' (got {headers.get('allow')!r})")

    def v2_refusals(self, port, up_port):
        """Upstream connections the address policy refuses (502 DENIED) and a manifest that is
        not one (502 MANIFEST_INVALID); see UPSTREAM_SERVER's /v2/ paths."""
        digest = "sha256:" + "ab" * 32
        local_ns = urllib.parse.quote(f"127.0.0.1:{up_port}")
        for spec_path, target, status, code in [
            ("/v2/{name}/manifests/{reference}", "/v2/app/manifests/v1?ns=169.254.169.254", 502, "DENIED"),
            ("/v2/{name}/blobs/{digest}", f"/v2/app/blobs/{digest}?ns=169.254.169.254", 502, "DENIED"),
            ("/v2/{name}/manifests/{reference}", f"/v2/redirect/manifests/v1?ns={local_ns}", 502, "DENIED"),
            ("/v2/{name}/blobs/{digest}", f"/v2/redirect/blobs/{digest}?ns={local_ns}", 502, "DENIED"),
            ("/v2/{name}/manifests/{reference}", f"/v2/textplain/manifests/v1?ns={local_ns}", 502, "MANIFEST_INVALID"),
        ]:
            for method in ("get", "head"):
                if method == "head" and code == "MANIFEST_INVALID":
                    continue  # a HEAD has no body to parse
                what = f"{method.upper()} :{port}{target}"
                got, h, body = self.send(port, method, target, {})
                self.count += 1
                op = self.spec.doc["paths"][spec_path][method]
                resp = op["responses"].get(str(got))
                if resp is None:
                    self.fail(what, f"status {got} is not declared for {spec_path}; body {body[:200]!r}")
                    continue
                self.check_response(what, method, got, h, body, resp, {}, port)
                if got != status or (method == "get" and f'"code":"{code}"'.encode() not in body):
                    self.fail(what, f"expected {status} {code}, got {got} {body[:200]!r}")


def wait_http(proc, port, path, what, timeout=30):
    """Wait until GET path on port answers 200 (any answer when path is None)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path or "/")
            status = c.getresponse().status
            c.close()
            if path is None or status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout} s")


def start_peerd(binary, tmp, name, http_port, metrics_port, upstream, blobs_hosts, up_port, p2p=None):
    """`p2p`: None for --no-p2p (no peer listener), else (p2p port, peer listener port)."""
    log = open(os.path.join(tmp, f"{name}.log"), "wb")
    # Only PEERD_<SECTION>__<KEY> variables are configuration: drop them so the run is the same anywhere.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PEERD_") and "__" in k)}
    env.update(
        PEERD_BLOBS__ALLOWED_HOSTS=json.dumps(blobs_hosts),
        PEERD_BLOBS__CHUNK_SIZE=str(CHUNK),
        PEERD_BLOBS__MAX_CACHE_BYTES=str(16 * CHUNK),
    )
    p2p_args = ["--no-p2p"]
    if p2p:  # p2p on, alone (no bootstrap peers: ready at once), with a cluster secret
        p2p_args = ["--p2p-addr", f"127.0.0.1:{p2p[0]}", "--peer-addr", f"127.0.0.1:{p2p[1]}"]
        env["PEERD_P2P__SECRET"] = SECRET
        env["PEERD_METRICS__DEBUG"] = "true"
    # Registries: a closed port (the default), the file server (redirects, a text/plain
    # "manifest") and the metadata address (refused by the address policy before any connection).
    local = f"127.0.0.1:{up_port}"
    cmd = [
        binary, "run", *p2p_args,
        "--http-addr", f"127.0.0.1:{http_port}",
        "--metrics-addr", f"127.0.0.1:{metrics_port}",
        "--containerd-socket", os.path.join(tmp, "no-containerd.sock"),
        "--data-dir", os.path.join(tmp, f"{name}-data"),
        "--default-ns", upstream, "--mirror-host", upstream, "--plain-http-host", upstream,
        "--mirror-host", local, "--plain-http-host", local, "--mirror-host", "169.254.169.254",
        "--log-level", "warn",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(proc, http_port, "/readyz", name)
    except Exception:
        stop(proc)
        raise
    return proc


def start_file_server(tmp, port, data):
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    with open(os.path.join(root, "file.bin"), "wb") as f:
        f.write(data)
    log = os.path.join(tmp, "upstream-requests.log")
    open(log, "w").close()
    err = open(os.path.join(tmp, "upstream.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM_SERVER, str(port), root, log], stdout=err, stderr=err)
    try:
        wait_http(proc, port, None, "file server")
    except Exception:
        stop(proc)
        raise
    return proc, log


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def peer_headers(target, secret=SECRET, method="GET", range_=""):
    """Headers of a signed peer request, as another peerd sends them (src/peer/auth.rs
    `sign_request`: the lines req, method, path?query, Range ("" without one), timestamp, nonce,
    node). Each call has a fresh nonce: the peer listener accepts a nonce once."""
    key = hashlib.sha256(b"peerd-http-v1\x00" + secret.encode()).digest()
    ts, nonce, node = str(int(time.time())), uuid.uuid4().hex, "12D3KooWApiCheck"
    msg = "".join(f"{p}\n" for p in ["req", method, target, range_, ts, nonce, node]).encode()
    return {
        "X-MS-Peerd-RequestFromPeer": "true",
        "X-MS-Peerd-Node": node,
        "X-Peerd-Timestamp": ts,
        "X-Peerd-Nonce": nonce,
        "X-Peerd-Signature": hmac.new(key, msg, hashlib.sha256).hexdigest(),
    }


def response_signature(nonce, status, headers, secret=SECRET):
    key = hashlib.sha256(b"peerd-http-v1\x00" + secret.encode()).digest()
    parts = ["resp", nonce, str(status), headers.get("docker-content-digest", ""), headers.get("content-range", "")]
    return hmac.new(key, "".join(f"{p}\n" for p in parts).encode(), hashlib.sha256).hexdigest()


class BlobsCheck:
    """/blobs and /blobs-chunk with exact expectations; every answer is also checked against the spec."""

    def __init__(self, checker, port, up_port, closed_port, data, upstream_log):
        self.c = checker
        self.port = port
        self.base = f"http://127.0.0.1:{up_port}"
        self.closed = f"http://127.0.0.1:{closed_port}"
        self.data = data
        self.upstream_log = upstream_log
        self.etag = None

    def req(self, spec_path, method, target, headers=None, status=None, code=None, port=None, sign=True):
        """One request (signed on the peer listener unless sign=False), checked against the spec."""
        port = port or self.port
        headers = headers or {}
        what = f"{method} :{port}{target} {headers.get('Range', '')}".rstrip()
        got, h, body = self.c.send(port, method, target, headers, sign=sign)
        self.c.count += 1
        op = self.c.spec.doc["paths"][spec_path][method.lower()]
        resp = op["responses"].get(str(got))
        if resp is None:
            self.c.fail(what, f"status {got} is not declared for {spec_path}; body {body[:200]!r}")
        else:
            self.c.check_response(what, method.lower(), got, h, body, resp, headers, port)
        if status is not None and got != status:
            self.c.fail(what, f"expected {status}, got {got}; body {body[:200]!r}")
        if code is not None and f'"code":"{code}"'.encode() not in body:
            self.c.fail(what, f"expected code {code}: {body[:200]!r}")
        return got, h, body

    def blob(self, method, url, headers=None, status=None, code=None):
        return self.req("/blobs/{url}", method, f"/blobs/{url}", headers, status, code)

    def file_id(self):
        """sha256(URL without query, validator (the ETag here), size, chunk size), as peerd computes it."""
        return hashlib.sha256(f"{self.base}/file.bin\n{self.etag}\n{len(self.data)}\n{CHUNK}".encode()).hexdigest()

    def run(self):
        c, data, size, url = self.c, self.data, len(self.data), f"{self.base}/file.bin"
        _, h, body = self.blob("GET", url, status=200)
        self.etag = h.get("etag")
        if body != data:
            c.fail(f"GET {url}", f"body differs from the file ({len(body)} of {size} bytes)")
        if not self.etag:
            c.fail(f"GET {url}", "no ETag passed on from the upstream")
        _, h, body = self.blob("HEAD", url, status=200)
        if h.get("content-length") != str(size) or body:
            c.fail(f"HEAD {url}", f"Content-Length {h.get('content-length')!r}, body {len(body)} bytes")
        # Single, cross-chunk, open-ended and suffix ranges (the upstream ignores Range: peerd slices).
        for rng, first, last in [
            ("bytes=10-19", 10, 19),
            (f"bytes={CHUNK - 100}-{2 * CHUNK + 99}", CHUNK - 100, 2 * CHUNK + 99),
            (f"bytes={size - 100}-", size - 100, size - 1),
            ("bytes=-77", size - 77, size - 1),
            (f"bytes=5-{size + 1000}", 5, size - 1),
        ]:
            for method in ("GET", "HEAD"):
                _, h, body = self.blob(method, url, {"Range": rng}, status=206)
                want_cr = f"bytes {first}-{last}/{size}"
                if h.get("content-range") != want_cr or h.get("content-length") != str(last - first + 1):
                    c.fail(f"{method} {url} {rng}", f"Content-Range {h.get('content-range')!r} (want {want_cr!r}), Content-Length {h.get('content-length')!r}")
                if method == "GET" and body != data[first : last + 1]:
                    c.fail(f"GET {url} {rng}", "bytes differ")
        _, h, _ = self.blob("GET", url, {"Range": f"bytes={size}-"}, status=416, code="RANGE_INVALID")
        if h.get("content-range") != f"bytes */{size}":
            c.fail(f"GET {url} bytes={size}-", f"Content-Range {h.get('content-range')!r}, want 'bytes */{size}'")
        _, h, _ = self.blob("GET", url, {"Range": "bytes=5-2"}, status=416, code="RANGE_INVALID")
        if "content-range" in h:
            c.fail(f"GET {url} bytes=5-2", "a malformed range must not carry Content-Range")
        self.blob("GET", url, {"Range": "bytes=0-1,5-6"}, status=200)
        # The query goes upstream as is (HEAD), and chunks are read with If-Match: <ETag>.
        self.blob("GET", f"{url}?sv=2024&sig=api%2Fcheck", {"Range": "bytes=0-0"}, status=206)
        with open(self.upstream_log) as f:
            seen = f.read().splitlines()
        if not any(line.startswith("HEAD /file.bin?sv=2024&sig=api%2Fcheck ") for line in seen):
            c.fail("upstream", f"the HEAD with the client's query never arrived: {seen[-5:]}")
        if not any(line.startswith("GET /file.bin ") and line.endswith(f" {self.etag}") and "bytes=" in line for line in seen):
            c.fail("upstream", f"no ranged GET with If-Match: {self.etag}: {seen[-5:]}")
        # Refusals.
        for target, status, code in [
            (f"{self.base}/missing.bin", 404, "BLOB_UNKNOWN"),
            (f"{self.base}/denied/file.bin", 403, "DENIED"),
            (f"{self.base}/broken/file.bin", 502, "UNKNOWN"),
            (f"{self.closed}/file.bin", 503, "UNAVAILABLE"),
            (f"http://127.0.0.2:{self.base.rsplit(':', 1)[1]}/file.bin", 403, "DENIED"),
            (f"https://127.0.0.1:{self.base.rsplit(':', 1)[1]}/file.bin", 403, "DENIED"),
            ("http://169.254.169.254/latest/meta-data/", 403, "DENIED"),
            (f"http://user:pass@127.0.0.1:{self.base.rsplit(':', 1)[1]}/file.bin", 400, "NAME_INVALID"),
            ("ftp://127.0.0.1/file.bin", 400, "NAME_INVALID"),
            ("not-a-url", 400, "NAME_INVALID"),
        ]:
            self.blob("GET", target, status=status, code=code)
        # The front end has no peer endpoints, whatever headers a client sends.
        fid = self.file_id()
        for hdrs in ({}, {"X-MS-Peerd-RequestFromPeer": "true"}):
            status, h, body = c.send(self.port, "GET", f"/blobs-chunk/{fid}/0", hdrs)
            c.count += 1
            if status != 404 or b"no route for" not in body:
                c.fail(f"GET :{self.port}/blobs-chunk/{fid}/0 {hdrs}", f"the front end must not serve chunks: {status} {body[:120]!r}")

    def after_upstream_stopped(self):
        """The upstream is gone: cached chunks are served on the metadata last confirmed, and
        (stale-if-error) under another query of the same URL; a file never validated gets 503."""
        url = f"{self.base}/file.bin"
        for u in (url, f"{url}?other=sas"):
            _, _, body = self.blob("GET", u, status=200)
            if body != self.data:
                self.c.fail(f"GET {u} (upstream stopped)", "the cached file was not served whole")
        self.blob("GET", f"{self.base}/never-validated.bin?never=confirmed", status=503, code="UNAVAILABLE")

    def signed_peer(self, front, peer):
        """A peerd with a cluster secret: its front end reads the file, and /blobs-chunk on its
        peer listener serves the cached chunks, signed both ways, each nonce once."""
        c, chunk, data = self.c, "/blobs-chunk/{id}/{index}", self.data
        size = len(data)
        _, h, body = self.req("/blobs/{url}", "GET", f"/blobs/{self.base}/file.bin", {}, 200, port=front)
        self.etag = h.get("etag")
        if body != data:
            c.fail(f"GET :{front}/blobs/{self.base}/file.bin", "body differs from the file")
        fid, last = self.file_id(), (size - 1) // CHUNK
        target = f"/blobs-chunk/{fid}/0"
        for hdrs in ({}, {"X-MS-Peerd-RequestFromPeer": "true"}, peer_headers(target, "not-the-cluster-secret")):
            _, h, body = self.req(chunk, "GET", target, hdrs, 401, "UNAUTHORIZED", port=peer, sign=False)
            if b"\0" in body or len(body) > 400 or "x-peerd-signature" in h:
                c.fail(f"GET :{peer}{target} unauthenticated", f"a 401 carries no content and no signature: {body[:80]!r}")
        for index in (0, last):
            _, h, body = self.req(chunk, "GET", f"/blobs-chunk/{fid}/{index}", {}, 200, port=peer)
            if body != data[index * CHUNK : (index + 1) * CHUNK]:
                c.fail(f"GET :{peer}/blobs-chunk/{fid}/{index}", "bytes differ from the file's chunk")
            if h.get("docker-content-digest") != "sha256:" + hashlib.sha256(body).hexdigest():
                c.fail(f"GET :{peer}/blobs-chunk/{fid}/{index}", f"Docker-Content-Digest {h.get('docker-content-digest')!r} is not the body's sha256")
        self.req(chunk, "GET", f"/blobs-chunk/{fid}/{last + 1}", {}, 404, "BLOB_UNKNOWN", port=peer)
        for target, status in [
            # fetch=1: a cached chunk is served; an index past the end or a file never read is
            # not fetched (this node knows no URL for it): 404 at once, not 425 after `wait`.
            (f"/blobs-chunk/{fid}/0?fetch=1&wait=100", 200),
            (f"/blobs-chunk/{fid}/99?fetch=1&wait=100", 404),
            (f"/blobs-chunk/{'0' * 64}/0?fetch=1&wait=100", 404),
        ]:
            _, _, body = self.req(chunk, "GET", target, {}, status, port=peer)
            if status == 200 and body != data[:CHUNK]:
                c.fail(f"GET :{peer}{target} (signed)", "bytes differ from the file's first chunk")
        # A captured request cannot be sent again, nor its Range changed.
        target = f"/blobs-chunk/{fid}/0"
        hdrs = peer_headers(target)
        self.req(chunk, "GET", target, hdrs, 200, port=peer, sign=False)
        self.req(chunk, "GET", target, hdrs, 401, "UNAUTHORIZED", port=peer, sign=False)
        blob = f"/v2/app/blobs/sha256:{'cd' * 32}"
        hdrs = dict(peer_headers(blob, range_="bytes=0-9"), Range="bytes=0-9")
        self.req("/v2/{name}/blobs/{digest}", "GET", blob, hdrs, 404, "BLOB_UNKNOWN", port=peer, sign=False)
        hdrs = dict(peer_headers(blob, range_="bytes=0-9"), Range="bytes=0-99999")
        self.req("/v2/{name}/blobs/{digest}", "GET", blob, hdrs, 401, "UNAUTHORIZED", port=peer, sign=False)


class SwarmCheck:
    """/swarm on the peer listener of the peerd with p2p and a cluster secret, no download in
    progress there (the generic checks cover the declared answers, 401s and other methods)."""

    def __init__(self, blobs, port):
        self.c, self.req, self.port = blobs.c, blobs.req, port

    def run(self):
        c, port = self.c, self.port
        digest = example_values(c.spec.resolve({"$ref": "#/components/parameters/Digest"}))[0]
        size = example_values(c.spec.resolve({"$ref": "#/components/parameters/SwarmChunkSize"}))[0]
        status_path, chunk_path = "/swarm/{digest}/{chunk_size}", "/swarm/{digest}/{chunk_size}/{index}"
        hdrs = {"X-MS-Peerd-CorrelationId": "api-check-swarm"}
        self.req(status_path, "GET", f"/swarm/{digest}/{size}", hdrs, 404, "BLOB_UNKNOWN", port=port)
        self.req(chunk_path, "GET", f"/swarm/{digest}/{size}/0?wait=100", hdrs, 404, "BLOB_UNKNOWN", port=port)
        self.req(chunk_path, "GET", f"/swarm/{INVALID_PATH['reference']}/{size}/3", {}, 400, "DIGEST_INVALID", port=port)
        # Not a number: the HTTP framework's plain-text 404 (after the authentication: signed).
        for target in (f"/swarm/{digest}/abc", f"/swarm/{digest}/{size}/abc"):
            status, h, body = c.send(port, "GET", target, {})
            c.count += 1
            if status != 404 or (h.get("content-type") or "").startswith("application/json"):
                c.fail(f"GET :{port}{target}", f"expected the framework's plain-text 404, got {status} {h.get('content-type')!r} {body[:120]!r}")
            status, _, _ = c.send(port, "GET", target, {}, sign=False)
            c.count += 1
            if status != 401:
                c.fail(f"GET :{port}{target} (unsigned)", f"expected 401 before any routing, got {status}")


def main():
    if len(sys.argv) < 2:
        die("usage: api-check.py PATH/TO/peerd [SPEC]")
    ensure_tools()
    import yaml

    binary = os.path.abspath(sys.argv[1])
    spec_path = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_SPEC
    if not os.access(binary, os.X_OK):
        die(f"{binary} is not an executable (build it first: cargo build)")
    with open(spec_path) as f:
        doc = yaml.safe_load(f)
    validate_spec(doc)
    print(f"api-check: {spec_path} is valid OpenAPI {doc['openapi']}")

    tmp = tempfile.mkdtemp(prefix="peerd-api-check-")
    procs = {}
    ok = False
    try:
        http_port, metrics_port, up_port, closed_port = free_port(), free_port(), free_port(), free_port()
        upstream = f"127.0.0.1:{free_port()}"  # closed: every registry request is refused
        data = bytes((i * 7 + i // 251) % 256 for i in range(FILE_SIZE))
        procs["upstream"], upstream_log = start_file_server(tmp, up_port, data)
        blobs_hosts = [f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{closed_port}"]
        procs["peerd"] = start_peerd(binary, tmp, "peerd", http_port, metrics_port, upstream, blobs_hosts, up_port)
        ports = {FRONT_PORT: http_port, METRICS_PORT: metrics_port}
        checker = Checker(Spec(doc), ports, upstream, {"url": [f"http://127.0.0.1:{up_port}/file.bin"]})
        checker.run()
        checker.v2_refusals(http_port, up_port)
        blobs = BlobsCheck(checker, http_port, up_port, closed_port, data, upstream_log)
        blobs.run()
        # The second peerd: p2p with a cluster secret, so it has a peer listener.
        front2, peer2, metrics2 = free_port(), free_port(), free_port()
        procs["peerd-p2p"] = start_peerd(
            binary, tmp, "peerd-p2p", front2, metrics2, upstream, blobs_hosts, up_port, p2p=(free_port(), peer2)
        )
        peer_checker = Checker(
            Spec(doc), {PEER_PORT: peer2, METRICS_PORT: metrics2}, upstream,
            features={"metrics.debug"}, signed={peer2},
        )  # fmt: skip
        peer_checker.run()
        peer_blobs = BlobsCheck(peer_checker, front2, up_port, closed_port, data, upstream_log)
        peer_blobs.signed_peer(front2, peer2)
        SwarmCheck(peer_blobs, peer2).run()
        stop(procs["upstream"])
        blobs.after_upstream_stopped()
        checker.failures += peer_checker.failures
        checker.count += peer_checker.count
        if checker.failures:
            print(f"api-check: {len(checker.failures)} mismatch(es) between peerd and {spec_path}:", file=sys.stderr)
            for f in checker.failures:
                print(f"  - {f}", file=sys.stderr)
        else:
            ok = True
            print(f"api-check: {checker.count} requests matched the spec")
    except Exception as e:
        print(f"api-check: {e}", file=sys.stderr)
    finally:
        for proc in procs.values():
            stop(proc)
        if not ok:
            for name in ("peerd", "peerd-p2p", "upstream"):
                try:
                    with open(os.path.join(tmp, f"{name}.log"), "rb") as f:
                        tail = f.read()[-3000:].decode(errors="replace")
                    print(f"--- {name} log (tail) ---\n{tail}", file=sys.stderr)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
