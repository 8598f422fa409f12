#!/usr/bin/env python3
"""Assertions on the rendered peerd Helm chart, run by scripts/chart-check.sh.

Usage: chart_assertions.py CHART_DIR REPO_ROOT RENDER_DIR

RENDER_DIR holds the `helm template` output of the chart for these cases:
  default.yaml        default values (release "peerd", namespace "peerd")
  all-features.yaml   ci/all-features-values.yaml
  no-mirrors.yaml     --set peerd.configureMirrors=false

Each check prints one line; any failure ends with exit code 1 after all checks ran.
Needs PyYAML (the kubernetes-validate virtualenv has it).
"""

import base64
import hashlib
import json
import re
import string
import sys
from pathlib import Path

import yaml

FAILURES = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        FAILURES.append(what)
    return cond


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate keys (the API server's strict field validation does)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path):
    try:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d]
    except yaml.YAMLError as e:
        check(False, f"{path.name} parses as YAML without duplicate keys: {e}")
        sys.exit(report())
    check(True, f"{path.name} parses as YAML without duplicate keys")
    return docs


def hook(obj):
    return (obj["metadata"].get("annotations") or {}).get("helm.sh/hook")


def find(docs, kind, name=None, hooks=False):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and bool(hook(d)) == hooks]


def one(docs, kind, name=None, hooks=False):
    found = find(docs, kind, name, hooks)
    if not check(len(found) == 1, f"exactly one {kind}{' ' + name if name else ''}"
                 f"{' (hook)' if hooks else ''} (found {len(found)})"):
        sys.exit(report())
    return found[0]


def flag(args, name):
    """Values of --name=value (or --name value) in an argument list."""
    out = []
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            out.append(a.split("=", 1)[1])
        elif a == f"--{name}" and i + 1 < len(args):
            out.append(args[i + 1])
    return out


def argv(container):
    return list(container.get("command") or []) + list(container.get("args") or [])


def runs(container, *words):
    """True when the container runs `peerd WORDS...` (binary /usr/local/bin/peerd)."""
    a = argv(container)
    return len(a) > len(words) and a[0] == "/usr/local/bin/peerd" and tuple(a[1:1 + len(words)]) == words


def volume(pod, name):
    vols = [v for v in pod.get("volumes", []) if v["name"] == name]
    return vols[0] if vols else {}


def mount_for(container, pod, path):
    """The (mount, volume) of `container` whose mountPath is `path`."""
    for m in container.get("volumeMounts", []):
        if m["mountPath"] == path:
            return m, volume(pod, m["name"])
    return None, {}


def container_port(container, name):
    for p in container.get("ports", []):
        if p["name"] == name:
            return p
    return None


def report():
    if FAILURES:
        print(f"\n{len(FAILURES)} chart assertion(s) failed:")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    return 0


def check_common(docs, case, ns, registries, secret_name, secret_key, domain):
    print(f"[{case}] rendered objects: " + ", ".join(
        f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    check(all(d["metadata"].get("namespace") == ns for d in docs),
          f"every object is in namespace {ns}")
    check(not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")],
          "no cluster-wide RBAC (no ClusterRole/ClusterRoleBinding)")
    check(not [d for d in docs if d["kind"] == "Service" and d["spec"].get("type") in ("NodePort", "LoadBalancer")],
          "no NodePort or LoadBalancer Service")

    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostNetwork") is True, "DaemonSet: hostNetwork: true")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "DaemonSet: dnsPolicy ClusterFirstWithHostNet")
    check(pod.get("priorityClassName") == "system-node-critical", "DaemonSet: priorityClassName system-node-critical")
    sel = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in sel.items()), "DaemonSet: pod labels match its selector")
    tol = pod.get("tolerations") or []
    check({"operator": "Exists"} in tol, "DaemonSet: tolerates every taint (operator: Exists)")

    c = [x for x in pod["containers"] if x["name"] == "peerd"]
    if not check(len(c) == 1, "DaemonSet: a container named peerd"):
        return None
    c = c[0]
    args = argv(c)
    check(runs(c, "run"), "peerd container runs `/usr/local/bin/peerd run`")

    # Ports: the same port on the host; mirror reachable on loopback by containerd.
    ports = {}
    for name, flagname, default in (("http", "http-addr", 5000), ("p2p", "p2p-addr", 5003),
                                    ("metrics", "metrics-addr", 5004)):
        p = container_port(c, name)
        ok = p is not None and p.get("hostPort") == p["containerPort"] == default
        check(ok, f"port {name}: containerPort = hostPort = {default}")
        check(flag(args, flagname) == [f"0.0.0.0:{default}"], f"--{flagname}=0.0.0.0:{default}")
        ports[name] = default

    # Probes.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        port = hg.get("port")
        port_num = container_port(c, port)["containerPort"] if isinstance(port, str) and container_port(c, port) else port
        check(hg.get("path") == path and port_num == ports["metrics"],
              f"{probe}: GET {path} on the metrics port ({ports['metrics']})")

    # Resources.
    res = c.get("resources") or {}
    check(all(k in (res.get(kind) or {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
          "peerd container: cpu and memory requests and limits set")
    for ic in pod.get("initContainers", []):
        r = ic.get("resources") or {}
        check(all(k in (r.get(kind) or {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
              f"init container {ic['name']}: requests and limits set")

    # Least privilege.
    for x in pod["containers"] + pod.get("initContainers", []):
        sc = x.get("securityContext") or {}
        check(sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("readOnlyRootFilesystem") is True
              and sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged")
              and not sc.get("capabilities", {}).get("add"),
              f"container {x['name']}: drops ALL capabilities, read-only root, no privilege escalation")

    # Downward API for events.
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    for var, fp in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                    ("POD_UID", "metadata.uid"), ("NODE_NAME", "spec.nodeName")):
        check(env.get(var) == fp, f"env {var} from the downward API ({fp})")
    check(pod.get("automountServiceAccountToken") is True, "DaemonSet: service account token mounted (events)")

    # Registries.
    check(flag(args, "mirror-host") == registries, f"--mirror-host list is {registries}")

    # Cluster secret: mounted read-only, passed with --secret-file.
    sf = flag(args, "secret-file")
    if check(len(sf) == 1, "--secret-file passed once"):
        sdir, skey = sf[0].rsplit("/", 1)
        m, v = mount_for(c, pod, sdir)
        check(m is not None and m.get("readOnly") is True, f"secret directory {sdir} mounted read-only")
        check(v.get("secret", {}).get("secretName") == secret_name,
              f"the mounted volume is the Secret {secret_name}")
        items = v.get("secret", {}).get("items")
        check(skey == secret_key and (items is None or {"key": secret_key, "path": secret_key} in items),
              f"--secret-file names key {secret_key} of that Secret")
    check(not any(e["name"] == "PEERD_P2P__SECRET" for e in c.get("env", [])),
          "the secret is not also given as PEERD_P2P__SECRET (peerd rejects both)")

    # Data dir on a hostPath.
    dd = flag(args, "data-dir")
    m, v = mount_for(c, pod, dd[0] if dd else "")
    check(bool(dd) and v.get("hostPath", {}).get("path") == dd[0], "--data-dir is a hostPath volume")

    # containerd socket reachable.
    sock = flag(args, "containerd-socket")
    sockdir = sock[0].rsplit("/", 1)[0] if sock else ""
    m, v = mount_for(c, pod, sockdir)
    check(bool(sock) and v.get("hostPath", {}).get("path") == sockdir and m.get("readOnly") is True,
          "containerd socket directory mounted read-only from the host")

    # Headless Service for bootstrap.
    svc = one(docs, "Service")
    s = svc["spec"]
    check(s.get("clusterIP") == "None", "Service: clusterIP None (headless)")
    check(s.get("publishNotReadyAddresses") is True, "Service: publishNotReadyAddresses true")
    check(s.get("selector") == sel, "Service selects the DaemonSet's pods")
    p2p = [p for p in s.get("ports", []) if p.get("name") == "p2p"]
    check(bool(p2p) and p2p[0]["port"] == ports["p2p"], f"Service: p2p port {ports['p2p']}")
    want = f"{svc['metadata']['name']}.{ns}.svc.{domain}:{ports['p2p']}"
    check(flag(args, "bootstrap-dns") == [want], f"--bootstrap-dns={want}")

    # RBAC: events only, namespaced, bound to the DaemonSet's account.
    roles = find(docs, "Role")
    check(len(roles) == 1, "one (non-hook) Role")
    for role in roles:
        rules = role.get("rules", [])
        groups = {g for r in rules for g in r.get("apiGroups", [])}
        check(all(r.get("resources") == ["events"] for r in rules) and groups == {"", "events.k8s.io"}
              and all(set(r.get("verbs", [])) <= {"create", "patch", "update"} for r in rules)
              and not any("resourceNames" in r or "nonResourceURLs" in r for r in rules),
              f"Role {role['metadata']['name']} grants only create/patch/update on events ('' and events.k8s.io)")
    rb = find(docs, "RoleBinding")
    check(len(rb) == 1 and rb[0]["roleRef"]["name"] == roles[0]["metadata"]["name"]
          and rb[0]["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": ns}],
          "RoleBinding binds that Role to the DaemonSet's ServiceAccount")
    check(len(find(docs, "ServiceAccount", pod["serviceAccountName"])) == 1, "the DaemonSet's ServiceAccount is rendered")
    return ds


def check_swarm_env(ds, want):
    """The peerd container's PEERD_SWARM__* env vars: exactly `want` (name -> value), each a
    plain string (integers as decimal digits, never 2.147483648e+10), before the extraEnv
    entries so that those can override them."""
    pod = ds["spec"]["template"]["spec"]
    c = [x for x in pod["containers"] if x["name"] == "peerd"][0]
    env = c.get("env", [])
    got = {e["name"]: e.get("value") for e in env if e["name"].startswith("PEERD_SWARM__")}
    check(got == want, f"swarm env vars are {want} (got {got})")
    check(all(isinstance(v, str) for v in got.values()), "swarm env values are strings (quoted)")
    ints = {k: v for k, v in got.items() if k != "PEERD_SWARM__ENABLED"}
    check(all(isinstance(v, str) and re.fullmatch(r"[0-9]+", v) for v in ints.values()),
          f"swarm integer env values are plain digits ({ints})")
    names = [e["name"] for e in env]
    swarm_at = [i for i, n in enumerate(names) if n.startswith("PEERD_SWARM__")]
    other_at = [i for i, n in enumerate(names) if n.startswith("PEERD_") and not n.startswith("PEERD_SWARM__")]
    check(not swarm_at or not other_at or max(swarm_at) < min(other_at),
          "swarm env vars come before extraEnv (which can override them)")


def check_mirrors(docs, ds, registries):
    pod = ds["spec"]["template"]["spec"]
    inits = pod.get("initContainers", [])
    install = [x for x in inits if runs(x, "hosts", "install")]
    if not check(len(install) == 1, "an init container runs `peerd hosts install`"):
        return
    a = argv(install[0])
    certs = flag(a, "certs-dir")
    m, v = mount_for(install[0], pod, certs[0] if certs else "")
    check(certs == ["/etc/containerd/certs.d"] and v.get("hostPath", {}).get("path") == certs[0]
          and not (m or {}).get("readOnly"),
          "hosts install: --certs-dir=/etc/containerd/certs.d, the host's directory mounted read-write")
    check(flag(a, "mirror") == ["http://127.0.0.1:5000"], "hosts install: --mirror=http://127.0.0.1:5000 (node-local)")
    check(flag(a, "registry") == registries, f"hosts install: --registry for each of {registries}")
    check(flag(a, "dial-timeout") == ["200ms"], "hosts install: --dial-timeout=200ms")
    peerd = [x for x in pod["containers"] if x["name"] == "peerd"][0]
    check(mount_for(peerd, pod, certs[0])[0] is None, "the peerd container itself does not mount certs.d")

    hooks = [d for d in docs if hook(d)]
    check(all(hook(d) == "post-delete" for d in hooks), "every hook is post-delete")
    for d in hooks:
        pol = set((d["metadata"]["annotations"].get("helm.sh/hook-delete-policy") or "").replace(" ", "").split(","))
        check(pol == {"before-hook-creation", "hook-succeeded"},
              f"hook {d['kind']}/{d['metadata']['name']}: delete policy before-hook-creation,hook-succeeded")
    cds = one(docs, "DaemonSet", hooks=True)
    cpod = cds["spec"]["template"]["spec"]
    un = [x for x in cpod.get("initContainers", []) if runs(x, "hosts", "uninstall")]
    if check(len(un) == 1, "the cleanup hook DaemonSet runs `peerd hosts uninstall` (init container)"):
        ua = argv(un[0])
        ucerts = flag(ua, "certs-dir")
        m, v = mount_for(un[0], cpod, ucerts[0] if ucerts else "")
        check(ucerts == certs and v.get("hostPath", {}).get("path") == certs[0],
              "hosts uninstall: same --certs-dir, the host's directory mounted")
        check(flag(ua, "registry") == registries, "hosts uninstall: the same registries as install")
    check(len(cpod.get("containers", [])) == 1, "cleanup pods then sleep in one main container")
    check(cpod.get("tolerations") == pod.get("tolerations") and cpod.get("nodeSelector") == pod.get("nodeSelector")
          and cpod.get("affinity") == pod.get("affinity"),
          "cleanup pods are scheduled like peerd (same tolerations, nodeSelector, affinity)")
    cdsel = cds["spec"]["selector"]["matchLabels"]
    check(any(cdsel.get(k) != v for k, v in ds["spec"]["selector"]["matchLabels"].items()),
          "cleanup and peerd selectors differ")
    job = one(docs, "Job", hooks=True)
    ja = argv(job["spec"]["template"]["spec"]["containers"][0])
    check(ja[:3] == ["rollout", "status", f"daemonset/{cds['metadata']['name']}"],
          "the wait Job runs `kubectl rollout status` on the cleanup DaemonSet")
    w = lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    check(w(job) > w(cds), "the wait Job runs after the cleanup DaemonSet (hook weight)")
    hrole = one(docs, "Role", hooks=True)
    check(hrole["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                              "resourceNames": [cds["metadata"]["name"]], "verbs": ["get", "list", "watch"]}],
          "the hook Role only reads the cleanup DaemonSet")
    check(all(w(d) < w(cds) for d in hooks if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")),
          "hook RBAC is created before the cleanup DaemonSet")


def check_dashboard(docs, chart, root):
    cm = one(docs, "ConfigMap")
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", 'dashboard ConfigMap labelled grafana_dashboard: "1"')
    text = cm["data"].get("peerd.json", "")
    try:
        dash = json.loads(text)
    except ValueError as e:
        check(False, f"dashboard JSON parses ({e})")
        return
    on_disk = json.loads((chart / "dashboards" / "peerd.json").read_text())
    check(dash == on_disk, "the ConfigMap holds dashboards/peerd.json")
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    check(len(exprs) >= 10, f"dashboard has queries ({len(exprs)})")
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), "dashboard panel ids are unique")
    joined = "\n".join(exprs)
    for metric in ("peerd_served_bytes_total", "peerd_peer_discovery_duration_seconds_bucket",
                   "peerd_requests_total", "peerd_digest_mismatches_total", "peerd_upstream_errors_total",
                   "peerd_peer_fetch_failures_total", "peerd_peer_auth_failures_total", "peerd_advertised_keys",
                   "peerd_request_duration_seconds_bucket"):
        check(metric in joined, f"dashboard queries {metric}")
    check('source=~"local|peer"' in joined, "dashboard: bytes saved upstream = local + peer bytes")
    check("histogram_quantile(0.99" in joined and "histogram_quantile(0.50" in joined,
          "dashboard: p50 and p99 quantiles")
    # Every metric the dashboard uses exists in the code (src/metrics.rs).
    code = (root / "src" / "metrics.rs").read_text()
    defined = set(re.findall(r'"(peerd_[a-z_]+)"', code))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"peerd_[a-z_]+", joined)}
    check(used <= defined, f"every dashboard metric is defined in src/metrics.rs (unknown: {sorted(used - defined)})")


def check_values_documented(chart):
    """Every value in values.yaml has a `# --` comment (itself or a documented parent), and the
    chart README lists every documented value with its default."""
    lines = (chart / "values.yaml").read_text().splitlines()
    documented = set()
    stack = []  # (indent, key)
    comment = []
    for line in lines:
        s = line.strip()
        if s.startswith("#"):
            comment.append(s)
            continue
        if not s:
            comment = []
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if m and not s.startswith("- "):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            if any(c.startswith("# --") for c in comment):
                documented.add(".".join(k for _, k in stack))
        comment = []

    values = yaml.safe_load((chart / "values.yaml").read_text())

    def leaves(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{prefix}.{k}" if prefix else k)
        else:
            yield prefix, node

    def doc_path(path):
        parts = path.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in documented:
                return ".".join(parts[:i])
        return None

    undocumented = [p for p, _ in leaves(values, "") if doc_path(p) is None]
    check(not undocumented, f"every value has a `# --` comment (missing: {undocumented})")

    readme = (chart / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z0-9_.]+)` \| [a-z]+ \| `(.*?)` \|", readme, re.M))
    check(set(rows) == documented,
          f"README lists exactly the documented values (missing: {sorted(documented - set(rows))}, "
          f"extra: {sorted(set(rows) - documented)})")

    def get(path):
        node = values
        for k in path.split("."):
            node = node[k]
        return node

    wrong = [k for k in rows if k in documented and rows[k] != json.dumps(get(k), separators=(",", ":"))]
    check(not wrong, f"README defaults equal values.yaml (wrong: {wrong})")


def main():
    chart, root, renders = (Path(a) for a in sys.argv[1:4])
    default_regs = ["mcr.microsoft.com", "ghcr.io", "docker.io", "registry.k8s.io"]

    docs = load(renders / "default.yaml")
    ds = check_common(docs, "default values", "peerd", default_regs, "peerd-secret", "secret", "cluster.local")
    if ds:
        check_mirrors(docs, ds, default_regs)
        check_swarm_env(ds, {"PEERD_SWARM__ENABLED": "true", "PEERD_SWARM__MAX_SPOOL_BYTES": "21474836480",
                             "PEERD_SWARM__UPLOAD_RATE": "0", "PEERD_SWARM__DOWNLOAD_RATE": "0"})
    sec = one(docs, "Secret", "peerd-secret")
    raw = base64.b64decode(sec["data"]["secret"]).decode()
    check(len(raw) == 48 and all(ch in string.ascii_letters + string.digits for ch in raw),
          "generated Secret holds 48 random alphanumerics")
    ann = ds["spec"]["template"]["metadata"].get("annotations", {}) if ds else {}
    check(ann.get("checksum/secret") == hashlib.sha256(raw.encode()).hexdigest(),
          "pods carry the checksum of the generated secret (the same value as the Secret's)")
    check(not [d for d in docs if d["kind"] in ("ServiceMonitor", "NetworkPolicy", "ConfigMap")],
          "optional objects are off by default")

    print()
    docs = load(renders / "all-features.yaml")
    regs = ["mcr.microsoft.com", "ghcr.io", "docker.io", "registry.local:5000"]
    ds = check_common(docs, "all features", "peerd-ns", regs, "peerd-cluster-secret", "token", "cluster.example")
    if ds:
        check_mirrors(docs, ds, regs)
        check_swarm_env(ds, {"PEERD_SWARM__ENABLED": "false", "PEERD_SWARM__MAX_SPOOL_BYTES": "107374182400",
                             "PEERD_SWARM__UPLOAD_RATE": "52428800", "PEERD_SWARM__DOWNLOAD_RATE": "5368709120"})
        ann = ds["spec"]["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "5004"
              and ann.get("prometheus.io/path") == "/metrics/prometheus",
              "aksAutoDiscovery: prometheus.io/scrape, port 5004, path /metrics/prometheus on the pods")
        args = argv([x for x in ds["spec"]["template"]["spec"]["containers"] if x["name"] == "peerd"][0])
        check(flag(args, "log-format") == ["json"] and flag(args, "default-ns") == ["ghcr.io"],
              "logFormat and extraArgs reach `peerd run`")
        check(flag(args, "plain-http-host") == ["registry.local:5000"], "plainHttpHosts: `peerd run --plain-http-host`")
        inst = [x for x in ds["spec"]["template"]["spec"]["initContainers"] if runs(x, "hosts", "install")]
        check(bool(inst) and flag(argv(inst[0]), "plain-http") == ["registry.local:5000"],
              "plainHttpHosts: `peerd hosts install --plain-http`")
    check(not find(docs, "Secret"), "existingSecret: no Secret generated")
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    ep = sm["spec"]["endpoints"][0]
    check(ep["port"] in [p["name"] for p in svc["spec"]["ports"]] and ep["path"] == "/metrics/prometheus",
          "ServiceMonitor scrapes the Service's metrics port at /metrics/prometheus")
    check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
          "ServiceMonitor selects the Service")
    check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "ServiceMonitor labels applied")
    np_ = one(docs, "NetworkPolicy")
    nports = {p["port"] for r in np_["spec"]["ingress"] for p in r.get("ports", [])}
    check(nports == {5000, 5003, 5004}, "NetworkPolicy: ingress on 5000, 5003 and 5004")
    metrics_rules = [r for r in np_["spec"]["ingress"] if [p["port"] for p in r["ports"]] == [5004]
                     and any("namespaceSelector" in f for f in r["from"])]
    check(len(metrics_rules) == 1, "NetworkPolicy: metrics port open to the configured namespace selector")
    check(np_["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"],
          "NetworkPolicy selects the peerd pods")
    check_dashboard(docs, chart, root)

    print()
    docs = load(renders / "no-mirrors.yaml")
    print("[configureMirrors=false] rendered objects: " + ", ".join(
        f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    check(not pod.get("initContainers"), "configureMirrors=false: no init container")
    check(not [d for d in docs if hook(d)], "configureMirrors=false: no cleanup hook")
    check(not any("hostPath" in v and v["hostPath"]["path"] == "/etc/containerd/certs.d" for v in pod["volumes"]),
          "configureMirrors=false: certs.d not mounted")

    print()
    check_values_documented(chart)
    return report()


if __name__ == "__main__":
    sys.exit(main())
