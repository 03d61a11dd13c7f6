"""What each rendered overlay must contain, beyond being valid Kubernetes (validate.sh checks that).

Usage: check.py OVERLAYS_DIR RENDERED_DIR   (RENDERED_DIR/<overlay with / as ->.yaml, as validate.sh writes)

Every overlay under OVERLAYS_DIR must be one this file knows (EXPECT), so a new one cannot slip
through unchecked. Exits 1 naming every missing piece.
"""

import pathlib
import sys

import yaml

STATE_CLAIM = "state-mistnet-ingest-0"  # volumeClaimTemplate "state" of StatefulSet mistnet-ingest, pod 0
EDGE_ROLE = "node-role.kubernetes.io/edge"  # the label (and taint key) of KubeEdge edge nodes


class Overlay:
    def __init__(self, name, docs):
        self.name = name
        self.docs = [d for d in docs if d]
        self.errors = []

    def need(self, ok, what):
        if not ok:
            self.errors.append(what)
        return ok

    def objects(self, kind, name=None):
        return [d for d in self.docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]

    def one(self, kind, name):
        found = self.objects(kind, name)
        self.need(len(found) == 1, f"exactly one {kind} {name} (found {len(found)})")
        return found[0] if found else None


def pod_spec(obj):
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_strings(v)
    elif isinstance(node, str):
        yield node


def check_every_pod(o):
    """Non-root, read-only root file system, no privilege escalation, no placeholder left, local images."""
    pods = [d for d in o.docs if d["kind"] in ("Pod", "Job", "StatefulSet", "Deployment", "DaemonSet")]
    o.need(pods, "at least one workload")
    for d in pods:
        what = f"{d['kind']} {d['metadata']['name']}"
        spec = pod_spec(d)
        sc = spec.get("securityContext", {})
        o.need(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, f"{what}: runAsNonRoot, runAsUser 65532")
        o.need(sc.get("fsGroup") == 65532, f"{what}: fsGroup 65532 (the volumes belong to the image's user)")
        o.need(spec.get("automountServiceAccountToken") is False, f"{what}: automountServiceAccountToken false")
        for c in containers(spec):
            csc = c.get("securityContext", {})
            o.need(csc.get("readOnlyRootFilesystem") is True, f"{what}/{c['name']}: readOnlyRootFilesystem")
            o.need(csc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}: allowPrivilegeEscalation false")
            o.need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{what}/{c['name']}: capabilities drop ALL")
            o.need(c.get("imagePullPolicy") == "IfNotPresent", f"{what}/{c['name']}: imagePullPolicy IfNotPresent (no registry)")
            o.need(":" in c["image"], f"{what}/{c['name']}: an image with a tag, got {c['image']}")
    left = sorted({s for s in walk_strings(o.docs) if "set-by-" in s})
    o.need(not left, f"placeholders left unset: {left}")


def check_ingest(o, tls):
    sts = o.one("StatefulSet", "mistnet-ingest")
    if not sts:
        return
    spec = pod_spec(sts)
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    o.need(claims == ["state"], f"StatefulSet mistnet-ingest: volumeClaimTemplates [state], got {claims}")
    for t in sts["spec"].get("volumeClaimTemplates", []):
        o.need(t["spec"].get("resources", {}).get("requests", {}).get("storage"), "the store's claim requests storage")
    serve = next((c for c in spec["containers"] if c["name"] == "serve"), None)
    if not o.need(serve, "container serve"):
        return
    args = serve["args"]
    o.need(args[0] == "serve", "the container runs `mistnet-cloud serve`")
    o.need("--listen" in args and args[args.index("--listen") + 1] == "0.0.0.0:50051", "serve --listen 0.0.0.0:50051")
    mounts = {m["name"]: m["mountPath"] for m in serve["volumeMounts"]}
    o.need(mounts.get("state") == "/var/lib/mistnet" and "--store" in args and args[args.index("--store") + 1].startswith("/var/lib/mistnet/"),
           "the store (--store) on the claim state, mounted at /var/lib/mistnet")
    volumes = {v["name"]: v for v in spec["volumes"]}
    secrets = {v["secret"]["secretName"]: v["name"] for v in spec["volumes"] if "secret" in v}
    o.need("mistnet-tokens" in secrets, "Secret mistnet-tokens mounted")
    if "mistnet-tokens" in secrets:
        at = mounts.get(secrets["mistnet-tokens"], "?")
        o.need(f"{at}/tokens.txt" in args and f"{at}/operator.token" in args, "--tokens and --operator-token-file from Secret mistnet-tokens")
    o.need("--metrics-listen" in args, "serve --metrics-listen")
    o.need(volumes.get("data", {}).get("persistentVolumeClaim", {}).get("claimName") == "mistnet-data", "mistnet-data mounted")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = serve.get(probe, {}).get("exec", {}).get("command", [])
        if not o.need(cmd[:2] == ["/usr/local/bin/mistnet-cloud", "health"], f"{probe}: exec `mistnet-cloud health`"):
            continue
        server = cmd[cmd.index("--server") + 1] if "--server" in cmd else "http://127.0.0.1:50051"
        if tls:
            o.need(server == "https://127.0.0.1:50051" and "--ca-cert" in cmd and "--client-cert" in cmd and "--client-key" in cmd,
                   f"{probe}: https with the CA and the probe's client certificate (mTLS)")
        else:
            o.need(server == "http://127.0.0.1:50051", f"{probe}: http://127.0.0.1:50051")
    if tls:
        for flag in ("--tls-cert", "--tls-key", "--client-ca", "--bind-cert-san"):
            o.need(flag in args, f"serve {flag}")
        o.need("--insecure-plaintext" not in args, "no --insecure-plaintext with TLS")
        o.need("mistnet-ingest-tls" in secrets, "Secret mistnet-ingest-tls mounted")
        o.need(spec.get("nodeSelector", {}).get("mistnet.io/state") == "true", "ingest on the node labelled mistnet.io/state=true")
        lb = o.objects("Service", "mistnet-ingest-external")
        o.need(lb and lb[0]["spec"].get("type") in ("LoadBalancer", "NodePort"), "Service mistnet-ingest-external (LoadBalancer or NodePort)")
    else:
        o.need("--insecure-plaintext" in args, "serve --insecure-plaintext (dev: plaintext on the cluster network)")
    svc = o.objects("Service", "mistnet-ingest")
    o.need(svc and svc[0]["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
           and any(p["port"] == 50051 for p in svc[0]["spec"]["ports"]), "Service mistnet-ingest selecting the ingest pod on 50051")
    o.need(any(s["spec"].get("clusterIP") == "None" and s["metadata"]["name"] == sts["spec"]["serviceName"] for s in o.objects("Service")),
           "the StatefulSet's headless governing Service")
    policies = {p["metadata"]["name"]: p for p in o.objects("NetworkPolicy")}
    for name in ("mistnet-ingest", "mistnet-edge", "mistnet-offline"):
        o.need(name in policies and {"Ingress", "Egress"} <= set(policies[name]["spec"].get("policyTypes", [])), f"NetworkPolicy {name} (Ingress and Egress)")
    if "mistnet-ingest" in policies:
        ports = [p["port"] for r in policies["mistnet-ingest"]["spec"].get("ingress", []) for p in r.get("ports", [])]
        o.need(50051 in ports and 9464 in ports, "NetworkPolicy mistnet-ingest admits 50051 and 9464 only")
        o.need(not policies["mistnet-ingest"]["spec"].get("egress"), "NetworkPolicy mistnet-ingest: no egress")
    if "mistnet-offline" in policies:
        o.need(not policies["mistnet-offline"]["spec"].get("ingress") and not policies["mistnet-offline"]["spec"].get("egress"),
               "NetworkPolicy mistnet-offline: nothing in, nothing out")


def check_edges(o, kubeedge):
    jobs = [j for j in o.objects("Job") if j["metadata"]["labels"].get("app.kubernetes.io/component") == "edge"]
    if not o.need(len(jobs) >= 2, f"at least 2 edge Jobs (found {len(jobs)})"):
        return
    ids, nodes = [], []
    for j in jobs:
        what = f"Job {j['metadata']['name']}"
        spec = pod_spec(j)
        c = spec["containers"][0]
        args, e = c["args"], env(c)
        o.need(args[0] == "run" and args[args.index("--edge") + 1] == "$(MISTNET_EDGE)", f"{what}: `mistnet-edge run --edge $(MISTNET_EDGE)`")
        edge = e.get("MISTNET_EDGE")
        ids.append(edge)
        secret = next((v for v in spec["volumes"] if "secret" in v), None)
        o.need(secret and secret["secret"]["secretName"] == f"mistnet-edge-{edge}", f"{what}: its own Secret mistnet-edge-{edge}")
        if secret:
            at = next((m["mountPath"] for m in c["volumeMounts"] if m["name"] == secret["name"]), "?")
            o.need(args[args.index("--token-file") + 1] == f"{at}/token", f"{what}: --token-file from its Secret")
        o.need(e.get("MISTNET_DATA") and args[args.index("--data") + 1] == "$(MISTNET_DATA)", f"{what}: --data $(MISTNET_DATA)")
        o.need(any(v["name"] == "data" for v in spec["volumes"]), f"{what}: a data volume")
        o.need(spec.get("restartPolicy") == "OnFailure", f"{what}: restartPolicy OnFailure")
        if kubeedge:
            sel = spec.get("nodeSelector", {})
            o.need(sel.get(EDGE_ROLE) == "", f"{what}: nodeSelector {EDGE_ROLE}: \"\"")
            nodes.append(sel.get("kubernetes.io/hostname"))
            o.need(any(t.get("key") == EDGE_ROLE and t.get("effect") == "NoSchedule" and t.get("operator") == "Exists" for t in spec.get("tolerations", [])),
                   f"{what}: tolerates {EDGE_ROLE}:NoSchedule")
            o.need(e.get("MISTNET_SERVER", "").startswith("https://"), f"{what}: an https:// server")
            for flag in ("--ca-cert", "--client-cert", "--client-key"):
                o.need(flag in args, f"{what}: {flag} (mTLS)")
            data = next((v for v in spec["volumes"] if v["name"] == "data"), {})
            o.need("hostPath" in data, f"{what}: its node's own photos (hostPath)")
        else:
            o.need("--insecure-plaintext" in args, f"{what}: --insecure-plaintext (dev)")
    o.need(len(set(ids)) == len(ids), f"every edge its own id: {ids}")
    if kubeedge:
        o.need(None not in nodes and len(set(nodes)) == len(nodes), f"every edge on its own node: {nodes}")
    else:
        o.need(len({env(pod_spec(j)["containers"][0]).get("MISTNET_DATA") for j in jobs}) == len(jobs), "every edge its own dataset")


def check_trainer(o, gpu):
    job = o.one("Job", "mistnet-train")
    if not job:
        return
    spec = pod_spec(job)
    cs = containers(spec)
    train = next((c for c in cs if c["args"][0] == "train"), None)
    export = next((c for c in cs if c["args"][0] == "export"), None)
    o.need(train and export, "a train step and an export step")
    o.need(spec.get("initContainers", [{}])[0].get("args", [""])[0] == "train", "train first (an init container), export after it")
    store = next((v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == STATE_CLAIM), None)
    o.need(store and store["persistentVolumeClaim"].get("readOnly") is True, f"the store's claim {STATE_CLAIM}, read-only")
    if train and store:
        m = next((m for m in train["volumeMounts"] if m["name"] == store["name"]), {})
        o.need(m.get("readOnly") is True and train["args"][train["args"].index("--store") + 1] == m.get("mountPath"), "train --store on the store's volume")
    gpus = [c["name"] for c in cs if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) == "1"]
    if gpu:
        o.need(train and gpus == [train["name"]], f"nvidia.com/gpu: 1 on the train step alone (got {gpus})")
        o.need(train and env(train).get("MISTNET_DEVICE") == "cuda:0" and "$(MISTNET_DEVICE)" in train["args"], "train --device cuda:0")
        o.need(spec.get("nodeSelector", {}).get("mistnet.io/state") == "true", "trainer on the state node (the store's volume is attached there)")
    else:
        o.need(not gpus and train and env(train).get("MISTNET_DEVICE") == "cpu", "dev trains on CPU, no GPU asked")


def check_prepare(o):
    job = o.one("Job", "mistnet-prepare")
    if job:
        steps = [c["args"][0] for c in containers(pod_spec(job))]
        o.need(steps == ["synth", "pretrain"], f"synth then pretrain, got {steps}")
    o.need(o.objects("PersistentVolumeClaim", "mistnet-data"), "PVC mistnet-data")


def check_files(o, pinned):
    pod = o.one("Pod", "mistnet-files")
    if pod:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
        o.need(claims == {"mistnet-data", "mistnet-train"}, f"mounts mistnet-data and mistnet-train, got {claims}")
        if pinned:
            o.need(pod["spec"].get("nodeSelector", {}).get("mistnet.io/state") == "true", "on the state node")


EXPECT = {
    "dev/prepare": [check_prepare],
    "dev": [lambda o: check_ingest(o, tls=False), lambda o: check_edges(o, kubeedge=False)],
    "dev/train": [lambda o: check_trainer(o, gpu=False)],
    "dev/files": [lambda o: check_files(o, pinned=False)],
    "production/files": [lambda o: check_files(o, pinned=True)],
    "production": [lambda o: check_ingest(o, tls=True), lambda o: check_edges(o, kubeedge=True)],
    "production/train": [lambda o: check_trainer(o, gpu=True)],
}


def main():
    overlays, rendered = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    names = sorted(str(p.parent.relative_to(overlays)) for p in overlays.rglob("kustomization.yaml"))
    edges = [n for n in names if "/edges/" in f"/{n}/"]
    names = [n for n in names if n not in edges]  # an edge is part of its overlay, not one itself
    failed = False
    unknown = sorted(set(names) - set(EXPECT))
    missing = sorted(set(EXPECT) - set(names))
    if unknown or missing:
        print(f"FAIL check.py: overlays without expectations {unknown}, expected but absent {missing}", file=sys.stderr)
        failed = True
    for name in names:
        if name not in EXPECT:
            continue
        path = rendered / (name.replace("/", "-") + ".yaml")
        o = Overlay(name, yaml.safe_load_all(path.read_text()))
        check_every_pod(o)
        for check in EXPECT[name]:
            try:
                check(o)
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
                o.errors.append(f"malformed ({type(e).__name__}: {e})")
        if o.errors:
            failed = True
            for e in o.errors:
                print(f"FAIL {name}: {e}", file=sys.stderr)
        else:
            print(f"ok   {name}: {len(o.docs)} objects have what the deployment needs")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
