#!/usr/bin/env bash
# Validates the deployment examples:
# - every Kubernetes manifest in deploy/kubernetes against the Kubernetes
#   OpenAPI schemas (kubernetes-validate, schemas bundled, offline), strict:
#   unknown fields are errors. When the Python at hand lacks it, it is
#   installed (pinned) into a private virtualenv under ~/.cache, once.
# - the prometheus-operator PodMonitor, whose CRD is not in the core
#   schemas: parsed, and its fields checked against the subset of the CRD
#   that it uses.
# - the systemd unit with `systemd-analyze verify`, when available.
# Exit status: 0 if everything passed, 1 otherwise.
#
#   deploy/validate.sh                    # Kubernetes 1.25 and 1.37 schemas
#   K8S_VERSIONS="1.29 1.33" deploy/validate.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
validator_version=1.37.0
k8s_versions=${K8S_VERSIONS:-1.25 1.37}
python=${PYTHON:-python3}
status=0

mapfile -t manifests < <(find "$here/kubernetes" -name '*.yaml' | sort)

# The validator: the Python given ($PYTHON, default python3) if it already
# has it, else a virtualenv of our own (created and filled once; Debian's
# system Python refuses pip installs, PEP 668).
venv=${FORKWATCH_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/forkwatch/validate-venv}

has_validator() {
    "$1" - "$validator_version" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("kubernetes-validate") == sys.argv[1] else 1)
EOF
}

validator_python=
if has_validator "$python"; then
    validator_python=$python
elif [ -x "$venv/bin/python" ] && has_validator "$venv/bin/python"; then
    validator_python=$venv/bin/python
else
    echo "installing kubernetes-validate==$validator_version into $venv" >&2
    if { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2; } &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$validator_version" >&2 &&
        has_validator "$venv/bin/python"; then
        validator_python=$venv/bin/python
    fi
fi

if [ -n "$validator_python" ]; then
    for v in $k8s_versions; do
        echo "== Kubernetes $v schemas (kubernetes-validate $validator_version, strict)"
        # PodMonitor: "Couldn't find schema" is a warning; checked below.
        if ! "$validator_python" -m kubernetes_validate --strict --quiet -k "$v" "${manifests[@]}"; then
            status=1
        fi
    done
else
    echo "WARNING: kubernetes-validate could not be installed (no network? no python3-venv?):" \
         "the manifests are only parsed as YAML, not checked against the Kubernetes schemas" >&2
fi

echo "== YAML parse and PodMonitor fields"
"${validator_python:-$python}" - "${manifests[@]}" <<'EOF' || status=1
import sys

try:
    import yaml
except ImportError:
    sys.exit("PyYAML is missing (pip install pyyaml)")

# The fields of monitoring.coreos.com/v1 PodMonitor that these manifests may
# use (a subset of the CRD; extend it when you use more).
SPEC = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels",
        "sampleLimit", "targetLimit", "attachMetadata"}
ENDPOINT = {"port", "portNumber", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
            "honorTimestamps", "relabelings", "metricRelabelings", "params", "enableHttp2", "filterRunning"}
RELABEL = {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}
ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
           "uppercase", "keepequal", "dropequal"}

bad = 0
def fail(msg):
    global bad
    bad += 1
    print("ERROR " + msg)

for path in sys.argv[1:]:
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: {e}")
        continue
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        if not d.get("apiVersion") or not kind or not name:
            fail(f"{path}: a document lacks apiVersion, kind or metadata.name")
            continue
        if kind != "PodMonitor":
            print(f"ok    {path}: {kind}/{name} parses")
            continue
        before = bad
        if d["apiVersion"] != "monitoring.coreos.com/v1":
            fail(f"{path}: PodMonitor/{name}: apiVersion {d['apiVersion']}")
        spec = d.get("spec") or {}
        for k in set(spec) - SPEC:
            fail(f"{path}: PodMonitor/{name}: unknown spec.{k}")
        if not isinstance(spec.get("selector"), dict):
            fail(f"{path}: PodMonitor/{name}: spec.selector is required")
        eps = spec.get("podMetricsEndpoints")
        if not isinstance(eps, list) or not eps:
            fail(f"{path}: PodMonitor/{name}: spec.podMetricsEndpoints is required")
            eps = []
        for i, ep in enumerate(eps):
            for k in set(ep) - ENDPOINT:
                fail(f"{path}: PodMonitor/{name}: unknown podMetricsEndpoints[{i}].{k}")
            if "port" not in ep and "portNumber" not in ep:
                fail(f"{path}: PodMonitor/{name}: podMetricsEndpoints[{i}] needs port")
            for j, r in enumerate(ep.get("relabelings", []) + ep.get("metricRelabelings", [])):
                for k in set(r) - RELABEL:
                    fail(f"{path}: PodMonitor/{name}: unknown relabeling field {k}")
                if r.get("action", "replace").lower() not in ACTIONS:
                    fail(f"{path}: PodMonitor/{name}: unknown relabeling action {r['action']}")
                if r.get("action", "replace").lower() == "replace" and "targetLabel" not in r:
                    fail(f"{path}: PodMonitor/{name}: a replace relabeling needs targetLabel")
        if bad == before:
            print(f"ok    {path}: {kind}/{name} parses; fields checked against the CRD subset "
                  f"(no CRD schema offline)")
sys.exit(1 if bad else 0)
EOF

if command -v systemd-analyze >/dev/null 2>&1; then
    echo "== systemd unit (systemd-analyze verify)"
    # verify wants the ExecStart binary and the EnvironmentFile to exist:
    # check a copy that points at stand-ins.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed -e "s#/usr/local/bin/forkwatch#/bin/true#" \
        -e "s#-/etc/default/forkwatch#$here/systemd/forkwatch.env#" \
        "$here/systemd/forkwatch.service" >"$tmp/forkwatch.service"
    # verify reports unknown keys and bad values as log lines, not in its
    # exit status. Its own tables name syscalls that older libseccomp does
    # not know ("Failed to parse system call"): not ours, ignored.
    out=$(systemd-analyze verify "$tmp/forkwatch.service" 2>&1 | grep -F forkwatch.service |
          grep -v 'Failed to parse system call' || true)
    if [ -n "$out" ]; then
        echo "$out"
        status=1
    else
        echo "ok    systemd/forkwatch.service"
    fi
else
    echo "(systemd-analyze not found: the systemd unit is not checked)"
fi

if [ "$status" -eq 0 ]; then echo "all manifests valid"; else echo "validation FAILED"; fi
exit "$status"
