#!/usr/bin/env python3
"""Check api/swagger.yaml against itself and against a running peerd, offline.

    python3 scripts/api-check.py target/debug/peerd [api/swagger.yaml]

1. Validates the spec with openapi-spec-validator. When this interpreter lacks it (or PyYAML),
   a venv under ${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools} gets it from PyPI and the script
   re-runs itself there.
2. Starts the peerd binary on 127.0.0.1 with free ports, --no-p2p, a containerd socket that does
   not exist and, as its only upstream, a closed loopback port: nothing leaves the machine.
3. Sends a request for every path and method in the spec (example values, plus variants: the
   `ns` example, header examples, a peer request, a malformed Range, invalid path values) and
   checks that the status is one the operation declares, that error bodies are
   `application/json` OCI errors with a code the status allows, and that required headers are
   there. Methods a path does not declare must get the status in its `x-peerd-other-methods`
   (405 with `Allow: GET, HEAD` under /v2). Unknown routes must get 404.

peerd is always stopped (by PID) at the end. Exit 1 on any mismatch, listing each one.
"""

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

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC = os.path.normpath(os.path.join(HERE, "..", "api", "swagger.yaml"))
METHODS = ["get", "head", "put", "post", "delete", "patch", "options", "trace"]
# Listener of a path, by the default port of its server entries.
MIRROR_PORT, METRICS_PORT = "5000", "5004"


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
INVALID_PATH = {"name": "Not_A_Valid/NAME", "reference": "sha256:nothex", "digest": "md5:abc"}


class Checker:
    def __init__(self, spec, ports, upstream):
        self.spec = spec
        self.ports = ports  # listener default port -> actual port
        self.upstream = upstream
        self.failures = []
        self.count = 0

    def fail(self, what, msg):
        self.failures.append(f"{what}: {msg}")

    def send(self, port, method, target, headers):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method.upper(), target, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def listeners(self, item):
        servers = item.get("servers") or self.spec.doc.get("servers", [])
        return [self.ports[s["variables"]["port"]["default"]] for s in servers]

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
        for name, h in resp.get("headers", {}).items():
            h = self.spec.resolve(h)
            if name.lower() == "content-type":
                continue  # checked above against the media types
            got = headers.get(name.lower())
            if name.lower() == "x-ms-peerd-correlationid" and port != self.ports[MIRROR_PORT]:
                continue  # set by the mirror listener only
            if h.get("required") and got is None:
                self.fail(what, f"{status} lacks required header {name}")
            enum = h.get("schema", {}).get("enum")
            if got is not None and enum and got not in enum:
                self.fail(what, f"{status} header {name}: {got!r} not among {enum}")
        cid = sent_headers.get("X-MS-Peerd-CorrelationId")
        if port == self.ports[MIRROR_PORT] and cid and headers.get("x-ms-peerd-correlationid") != cid:
            self.fail(what, f"correlation id not echoed: sent {cid!r}, got {headers.get('x-ms-peerd-correlationid')!r}")

    def cases(self, path, item, method, op):
        """(label, target, headers, expected status or None) for one operation."""
        params = {}
        for p in item.get("parameters", []) + op.get("parameters", []):
            p = self.spec.resolve(p)
            params[(p["in"], p["name"])] = p  # operation-level wins
        path_params = [p for (where, _), p in params.items() if where == "path"]
        choices = [[(p["name"], v) for v in example_values(p)] for p in path_params]
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
            if ("header", "X-MS-Peerd-RequestFromPeer") in params:
                h = {"X-MS-Peerd-RequestFromPeer": "true"}
                out.append((f"peer request {tag}", target(values, required_q), h, 404))
            if ("header", "Range") in params:
                out.append((f"malformed Range {tag}", target(values, required_q), {"Range": "bytes=5-2"}, 416))
        if required_q:
            out.append(("required query missing", target(combos[0], {}), {}, None))
        if "400" in op.get("responses", {}):
            for p in path_params:
                bad = dict(combos[0], **{p["name"]: INVALID_PATH[p["name"]]})
                out.append((f"invalid {p['name']}", target(bad, required_q), {}, 400))
        return out

    def run(self):
        paths = self.spec.doc["paths"]
        for path, item in paths.items():
            for port in self.listeners(item):
                for method in METHODS:
                    if method not in item:
                        continue
                    op = item[method]
                    declared = {int(s) for s in op["responses"] if s != "default"}
                    for label, tgt, hdrs, expect in self.cases(path, item, method, op):
                        if expect not in declared:
                            expect = None  # e.g. PUT: 405 whatever the variant
                        what = f"{method.upper()} :{port}{tgt} ({label})"
                        status, headers, body = self.send(port, method, tgt, hdrs)
                        self.count += 1
                        if status not in declared and "default" not in op["responses"]:
                            self.fail(what, f"status {status} is not declared (declared: {sorted(declared)}); body {body[:200]!r}")
                            continue
                        if expect is not None and status != expect:
                            self.fail(what, f"expected {expect}, got {status}; body {body[:200]!r}")
                        resp = op["responses"].get(str(status)) or op["responses"].get("default")
                        self.check_response(what, method, status, headers, body, resp, hdrs, port)
                self.check_undeclared(path, item, port)
        for port in self.ports.values():
            what = f"GET :{port}/no/such/route"
            status, headers, body = self.send(port, "get", "/no/such/route", {})
            self.count += 1
            if status != 404 or headers.get("content-type") != "application/json" or b"UNSUPPORTED" not in body:
                self.fail(what, f"unknown route: expected 404 application/json UNSUPPORTED, got {status} {headers.get('content-type')!r} {body[:120]!r}")

    def check_undeclared(self, path, item, port):
        other = item.get("x-peerd-other-methods")
        if not other:
            self.fail(path, "no x-peerd-other-methods: what do undeclared methods get?")
            return
        values = {}
        for p in item.get("parameters", []):
            p = self.spec.resolve(p)
            if p["in"] == "path":
                values[p["name"]] = example_values(p)[0]
        tgt = path
        for k, v in values.items():
            tgt = tgt.replace("{" + k + "}", str(v))
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


def start_peerd(binary, tmp, http_port, metrics_port, upstream):
    log = open(os.path.join(tmp, "peerd.log"), "wb")
    # Only PEERD_<SECTION>__<KEY> variables are configuration: drop them so the run is the same anywhere.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PEERD_") and "__" in k)}
    cmd = [
        binary, "run", "--no-p2p",
        "--http-addr", f"127.0.0.1:{http_port}",
        "--metrics-addr", f"127.0.0.1:{metrics_port}",
        "--containerd-socket", os.path.join(tmp, "no-containerd.sock"),
        "--data-dir", os.path.join(tmp, "data"),
        "--default-ns", upstream, "--mirror-host", upstream, "--plain-http-host", upstream,
        "--log-level", "warn",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peerd exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                c.close()
                return proc
            c.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("peerd did not become ready within 30 s")


def stop(proc):
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


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
    proc = None
    ok = False
    try:
        http_port, metrics_port = free_port(), free_port()
        upstream = f"127.0.0.1:{free_port()}"  # closed: every upstream request is refused
        proc = start_peerd(binary, tmp, http_port, metrics_port, upstream)
        checker = Checker(Spec(doc), {MIRROR_PORT: http_port, METRICS_PORT: metrics_port}, upstream)
        checker.run()
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
        stop(proc)
        if not ok:
            try:
                with open(os.path.join(tmp, "peerd.log"), "rb") as f:
                    tail = f.read()[-3000:].decode(errors="replace")
                print(f"--- peerd log (tail) ---\n{tail}", file=sys.stderr)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
