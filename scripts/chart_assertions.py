#!/usr/bin/env python3
"""Assertions on the rendered peerd Helm chart, run by scripts/chart-check.sh.

Usage: chart_assertions.py CHART_DIR REPO_ROOT RENDER_DIR

RENDER_DIR holds the `helm template` output of the chart for the cases of chart-check.sh
(release "peerd", namespace "peerd" unless said): default, all-features
(ci/all-features-values.yaml), azure (Azure/peerd's install command), no-mirrors,
no-mirrors-keep, minimal (IPv6, every optional part off), kube-system, long-name; and
lookup-fresh / lookup-existing (helm 4 `--dry-run=server` against scripts/fake_apiserver.py,
an empty cluster and one holding the Secret).

Each check prints one line; any failure ends with exit code 1 after all checks ran.
Needs PyYAML (the kubernetes-validate virtualenv has it).
"""

import base64
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


VIRTUAL_EXCLUSIONS = [
    {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
    {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]},
]


def peerd_container(ds):
    return [x for x in ds["spec"]["template"]["spec"]["containers"] if x["name"] == "peerd"][0]


def excludes_virtual_nodes(pod):
    """Every nodeSelectorTerm of the pod's required node affinity keeps it off virtual nodes."""
    terms = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    return bool(terms) and all(all(e in t.get("matchExpressions", []) for e in VIRTUAL_EXCLUSIONS) for t in terms)


def check_common(docs, case, ns, registries, secret_name, secret_key, domain, bind="::", compat=30000,
                 probes=True, priority="system-node-critical", virtual_excluded=True, content_dir=True):
    print(f"[{case}] rendered objects: " + ", ".join(
        f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    check(all(d["metadata"].get("namespace") == ns for d in docs),
          f"every object is in namespace {ns}")
    check(not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")],
          "no cluster-wide RBAC (no ClusterRole/ClusterRoleBinding)")
    check(not [d for d in docs if d["kind"] == "Service" and d["spec"].get("type") in ("NodePort", "LoadBalancer")],
          "no NodePort or LoadBalancer Service")
    check(not any("checksum/secret" in ((d.get("spec", {}).get("template", {}).get("metadata", {}) or {})
                                        .get("annotations") or {}) for d in docs),
          "no checksum of the secret on any pod template (nothing rolls when a render differs)")

    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostNetwork") is True, "DaemonSet: hostNetwork: true")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "DaemonSet: dnsPolicy ClusterFirstWithHostNet")
    check(pod.get("priorityClassName") == (priority or None), f"DaemonSet: priorityClassName {priority or '(none)'}")
    sel = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in sel.items()), "DaemonSet: pod labels match its selector")
    check("helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels,
          "pod template carries no chart or app version label (a chart bump does not roll every node)")
    tol = pod.get("tolerations") or []
    check({"operator": "Exists"} in tol, "DaemonSet: tolerates every taint (operator: Exists)")
    check(excludes_virtual_nodes(pod) == virtual_excluded,
          "DaemonSet: " + ("kept off virtual-kubelet and Fargate nodes (required node affinity, every term)"
                           if virtual_excluded else "no virtual-node exclusion (excludeVirtualNodes=false)"))
    us = ds["spec"].get("updateStrategy", {})
    check(us.get("rollingUpdate", {}).get("maxSurge") in (0, "0", "0%"), "DaemonSet: maxSurge 0 (host ports)")

    c = [x for x in pod["containers"] if x["name"] == "peerd"]
    if not check(len(c) == 1, "DaemonSet: a container named peerd"):
        return None
    c = c[0]
    args = argv(c)
    check(runs(c, "run"), "peerd container runs `/usr/local/bin/peerd run`")

    # Listeners: node-local ones on loopback, the others on the bind address; every port the
    # same on the host.
    host = f"[{bind}]" if ":" in bind else bind
    ports = {"http": 5000, "peer": 5001, "p2p": 5003, "metrics": 5004}
    want_flags = {"http-addr": f"127.0.0.1:5000", "peer-addr": f"{host}:5001", "p2p-addr": f"{host}:5003",
                  "metrics-addr": f"{host}:5004"}
    if compat:
        ports["compat"] = compat
        want_flags["compat-addr"] = f"127.0.0.1:{compat}"
    for f, v in want_flags.items():
        check(flag(args, f) == [v], f"--{f}={v}")
    if not compat:
        check(not flag(args, "compat-addr") and container_port(c, "compat") is None,
              "compat listener off: no --compat-addr, no compat port")
    for name, num in ports.items():
        p = container_port(c, name)
        check(p is not None and p.get("hostPort") == p["containerPort"] == num,
              f"port {name}: containerPort = hostPort = {num}")
    check({p["name"] for p in c.get("ports", [])} == set(ports), f"container ports are exactly {sorted(ports)}")

    # Probes: on the metrics port, each can be turned off.
    on = {"startupProbe", "livenessProbe", "readinessProbe"} if probes is True else set(probes or ())
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if probe not in on:
            check(probe not in c, f"{probe}: off (null)")
            continue
        hg = (c.get(probe) or {}).get("httpGet") or {}
        port = hg.get("port")
        port_num = container_port(c, port)["containerPort"] if isinstance(port, str) and container_port(c, port) else port
        check(hg.get("path") == path and port_num == ports["metrics"],
              f"{probe}: GET {path} on the metrics port ({ports['metrics']})")

    # Resources: requests for both, a memory limit, no CPU limit (hashing).
    res = c.get("resources") or {}
    check(all(k in (res.get("requests") or {}) for k in ("cpu", "memory")) and "memory" in (res.get("limits") or {}),
          "peerd container: cpu and memory requests, a memory limit")
    check("cpu" not in (res.get("limits") or {}), "peerd container: no CPU limit (it would throttle digest hashing)")
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

    # Environment: downward API for events, and every name once (server-side apply).
    envl = c.get("env", [])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in envl}
    for var, fp in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                    ("POD_UID", "metadata.uid"), ("NODE_NAME", "spec.nodeName")):
        check(env.get(var) == fp, f"env {var} from the downward API ({fp})")
    names = [e["name"] for e in envl]
    check(len(names) == len(set(names)), f"every env name appears once ({names})")
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
    check(not any(e["name"] == "PEERD_P2P__SECRET" for e in envl),
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

    # containerd's content store: read-only, the fast path.
    cd = flag(args, "containerd-content-dir")
    if content_dir:
        want = "/var/lib/containerd/io.containerd.content.v1.content"
        m, v = mount_for(c, pod, want)
        check(cd == [want] and v.get("hostPath", {}).get("path") == want and (m or {}).get("readOnly") is True,
              f"--containerd-content-dir={want}, the host's directory mounted read-only")
    else:
        check(not cd and not any("content.v1.content" in m["mountPath"] for m in c.get("volumeMounts", [])),
              "contentDir empty: no --containerd-content-dir, nothing mounted")

    # Headless Service for bootstrap.
    svc = one(docs, "Service")
    s = svc["spec"]
    check(s.get("clusterIP") == "None", "Service: clusterIP None (headless)")
    check(s.get("publishNotReadyAddresses") is True, "Service: publishNotReadyAddresses true")
    check(s.get("selector") == sel, "Service selects the DaemonSet's pods")
    check({p["name"] for p in s.get("ports", [])} == {"p2p", "metrics"},
          "Service: p2p and metrics ports only (the mirror is node-local)")
    p2p = [p for p in s.get("ports", []) if p.get("name") == "p2p"]
    check(bool(p2p) and p2p[0]["port"] == ports["p2p"], f"Service: p2p port {ports['p2p']}")
    want = f"{svc['metadata']['name']}.{ns}.svc.{domain}:{ports['p2p']}"
    check(flag(args, "bootstrap-dns") == [want], f"--bootstrap-dns={want}")

    # GKE: a ResourceQuota scoped to the critical priority class, outside kube-system.
    quotas = find(docs, "ResourceQuota")
    if priority in ("system-node-critical", "system-cluster-critical") and ns != "kube-system":
        ok = len(quotas) == 1
        if ok:
            q = quotas[0]["spec"]
            ok = (q.get("scopeSelector") == {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": [priority]}]}
                and int(q["hard"]["pods"]) >= 1000)
        check(ok, f"a ResourceQuota scoped to PriorityClass {priority} (GKE admits the pods only with one)")
    else:
        check(not quotas, f"no ResourceQuota (priority class {priority or 'none'}, namespace {ns})")

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
    plain string (integers as decimal digits, never 2.147483648e+10)."""
    env = peerd_container(ds).get("env", [])
    got = {e["name"]: e.get("value") for e in env if e["name"].startswith("PEERD_SWARM__")}
    check(got == want, f"swarm env vars are {want} (got {got})")
    check(all(isinstance(v, str) for v in got.values()), "swarm env values are strings (quoted)")
    ints = {k: v for k, v in got.items() if k != "PEERD_SWARM__ENABLED"}
    check(all(isinstance(v, str) and re.fullmatch(r"[0-9]+", v) for v in ints.values()),
          f"swarm integer env values are plain digits ({ints})")


def check_env_value(ds, name, value, what):
    """The peerd container has env var `name` exactly once, with the string `value`."""
    got = [e.get("value") for e in peerd_container(ds).get("env", []) if e["name"] == name]
    check(got == [value], f"{what} ({name}={got})")


def check_names(docs):
    """Every name fits its field: object names and label values at most 63 characters (the Job
    controller copies the Job's name into its pods' `job-name` label)."""
    long_ = [(d["kind"], d["metadata"]["name"]) for d in docs if len(d["metadata"]["name"]) > 63]
    check(not long_, f"every object name is at most 63 characters (too long: {long_})")
    bad = []
    for d in docs:
        tmpl = (d.get("spec", {}).get("template") or {}).get("metadata") or {}
        for where in (d["metadata"].get("labels") or {}, tmpl.get("labels") or {}):
            bad += [(d["kind"], k, v) for k, v in where.items() if len(str(v)) > 63]
    check(not bad, f"every label value is at most 63 characters (too long: {bad})")
    jobs = [d for d in docs if d["kind"] == "Job"]
    check(all(len(j["metadata"]["name"]) <= 63 for j in jobs), "Job names fit the job-name label (63)")


def check_mirrors(docs, ds, registries, mode="prepend", default_host=False, stale=()):
    pod = ds["spec"]["template"]["spec"]
    inits = pod.get("initContainers", [])
    install = [x for x in inits if runs(x, "hosts", "install")]
    if not check(len(install) == 1, "an init container runs `peerd hosts install`"):
        return
    check(inits[-1] is install[0], "`hosts install` is the last init container (after stale cleanups)")
    a = argv(install[0])
    certs = flag(a, "certs-dir")
    m, v = mount_for(install[0], pod, certs[0] if certs else "")
    check(certs == ["/etc/containerd/certs.d"] and v.get("hostPath", {}).get("path") == certs[0]
          and not (m or {}).get("readOnly"),
          "hosts install: --certs-dir=/etc/containerd/certs.d, the host's directory mounted read-write")
    cfg = flag(a, "containerd-config")
    m, v = mount_for(install[0], pod, "/etc/containerd")
    check(cfg == ["/etc/containerd/config.toml"] and v.get("hostPath", {}).get("path") == "/etc/containerd"
          and (m or {}).get("readOnly") is True,
          "hosts install: --containerd-config=/etc/containerd/config.toml, its directory mounted read-only")
    check(flag(a, "mirror") == ["http://127.0.0.1:5000"], "hosts install: --mirror=http://127.0.0.1:5000 (node-local)")
    check(flag(a, "registry") == registries, f"hosts install: --registry for each of {registries}")
    check(flag(a, "dial-timeout") == ["200ms"], "hosts install: --dial-timeout=200ms")
    check("--prune" in a, "hosts install: --prune (drop files of registries no longer listed)")
    check(flag(a, "mode") == [mode], f"hosts install: --mode={mode}")
    check(("--default-host" in a) == default_host, f"hosts install: --default-host {'on' if default_host else 'off'}")
    peerd = peerd_container(ds)
    check(mount_for(peerd, pod, certs[0])[0] is None, "the peerd container itself does not mount certs.d")
    check("--force" not in a, "hosts install: no --force (a node without config_path fails loudly)")
    got_stale = [flag(argv(x), "certs-dir") for x in inits if runs(x, "hosts", "uninstall")]
    check(got_stale == [[d] for d in stale], f"stale certs dirs cleaned by `hosts uninstall`: {list(stale)}")
    for x in inits:
        if runs(x, "hosts", "uninstall"):
            d = flag(argv(x), "certs-dir")[0]
            m, v = mount_for(x, pod, d)
            check(v.get("hostPath", {}).get("path") == d and not (m or {}).get("readOnly")
                  and not any(mm["mountPath"] == "/etc/containerd" for mm in x.get("volumeMounts", [])),
                  f"stale dir {d} mounted read-write from the host, and only it (no containerd config)")

    hooks = [d for d in docs if hook(d)]
    check(all(hook(d) == "post-delete" for d in hooks), "every hook is post-delete")
    for d in hooks:
        pol = set((d["metadata"]["annotations"].get("helm.sh/hook-delete-policy") or "").replace(" ", "").split(","))
        check(pol == {"before-hook-creation", "hook-succeeded", "hook-failed"},
              f"hook {d['kind']}/{d['metadata']['name']}: deleted on success and on failure")
    cds = one(docs, "DaemonSet", hooks=True)
    cpod = cds["spec"]["template"]["spec"]
    un = [x for x in cpod.get("initContainers", []) if runs(x, "hosts", "uninstall")]
    if check(len(un) == 1, "the cleanup hook DaemonSet runs `peerd hosts uninstall` (init container)"):
        ua = argv(un[0])
        ucerts = flag(ua, "certs-dir")
        m, v = mount_for(un[0], cpod, ucerts[0] if ucerts else "")
        check(ucerts == certs and v.get("hostPath", {}).get("path") == certs[0],
              "hosts uninstall: same --certs-dir, the host's directory mounted")
        m, v = mount_for(un[0], cpod, "/etc/containerd")
        check(flag(ua, "containerd-config") == cfg and v.get("hostPath", {}).get("path") == "/etc/containerd"
              and (m or {}).get("readOnly") is True,
              "hosts uninstall: reads containerd's config (read-only) to find every config_path directory")
        check(not flag(ua, "registry"), "hosts uninstall: no --registry (it removes every file carrying peerd's marker)")
        check(un[0]["image"] == install[0]["image"], "hosts uninstall runs peerd's own image")
    check(len(cpod.get("containers", [])) == 1, "cleanup pods then sleep in one main container")
    check(cpod.get("tolerations") == pod.get("tolerations") and cpod.get("nodeSelector") == pod.get("nodeSelector")
          and cpod.get("affinity") == pod.get("affinity"),
          "cleanup pods are scheduled like peerd (same tolerations, nodeSelector, affinity: no virtual nodes)")
    cdsel = cds["spec"]["selector"]["matchLabels"]
    check(any(cdsel.get(k) != v for k, v in ds["spec"]["selector"]["matchLabels"].items()),
          "cleanup and peerd selectors differ")
    job = one(docs, "Job", hooks=True)
    jpod = job["spec"]["template"]["spec"]
    ja = argv(jpod["containers"][0])
    check(ja[:3] == ["kube", "wait-daemonset", cds["metadata"]["name"]],
          "the wait Job runs `peerd kube wait-daemonset` on the cleanup DaemonSet")
    check(jpod["containers"][0]["image"] == pod["containers"][0]["image"]
          and cpod["containers"][0]["image"] == pod["containers"][0]["image"]
          and argv(cpod["containers"][0]) == ["kube", "sleep"],
          "the uninstall hook uses only peerd's own image (no pause, no kubectl image)")
    t = flag(ja, "timeout")
    dl = job["spec"].get("activeDeadlineSeconds")
    check(len(t) == 1 and t[0].endswith("s") and isinstance(dl, int) and int(t[0][:-1]) < dl <= int(t[0][:-1]) + 60,
          f"the wait Job has a deadline just after its wait timeout ({t}, activeDeadlineSeconds {dl})")
    check(job["spec"].get("backoffLimit") == 0, "the wait Job is not retried")
    check(not jpod.get("tolerations") and not jpod.get("priorityClassName"),
          "the wait Job has no tolerations and no priority class (an ordinary pod on an ordinary node)")
    jsel = set(job["spec"]["template"]["metadata"]["labels"].items())
    check(not (jsel >= set(cdsel.items())) and not (jsel >= set(ds["spec"]["selector"]["matchLabels"].items())),
          "the wait Job's pods match neither DaemonSet's selector")
    w = lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    check(w(job) > w(cds), "the wait Job runs after the cleanup DaemonSet (hook weight)")
    hrole = one(docs, "Role", hooks=True)
    check(hrole["rules"] == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                              "resourceNames": [cds["metadata"]["name"]], "verbs": ["get", "list", "watch"]}],
          "the hook Role only reads the cleanup DaemonSet")
    check(all(w(d) < w(cds) for d in hooks if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ResourceQuota")),
          "hook RBAC (and quota) is created before the cleanup DaemonSet")
    # The release's ResourceQuota is gone when post-delete hooks run: the hook brings its own
    # for the cleanup pods' priority class (GKE).
    hq = find(docs, "ResourceQuota", hooks=True)
    prio = cpod.get("priorityClassName")
    check(len(hq) == 1 and hq[0]["spec"]["scopeSelector"]["matchExpressions"][0]["values"] == [prio],
          f"the hook has its own ResourceQuota for the cleanup pods' priority class {prio}")


def check_no_mirrors(docs, remove_stale):
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    inits = pod.get("initContainers") or []
    check(not [x for x in inits if runs(x, "hosts", "install")], "configureMirrors=false: no `hosts install`")
    check(not [d for d in docs if hook(d)], "configureMirrors=false: no cleanup hook")
    certs = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == "/etc/containerd/certs.d"]
    if remove_stale:
        un = [x for x in inits if runs(x, "hosts", "uninstall")]
        check(len(un) == 1 and flag(argv(un[0]), "certs-dir") == ["/etc/containerd/certs.d"]
              and flag(argv(un[0]), "containerd-config") == ["/etc/containerd/config.toml"],
              "configureMirrors=false: an init container removes what an earlier release wrote (`hosts uninstall`)")
        check(len(certs) == 1, "configureMirrors=false: certs.d mounted for that cleanup only")
    else:
        check(not inits, "configureMirrors=false, removeStaleMirrors=false: no init container")
        check(not certs, "configureMirrors=false, removeStaleMirrors=false: certs.d not mounted")
    cfgvol = any(v.get("hostPath", {}).get("path") == "/etc/containerd" for v in pod["volumes"])
    check(cfgvol == remove_stale, "containerd's config directory mounted only for that cleanup")


def check_alerts(docs, root, ns):
    pr = one(docs, "PrometheusRule")
    rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    check(set(alerts) == {"PeerdNodeNotConnected", "PeerdUpstreamErrors", "PeerdNoPeerHits"},
          f"PrometheusRule: the three alerts ({sorted(alerts)})")
    check(all(r.get("for") and r.get("labels", {}).get("severity") and r.get("annotations", {}).get("description")
              for r in rules), "every alert has a for, a severity and a description")
    check(all(f'namespace="{ns}"' in r["expr"] for r in rules), f"every alert selects namespace {ns}")
    defined = defined_metrics(root)
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for r in rules for m in re.findall(r"peerd_[a-z_]+", r["expr"])}
    check(used and used <= defined, f"every peerd metric of the alerts is declared in src/ (unknown: {sorted(used - defined)})")
    libp2p = {m for r in rules for m in re.findall(r"libp2p_[a-z_]+", r["expr"])}
    check(libp2p <= {"libp2p_swarm_connections_established_total", "libp2p_swarm_connections_duration_seconds_count"},
          f"libp2p metrics of the alerts are libp2p-metrics' swarm connection counters ({sorted(libp2p)})")
    check(pr["metadata"]["labels"].get("release") == "kube-prometheus-stack", "PrometheusRule labels applied")


def defined_metrics(root):
    """Every metric name the code declares: each component declares its own (`pub const NAME: &str
    = "peerd_..."`), so all of src/ is read."""
    names = set()
    for f in (root / "src").rglob("*.rs"):
        names |= set(re.findall(r'const [A-Z_]+: &str = "(peerd_[a-z_]+)"', f.read_text()))
    return names


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
    # Every metric the dashboard uses exists in the code (declared next to its component).
    defined = defined_metrics(root)
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"peerd_[a-z_]+", joined)}
    check(used <= defined, f"every dashboard metric is declared in src/ (unknown: {sorted(used - defined)})")


def value_comments(chart):
    """(dotted key, the comment lines just above it) for every mapping key of values.yaml, in
    file order: the one walk both the README table and the documentation check read."""
    stack, comment = [], []  # stack: (indent, key)
    for line in (chart / "values.yaml").read_text().splitlines():
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
            yield ".".join(k for _, k in stack), comment
        comment = []


def values_docs(chart):
    """(key, type, default JSON, description) for every value with a `# --` comment, in file
    order: the rows of the chart README's values table."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    rows = []
    for key, comment in value_comments(chart):
        doc = [c for c in comment if c.startswith("# --")]
        if doc:
            at = comment.index(doc[0])
            text = " ".join(c.lstrip("#").strip() for c in comment[at:])[len("--"):].strip()
            node = values
            for k in key.split("."):
                node = node[k]
            kind = {bool: "bool", int: "int", float: "number", str: "string", list: "list",
                    dict: "object", type(None): "null"}[type(node)]
            rows.append((key, kind, json.dumps(node, separators=(",", ":")), text))
    return rows


def check_values_documented(chart):
    """Every value in values.yaml has a `# --` comment (itself or a documented parent), and the
    chart README lists every documented value with its default."""
    documented = {key for key, comment in value_comments(chart) if any(c.startswith("# --") for c in comment)}

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
    default_swarm = {"PEERD_SWARM__ENABLED": "true", "PEERD_SWARM__MAX_SPOOL_BYTES": "21474836480",
                     "PEERD_SWARM__MEMORY_SPOOL_BYTES": "134217728", "PEERD_SWARM__UPLOAD_RATE": "0",
                     "PEERD_SWARM__DOWNLOAD_RATE": "0"}

    docs = load(renders / "default.yaml")
    ds = check_common(docs, "default values", "peerd", default_regs, "peerd-secret", "secret", "cluster.local")
    if ds:
        check_mirrors(docs, ds, default_regs)
        check_swarm_env(ds, default_swarm)
        check_env_value(ds, "PEERD_METRICS__DEBUG_WEB", "false", "the /debug/web page is off by default")
        us = ds["spec"]["updateStrategy"]["rollingUpdate"]
        check(isinstance(us["maxUnavailable"], str) and us["maxUnavailable"].endswith("%"),
              f"maxUnavailable is a percentage by default ({us['maxUnavailable']}), which scales with the cluster")
        check(not any(m["mountPath"].endswith("/swarm") for m in peerd_container(ds)["volumeMounts"]),
              "the swarm spool stays on the dataDir hostPath by default")
    check(not find(docs, "Secret"),
          "generated secret: nothing rendered without a cluster to look it up in (helm template renders stay identical)")
    check(not [d for d in docs if d["kind"] in ("ServiceMonitor", "NetworkPolicy", "ConfigMap", "PrometheusRule",
                                                "VerticalPodAutoscaler")],
          "optional objects are off by default")
    check_names(docs)

    print()
    docs = load(renders / "all-features.yaml")
    regs = ["mcr.microsoft.com", "ghcr.io", "docker.io", "registry.local:5000"]
    ds = check_common(docs, "all features", "peerd-ns", regs, "peerd-cluster-secret", "token", "cluster.example",
                      probes=("startupProbe", "readinessProbe"))
    if ds:
        check_mirrors(docs, ds, regs, mode="replace", default_host=True, stale=["/etc/docker/certs.d"])
        check_swarm_env(ds, {"PEERD_SWARM__ENABLED": "false", "PEERD_SWARM__MAX_SPOOL_BYTES": "107374182400",
                             "PEERD_SWARM__MEMORY_SPOOL_BYTES": "0", "PEERD_SWARM__UPLOAD_RATE": "1048576",
                             "PEERD_SWARM__DOWNLOAD_RATE": "5368709120"})
        check_env_value(ds, "PEERD_METRICS__DEBUG_WEB", "true", "debugWeb: true turns the /debug/web page on")
        c = peerd_container(ds)
        pod = ds["spec"]["template"]["spec"]
        env = c.get("env", [])
        names = [e["name"] for e in env]
        check([e.get("value") for e in env if e["name"] == "PEERD_P2P__RESOLVE_TIMEOUT"] == ["20ms"],
              "extraEnv: of two entries with one name, the last wins, and it appears once")
        check(names.index("PEERD_SWARM__UPLOAD_RATE") < names.index("PEERD_SWARM__DOWNLOAD_RATE"),
              "extraEnv: an entry named like the chart's replaces it in place")
        check("livenessProbe" not in c and "readinessProbe" in c and "startupProbe" in c,
              "livenessProbe: null turns off that probe only")
        ann = ds["spec"]["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "5004"
              and ann.get("prometheus.io/path") == "/metrics/prometheus",
              "aksAutoDiscovery: prometheus.io/scrape, port 5004, path /metrics/prometheus on the pods")
        args = argv(c)
        check(flag(args, "log-format") == ["json"] and flag(args, "default-ns") == ["ghcr.io"],
              "logFormat and extraArgs reach `peerd run`")
        check(flag(args, "plain-http-host") == ["registry.local:5000"], "plainHttpHosts: `peerd run --plain-http-host`")
        inst = [x for x in pod["initContainers"] if runs(x, "hosts", "install")]
        check(bool(inst) and flag(argv(inst[0]), "plain-http") == ["registry.local:5000"],
              "plainHttpHosts: `peerd hosts install --plain-http`")
        m, v = mount_for(c, pod, "/var/lib/peerd/swarm")
        check(m is not None and v.get("emptyDir", {}).get("sizeLimit") == str(107374182400 + 2 ** 30),
              "spoolEmptyDir: <dataDir>/swarm is an emptyDir sized maxSpoolBytes + 1 GiB (the kubelet accounts it)")
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        check(len(terms) == 1 and {"key": "example.com/no-peerd", "operator": "DoesNotExist"} in terms[0]["matchExpressions"],
              "the user's own node affinity is kept, with the virtual-node exclusion added to it")
        vpa = one(docs, "VerticalPodAutoscaler")
        check(vpa["spec"]["targetRef"] == {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds["metadata"]["name"]}
              and vpa["spec"]["updatePolicy"]["updateMode"] == "Initial",
              "VerticalPodAutoscaler targets the peerd DaemonSet with the configured updateMode")
        cp = {p["containerName"]: p for p in vpa["spec"]["resourcePolicy"]["containerPolicies"]}
        check(cp.get("peerd", {}).get("maxAllowed") == {"memory": "2Gi"} and cp.get("configure-mirrors", {}).get("mode") == "Off",
              "VPA: bounds on the peerd container, the init container left alone")
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
    check(nports == {5001, 5003, 5004}, f"NetworkPolicy: ingress on the peer, p2p and metrics ports only ({nports})")
    metrics_rules = [r for r in np_["spec"]["ingress"] if [p["port"] for p in r["ports"]] == [5004]
                     and any("namespaceSelector" in f for f in r["from"])]
    check(len(metrics_rules) == 1, "NetworkPolicy: metrics port open to the configured namespace selector")
    check(np_["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"],
          "NetworkPolicy selects the peerd pods")
    check_alerts(docs, root, "peerd-ns")
    check_dashboard(docs, chart, root)
    check_names(docs)

    print()
    docs = load(renders / "azure.yaml")
    azure_regs = ["mcr.microsoft.com", "ghcr.io", "docker.io"]
    ds = check_common(docs, "Azure/peerd's install command", "peerd", azure_regs, "peerd-secret", "secret",
                      "cluster.local")
    if ds:
        check_mirrors(docs, ds, azure_regs)
        check(peerd_container(ds)["image"] == "ghcr.io/azure/acr/dev/peerd:stable",
              "--set peerd.image.ref reaches the containers")

    print()
    docs = load(renders / "no-mirrors.yaml")
    print("[configureMirrors=false] rendered objects: " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
    check_no_mirrors(docs, remove_stale=True)
    docs = load(renders / "no-mirrors-keep.yaml")
    print("[configureMirrors=false, removeStaleMirrors=false]")
    check_no_mirrors(docs, remove_stale=False)

    print()
    docs = load(renders / "minimal.yaml")
    ds = check_common(docs, "IPv6, every optional part off", "peerd", default_regs, "peerd-secret", "secret",
                      "cluster.local", bind="0.0.0.0", compat=0, probes=False, priority="", virtual_excluded=False,
                      content_dir=False)
    if ds:
        check(not ds["spec"]["template"]["spec"].get("affinity"), "no affinity at all when there is nothing to exclude")
        check(not [d for d in docs if hook(d)], "cleanup.enabled=false: no hook")

    print()
    docs = load(renders / "kube-system.yaml")
    check_common(docs, "namespace kube-system", "kube-system", default_regs, "peerd-secret", "secret", "cluster.local")

    print()
    docs = load(renders / "long-name.yaml")
    print("[a 53-character release name (the most Helm allows)]")
    ds = one(docs, "DaemonSet")
    check(len(ds["metadata"]["name"]) == 50, f"fullname capped at 50 characters ({ds['metadata']['name']})")
    check_names(docs)

    print()
    print("[lookup: helm template --dry-run=server against a fake API server]")
    docs = load(renders / "lookup-fresh.yaml")
    sec = find(docs, "Secret", "peerd-secret")
    raw = base64.b64decode(sec[0]["data"]["secret"]).decode() if sec else ""
    check(len(raw) == 48 and all(ch in string.ascii_letters + string.digits for ch in raw),
          "empty cluster (a fresh install): the Secret is generated once, 48 random alphanumerics")
    check(not any("checksum/secret" in (d["spec"]["template"]["metadata"].get("annotations") or {})
                  for d in find(docs, "DaemonSet")), "no checksum of the generated secret on the pods")
    docs = load(renders / "lookup-existing.yaml")
    sec = find(docs, "Secret", "peerd-secret")
    check(len(sec) == 1 and base64.b64decode(sec[0]["data"]["secret"]).decode() == "kept-in-the-cluster-0123456789ab",
          "cluster holding the Secret (an upgrade): its value is kept as it is")

    print()
    check_values_documented(chart)
    return report()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--values-table"]:
        # Print the README's values table from values.yaml (to paste after a change).
        print("| Key | Type | Default | Description |\n| --- | --- | --- | --- |")
        for key, kind, default, text in values_docs(Path(sys.argv[2])):
            print(f"| `{key}` | {kind} | `{default}` | {text} |")
        sys.exit(0)
    sys.exit(main())
