#!/usr/bin/env python3
"""Structural checks of deploy/ for machines without a container engine or a cluster
(scripts/check-deploy.sh runs them): Kubernetes manifests, docker-compose.yml, the
Dockerfile and the systemd unit. Writes every node config embedded in a ConfigMap, and the
configs the StatefulSets' init containers render from them, to OUT_DIR for
`weft check-config`.

Usage: check-deploy.py REPO_DIR OUT_DIR WEFT_BINARY
Exit status 1 with one line per problem on failure.
"""

import os
import re
import subprocess
import sys

import yaml

problems = []


def fail(where, what):
    problems.append(f"{where}: {what}")


def dig(obj, *path):
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return None
    return obj


# --- Kubernetes ---------------------------------------------------------------------------

# What every region's manifest must hold.
REGION_KINDS = {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
}


def check_container(where, c, probes):
    if not c.get("name") or not c.get("image"):
        fail(where, "container without name or image")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        if not (res.get(part) or {}).get("cpu") or not (res.get(part) or {}).get("memory"):
            fail(where, f"container {c.get('name')}: resources.{part} needs cpu and memory")
    sc = c.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(where, f"container {c.get('name')}: allowPrivilegeEscalation must be false")
    if "ALL" not in (dig(sc, "capabilities", "drop") or []):
        fail(where, f"container {c.get('name')}: capabilities.drop must hold ALL")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(where, f"container {c.get('name')}: readOnlyRootFilesystem must be true")
    if probes:
        ports = {p.get("name"): p for p in c.get("ports") or []}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            got = dig(c, probe, "httpGet", "path")
            if got != path:
                fail(where, f"container {c.get('name')}: {probe} must GET {path}, got {got}")
            port = dig(c, probe, "httpGet", "port")
            if port not in ports and port != 8400:
                fail(where, f"container {c.get('name')}: {probe} port {port} is not a container port")


def check_statefulset(where, doc, by_kind, out_dir, weft):
    spec = doc.get("spec") or {}
    name = dig(doc, "metadata", "name")
    sel = dig(spec, "selector", "matchLabels") or {}
    labels = dig(spec, "template", "metadata", "labels") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        fail(where, f"StatefulSet {name}: selector {sel} does not match the pod labels {labels}")
    headless = [
        s for s in by_kind.get("Service", [])
        if dig(s, "metadata", "name") == spec.get("serviceName")
    ]
    if not headless or dig(headless[0], "spec", "clusterIP") != "None":
        fail(where, f"StatefulSet {name}: serviceName {spec.get('serviceName')} is not a headless Service here")
    pdbs = [
        p for p in by_kind.get("PodDisruptionBudget", [])
        if (dig(p, "spec", "selector", "matchLabels") or {}).items() <= labels.items()
        and dig(p, "spec", "selector", "matchLabels")
    ]
    if not pdbs:
        fail(where, f"StatefulSet {name}: no PodDisruptionBudget selects its pods")
    pod = dig(spec, "template", "spec") or {}
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        fail(where, f"StatefulSet {name}: pods must run as a non-root user")
    if dig(psc, "seccompProfile", "type") != "RuntimeDefault":
        fail(where, f"StatefulSet {name}: seccompProfile must be RuntimeDefault")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        fail(where, f"StatefulSet {name}: expected one container")
    for c in containers:
        check_container(where, c, probes=True)
    for c in pod.get("initContainers") or []:
        check_container(where, c, probes=False)
    # Volumes: every mount has a volume or a claim template; ConfigMaps and Secrets exist.
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    claims = {dig(t, "metadata", "name") for t in spec.get("volumeClaimTemplates") or []}
    for c in containers + (pod.get("initContainers") or []):
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes and m.get("name") not in claims:
                fail(where, f"StatefulSet {name}: mount {m.get('name')} has no volume")
    configmaps = {dig(c, "metadata", "name"): c for c in by_kind.get("ConfigMap", [])}
    for v in volumes.values():
        cm = dig(v, "configMap", "name")
        if cm and cm not in configmaps:
            fail(where, f"StatefulSet {name}: volume {v.get('name')} uses ConfigMap {cm}, not defined here")
        if cm:
            for item in dig(v, "configMap", "items") or []:
                if item.get("key") not in (configmaps.get(cm, {}).get("data") or {}):
                    fail(where, f"ConfigMap {cm} has no key {item.get('key')}")
    if "data" not in claims:
        fail(where, f"StatefulSet {name}: no volumeClaimTemplate `data` for the store")
    render_init_configs(where, name, pod, configmaps, out_dir, weft)


def render_init_configs(where, name, pod, configmaps, out_dir, weft):
    """Runs the init container's script against the ConfigMap's config, as pod 0 with one
    neighbour in the headless Service, and checks the config it writes."""
    init = [c for c in pod.get("initContainers") or [] if c.get("name") == "render-config"]
    if not init:
        fail(where, f"StatefulSet {name}: no render-config init container")
        return
    cmd = init[0].get("command") or []
    if cmd[:2] != ["/bin/sh", "-c"] or len(cmd) != 3:
        fail(where, f"StatefulSet {name}: render-config must be /bin/sh -c SCRIPT")
        return
    work = os.path.join(out_dir, f"render-{name}")
    for d in ("config", "keys", "run", "bin"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    cm_name = next(
        dig(v, "configMap", "name") for v in pod.get("volumes") or [] if v.get("name") == "config"
    )
    with open(os.path.join(work, "config", "weft.toml"), "w") as f:
        f.write(configmaps[cm_name]["data"]["weft.toml"])
    pod_name = f"{name}-0"
    with open(os.path.join(work, "keys", f"{pod_name}.key"), "w") as f:
        f.write("test key\n")
    # busybox nslookup's output for the headless Service: the DNS server, then the pods.
    stub = os.path.join(work, "bin", "nslookup")
    with open(stub, "w") as f:
        f.write(
            "#!/bin/sh\n"
            "printf 'Server:\\t\\t10.96.0.10\\nAddress:\\t10.96.0.10:53\\n\\n'\n"
            "printf 'Name:\\t%s\\nAddress: 10.1.0.5\\nName:\\t%s\\nAddress: 10.1.0.6\\n' \"$1\" \"$1\"\n"
        )
    os.chmod(stub, 0o755)
    script = cmd[2]
    for path, local in (("/config/", "config/"), ("/keys/", "keys/"), ("/run/weft/", "run/")):
        script = script.replace(path, os.path.join(work, local))
    env = dict(os.environ, POD_NAME=pod_name, POD_IP="10.1.0.5")
    env["PATH"] = os.path.join(work, "bin") + os.pathsep + env.get("PATH", "")
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(where, f"StatefulSet {name}: the render-config script failed: {r.stderr.strip()}")
        return
    rendered = os.path.join(work, "run", "weft.toml")
    text = open(rendered).read()
    if f'name = "{pod_name}"' not in text:
        fail(where, f"StatefulSet {name}: rendered config does not name the pod")
    # Only the node's own (top-level) name is the pod's: names inside tables (principals,
    # devices) must come through unchanged.
    source = open(os.path.join(work, "config", "weft.toml")).read()
    in_table = False
    for line in source.splitlines():
        in_table = in_table or line.startswith("[")
        if in_table and line.startswith("name = ") and line not in text.splitlines():
            fail(where, f"StatefulSet {name}: the render changed `{line}` inside a table")
    if 'advertise = "10.1.0.5:7400"' not in text:
        fail(where, f"StatefulSet {name}: rendered config does not advertise the pod IP")
    if not re.search(r'^seeds = \["10\.1\.0\.6:7400", ', text, re.M):
        fail(where, f"StatefulSet {name}: rendered config does not seed the region's other pod (and only it)")
    if os.stat(os.path.join(work, "run", "node.key")).st_mode & 0o077:
        fail(where, f"StatefulSet {name}: the key copy is readable by others")
    r = subprocess.run([weft, "check-config", "--config", rendered], capture_output=True, text=True)
    if r.returncode != 0:
        fail(where, f"StatefulSet {name}: the rendered config is refused: {r.stderr.strip()}")


def check_k8s(repo, out_dir, weft):
    k8s = os.path.join(repo, "deploy", "k8s")
    files = []
    for root, _, names in os.walk(k8s):
        files += [os.path.join(root, n) for n in sorted(names) if n.endswith((".yaml", ".yml"))]
    if not files:
        fail("deploy/k8s", "no manifests")
    regions = 0
    for path in files:
        where = os.path.relpath(path, repo)
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        except yaml.YAMLError as e:
            fail(where, f"not YAML: {e}")
            continue
        by_kind = {}
        for i, d in enumerate(docs):
            kind = d.get("kind")
            if not d.get("apiVersion") or not kind or not dig(d, "metadata", "name"):
                fail(where, f"document {i}: needs apiVersion, kind and metadata.name")
                continue
            if API_VERSIONS.get(kind) not in (None, d["apiVersion"]):
                fail(where, f"{kind}: apiVersion {d['apiVersion']}, expected {API_VERSIONS[kind]}")
            if kind != "Namespace" and not dig(d, "metadata", "namespace"):
                fail(where, f"{kind} {dig(d, 'metadata', 'name')}: no namespace")
            by_kind.setdefault(kind, []).append(d)
        if "StatefulSet" not in by_kind:
            continue
        regions += 1
        missing = REGION_KINDS - by_kind.keys()
        if missing:
            fail(where, f"missing kinds: {sorted(missing)}")
        for cm in by_kind.get("ConfigMap", []):
            data = cm.get("data") or {}
            if "weft.toml" in data:
                out = os.path.join(out_dir, f"k8s-{dig(cm, 'metadata', 'name')}.toml")
                with open(out, "w") as f:
                    f.write(data["weft.toml"])
        for s in by_kind["StatefulSet"]:
            check_statefulset(where, s, by_kind, out_dir, weft)
    if regions < 3:
        fail("deploy/k8s", f"{regions} region manifests, expected at least 3")


# --- Compose -------------------------------------------------------------------------------

def check_compose(repo):
    where = "deploy/docker-compose.yml"
    path = os.path.join(repo, where)
    try:
        doc = yaml.safe_load(open(path))
    except yaml.YAMLError as e:
        fail(where, f"not YAML: {e}")
        return
    services = doc.get("services") or {}
    if len(services) < 3:
        fail(where, f"{len(services)} services, expected 3 regions")
    nets = dig(doc, "networks") or {}
    ips = set()
    for name, s in services.items():
        if not s.get("image") and not s.get("build"):
            fail(where, f"service {name}: no image or build")
        user = str(s.get("user", ""))
        if not user or user.startswith("0") or user.startswith("root"):
            fail(where, f"service {name}: must run as a non-root user, got {user!r}")
        for net, cfg in (s.get("networks") or {}).items():
            if net not in nets:
                fail(where, f"service {name}: network {net} is not defined")
            ip = (cfg or {}).get("ipv4_address")
            if ip:
                ips.add(ip)
        config = None
        agent_config = None
        for v in s.get("volumes") or []:
            src, _, rest = v.partition(":")
            dst = rest.split(":")[0]
            if dst == "/etc/weft/weft.toml":
                config = src
            if dst == "/etc/weft/agent.toml":
                agent_config = src
        if "agent-run" in (s.get("command") or []):
            # The edge agent: its config template exists, and names the nodes' edge ports.
            if not agent_config:
                fail(where, f"service {name}: no agent config mounted at /etc/weft/agent.toml")
                continue
            template = os.path.join(repo, "deploy", "compose", os.path.basename(agent_config))
            if not os.path.exists(template):
                fail(where, f"service {name}: no template {os.path.relpath(template, repo)}")
                continue
            addrs = re.findall(r'^addr = "([0-9.]+):7500"', open(template).read(), re.M)
            if not addrs or not set(addrs) <= ips:
                fail(where, f"service {name}: the agent's nodes are not the nodes' addresses")
            continue
        if not config:
            fail(where, f"service {name}: no config mounted at /etc/weft/weft.toml")
            continue
        # The mounted file is generated by setup.sh from the template next to it.
        template = os.path.join(repo, "deploy", "compose", os.path.basename(config))
        if not os.path.exists(template):
            fail(where, f"service {name}: no template {os.path.relpath(template, repo)} for {config}")
            continue
        text = open(template).read()
        adv = re.search(r'^advertise = "([0-9.]+):7400"', text, re.M)
        if not adv or adv.group(1) not in ips:
            fail(where, f"service {name}: the config's advertise address is not its ipv4_address")
    if not any("agent-run" in (s.get("command") or []) for s in services.values()):
        fail(where, "no edge agent service (a command running `weft agent-run`)")
    if "x-node" in doc and not dig(doc, "x-node", "healthcheck"):
        fail(where, "x-node: no healthcheck")


# --- Dockerfile and systemd ----------------------------------------------------------------

def check_dockerfile(repo):
    where = "deploy/Dockerfile"
    text = open(os.path.join(repo, where)).read()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if len(stages) < 2:
        fail(where, "expected a multi-stage build")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        fail(where, "the final stage must set a non-root USER")
    copies = re.findall(r"^COPY\s+--from=\S+\s+(.*)$", text, re.M)
    if len(copies) != 1 or "weft" not in copies[0]:
        fail(where, f"the runtime image must copy only the weft binary, got {copies}")
    if not os.path.exists(os.path.join(repo, "deploy", "Dockerfile.dockerignore")):
        fail(where, "no Dockerfile.dockerignore (the context would include target/)")


def check_systemd(repo):
    where = "deploy/systemd/weft.service"
    text = open(os.path.join(repo, where)).read()
    for directive in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=weft",
        "NoNewPrivileges=yes",
        "LoadCredential=node.key:",
        "ExecStart=/usr/local/bin/weft node --config /etc/weft/weft.toml",
        "Restart=on-failure",
    ):
        if not re.search(rf"^{re.escape(directive)}", text, re.M):
            fail(where, f"missing {directive}")


def main():
    repo, out_dir, weft = sys.argv[1], sys.argv[2], sys.argv[3]
    check_k8s(repo, out_dir, weft)
    check_compose(repo)
    check_dockerfile(repo)
    check_systemd(repo)
    for p in problems:
        print(f"check-deploy: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
