#!/usr/bin/env bash
# `make k8s-check` (and `make test`): validate k8s/ and the Dockerfile offline.
#
# 1. Every manifest file against the Kubernetes schemas bundled in PyPI's
#    kubernetes-validate (--strict: unknown fields fail). Kinds from CRDs
#    (HTTPRoute, BackendTrafficPolicy) have no schema there and only warn.
# 2. Every kustomization names files and folders that exist.
# 3. When kubectl is there (its built-in kustomize; Debian has no kustomize),
#    the rendered output of k8s/, of every overlay and of the base with each
#    component, validated again; without kubectl the same sets are assembled
#    from the listed resources (patches not applied) and the script says so.
# 4. On each set, what the schemas cannot see: selectors match the pod labels,
#    probes and Services name existing ports, load balancer objects point at
#    the Service and use least connections, the grace period covers the drain.
# 5. The Dockerfile with hadolint (it cannot be built here: no Docker daemon).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

K8S_VERSION="${K8S_VERSION:-1.33.0}"
venv="$HERALD_TOOLS/k8s-venv"
bash scripts/install-deps.sh k8s-validate
validate() { "$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$@"; }

mapfile -t files < <(find k8s -name '*.yaml' ! -name kustomization.yaml | sort)
validate "${files[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Render targets: name and kustomization folder.
targets=("root=k8s")
for d in k8s/overlays/*/; do
  [[ -f "$d/kustomization.yaml" ]] && targets+=("overlay-$(basename "$d")=${d%/}")
done
for d in k8s/components/*/; do
  [[ -f "$d/kustomization.yaml" ]] || continue
  name="$(basename "$d")"
  mkdir -p "$work/with-$name"
  rel="$(realpath --relative-to="$work/with-$name" k8s)"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s/base\ncomponents:\n  - %s/components/%s\n' \
    "$rel" "$rel" "$name" >"$work/with-$name/kustomization.yaml"
  targets+=("base-with-$name=$work/with-$name")
done

mode=rendered
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    kubectl kustomize "${t#*=}" >"$work/${t%%=*}.yaml" \
      || die "kubectl kustomize ${t#*=} failed"
    validate --no-warn "$work/${t%%=*}.yaml"  # CRD warnings were shown above
  done
else
  mode=assembled
  log "kubectl not found: kustomize output is not rendered; checking assembled resources instead"
fi

"$venv/bin/python" - "$mode" "$work" "${targets[@]}" <<'PY'
import pathlib, re, sys, yaml

mode, work, targets = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
errors = []

def kustomization(d):
    return yaml.safe_load((d / "kustomization.yaml").read_text()) or {}

# 2. References of every kustomization exist.
for k in sorted(pathlib.Path("k8s").rglob("kustomization.yaml")):
    d, spec = k.parent, kustomization(k.parent)
    for field in ("resources", "components"):
        for r in spec.get(field, []) or []:
            p = d / r
            if not (p.is_file() or (p / "kustomization.yaml").is_file()):
                errors.append(f"{k}: {field} entry {r!r} is neither a file nor a kustomization folder")
            elif field == "components" and kustomization(p).get("kind") != "Component":
                errors.append(f"{k}: {r!r} is listed as a component but is not kind Component")
    for patch in spec.get("patches", []) or []:
        if "path" in patch and not (d / patch["path"]).is_file():
            errors.append(f"{k}: patch file {patch['path']!r} does not exist")

def assemble(d):
    """Resources of a kustomization, recursively, without patches (fallback)."""
    spec, docs = kustomization(d), []
    for r in (spec.get("resources") or []) + (spec.get("components") or []):
        p = (d / r).resolve()
        if p.is_dir():
            docs += assemble(p)
        elif p.is_file():
            docs += [x for x in yaml.safe_load_all(p.read_text()) if x]
    return docs

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text).strip())
    if not m:
        raise ValueError(f"cannot read duration {text!r}")
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]

def check(name, docs):
    def err(msg):
        errors.append(f"{name}: {msg}")
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deps = by_kind.get("Deployment", {})
    if "herald" not in deps:
        return err("no Deployment herald")
    dep = deps["herald"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    def matches(selector, what):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            err(f"{what} selector {selector} does not match the pod labels {labels}")
    matches(dep["spec"]["selector"]["matchLabels"], "Deployment")
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            err(f"{probe} must GET {path}, not {get.get('path')}")
        if get.get("port") not in ports and get.get("port") not in ports.values():
            err(f"{probe} port {get.get('port')!r} is not a container port")
    scrape = pod["metadata"].get("annotations", {}).get("prometheus.io/port")
    if scrape and int(scrape) not in ports.values():
        err(f"prometheus.io/port {scrape} is not a container port")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    ops = env.get("HERALD_OPS_LISTEN")
    if scrape and ops and not ops.endswith(f":{scrape}"):
        err(f"Prometheus scrapes port {scrape}, but HERALD_OPS_LISTEN is {ops}")
    sc, psc = c.get("securityContext", {}), pod["spec"].get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and psc.get("runAsNonRoot")):
        err("container must run non-root, read-only, without privilege escalation")
    for tsc in pod["spec"].get("topologySpreadConstraints", []):
        matches(tsc["labelSelector"]["matchLabels"], "topologySpreadConstraints")
    # The grace period covers preStop + drain window + the last shutdown steps.
    config = by_kind.get("ConfigMap", {}).get("herald-config", {}).get("data", {})
    drain = seconds(config.get("HERALD_DRAIN_WINDOW", "10s"))
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < pre + drain + 10:
        err(f"terminationGracePeriodSeconds {grace} < preStop {pre}s + drain window {drain}s + 10s")
    services = by_kind.get("Service", {})
    for svc in services.values():
        matches(svc["spec"]["selector"], f"Service {svc['metadata']['name']}")
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                err(f"Service port {p} targets no container port")
    def service_port(svc_name, port):
        svc = services.get(svc_name)
        return svc and any(port in (p.get("name"), p.get("port")) for p in svc["spec"]["ports"])
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        matches(pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            err(f"HPA scales {ref['kind']}/{ref['name']}, which is not there")
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        if names != ["herald_connections"]:
            err(f"HPA must scale on the Pods metric herald_connections, not {names}")
        if "replicas" in dep["spec"]:
            err("Deployment sets replicas while an HPA owns the count")
    for ing in by_kind.get("Ingress", {}).values():
        notes = ing["metadata"].get("annotations", {})
        if notes.get("haproxy.org/load-balance") != "leastconn":
            err(f"Ingress {ing['metadata']['name']} is not haproxy.org/load-balance: leastconn")
        snippet = notes.get("haproxy.org/backend-config-snippet", "")
        for line in ("option http-no-delay", "retry-on conn-failure empty-response",
                     "http-request disable-l7-retry unless METH_GET"):
            if line not in snippet:
                err(f"Ingress {ing['metadata']['name']} backend snippet lacks `{line}`")
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                b = p["backend"]["service"]
                if not service_port(b["name"], b["port"].get("name", b["port"].get("number"))):
                    err(f"Ingress backend {b} is not a port of a Service here")
    routes = by_kind.get("HTTPRoute", {})
    for route in routes.values():
        for rule in route["spec"]["rules"]:
            for b in rule["backendRefs"]:
                if not service_port(b["name"], b["port"]):
                    err(f"HTTPRoute backend {b} is not a port of a Service here")
            if rule.get("timeouts", {}).get("request") != "0s":
                err("HTTPRoute rules must turn the request timeout off (streams are long)")
    for btp in by_kind.get("BackendTrafficPolicy", {}).values():
        for ref in btp["spec"]["targetRefs"]:
            if ref["kind"] != "HTTPRoute" or ref["name"] not in routes:
                err(f"BackendTrafficPolicy targets {ref}, which is not an HTTPRoute here")
        if btp["spec"].get("loadBalancer", {}).get("type") != "LeastRequest":
            err("BackendTrafficPolicy must use loadBalancer.type LeastRequest")
        triggers = btp["spec"].get("retry", {}).get("retryOn", {}).get("triggers", [])
        for ref in btp["spec"]["targetRefs"]:
            route = routes.get(ref["name"], {})
            methods = {m.get("method") for r in route.get("spec", {}).get("rules", [])
                       for m in r.get("matches", [])}
            if "reset" in triggers and methods != {"GET"}:
                err(f"BackendTrafficPolicy {btp['metadata']['name']} resends requests whose pod died, but {ref['name']} is not GET only")
    events = [r for r in routes.values()
              if any(m.get("method") == "GET" and m.get("path", {}).get("value") == "/v1/events"
                     for rule in r["spec"]["rules"] for m in rule.get("matches", []))]
    if routes and not any("reset" in b["spec"].get("retry", {}).get("retryOn", {}).get("triggers", [])
                          for b in by_kind.get("BackendTrafficPolicy", {}).values()
                          for ref in b["spec"]["targetRefs"] if ref["name"] in {r["metadata"]["name"] for r in events}):
        err("no BackendTrafficPolicy resends GET /v1/events whose pod died before answering (retry on reset)")
    return sorted(f"{k}/{n}" for k, v in by_kind.items() for n in v)

for t in targets:
    name, folder = t.split("=", 1)
    if mode == "rendered":
        docs = [d for d in yaml.safe_load_all((work / f"{name}.yaml").read_text()) if d]
    else:
        docs = assemble(pathlib.Path(folder))
    objects = check(name, docs)
    print(f"check-k8s.sh: {name} ({mode}): {', '.join(objects or [])}")

if errors:
    sys.exit("check-k8s.sh: error:\n  " + "\n  ".join(errors))
PY
log "k8s manifests valid (Kubernetes $K8S_VERSION, $mode kustomize output)"
"$venv/bin/hadolint" --no-color Dockerfile
log "Dockerfile passes hadolint"
