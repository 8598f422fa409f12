#!/usr/bin/env python3
"""A minimal, read-only Kubernetes API server on 127.0.0.1, for scripts/chart-check.sh.

It answers just what `helm template --dry-run=server` needs to render the chart with a cluster
to ask (so that the templates' `lookup` calls return real answers): version and discovery
documents, and GET/LIST of the objects it was given. Everything else is a 404 (GET) or a 405.
Nothing is ever written.

Usage: fake_apiserver.py PORT_FILE [OBJECTS.json]

OBJECTS.json is a JSON list of Kubernetes objects (e.g. an existing Secret). The chosen port
is written to PORT_FILE once the server listens; it serves until killed.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# (group/version, resource, kind, namespaced)
RESOURCES = [
    ("v1", "secrets", "Secret", True),
    ("v1", "services", "Service", True),
    ("v1", "serviceaccounts", "ServiceAccount", True),
    ("v1", "configmaps", "ConfigMap", True),
    ("v1", "resourcequotas", "ResourceQuota", True),
    ("v1", "namespaces", "Namespace", False),
    ("apps/v1", "daemonsets", "DaemonSet", True),
    ("batch/v1", "jobs", "Job", True),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True),
    ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", True),
]


def group_versions():
    out = {}
    for gv, *_ in RESOURCES:
        out.setdefault(gv, None)
    return list(out)


class Handler(BaseHTTPRequestHandler):
    objects = []

    def log_message(self, fmt, *args):  # quiet
        pass

    def send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, what):
        self.send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                        "code": 404, "message": f"{what} not found"})

    def do_GET(self):
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/version":
            return self.send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
        if url.path == "/api":
            return self.send(200, {"kind": "APIVersions", "versions": ["v1"],
                                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if url.path == "/apis":
            groups = {}
            for gv in group_versions():
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append(v)
            return self.send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]})
        # Discovery of one group/version: /api/v1 or /apis/G/V
        if parts[:1] == ["api"] and len(parts) == 2 or parts[:1] == ["apis"] and len(parts) == 3:
            gv = "/".join(parts[1:])
            res = [{"name": r, "singularName": r[:-1], "namespaced": ns, "kind": k,
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
                   for g, r, k, ns in RESOURCES if g == gv]
            if not res:
                return self.not_found(gv)
            return self.send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res})
        # Objects: /api/v1/namespaces/NS/RES[/NAME] or /apis/G/V/namespaces/NS/RES[/NAME]
        base = 2 if parts[:1] == ["api"] else 3
        gv = "/".join(parts[1:base])
        rest = parts[base:]
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return self.not_found(url.path)
        kinds = [(k) for g, r, k, _ in RESOURCES if g == gv and r == rest[0]]
        if not kinds:
            return self.not_found(url.path)
        kind = kinds[0]
        match = [o for o in self.objects if o["kind"] == kind and o["apiVersion"] == gv
                 and (ns is None or o["metadata"].get("namespace") == ns)]
        if len(rest) == 2:
            found = [o for o in match if o["metadata"]["name"] == rest[1]]
            return self.send(200, found[0]) if found else self.not_found(f"{kind} {rest[1]}")
        sel = parse_qs(url.query).get("labelSelector", [""])[0]
        if sel:
            want = dict(kv.split("=", 1) for kv in sel.split(",") if "=" in kv)
            match = [o for o in match if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]
        return self.send(200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": {"resourceVersion": "1"},
                               "items": match})

    def refuse(self):
        self.send(405, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405,
                        "message": "this fake API server is read-only"})

    do_POST = do_PUT = do_PATCH = do_DELETE = refuse


def main():
    port_file = sys.argv[1]
    if len(sys.argv) > 2:
        Handler.objects = json.load(open(sys.argv[2]))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
