"""The policy check of deploy/: checkov (pinned, in its own venv: `make policy-tools`) over both
kustomize builds passes, with one kind of exception only: images not pinned by digest yet, each
named in UNPINNED (docs/OPERATIONS.md, "Pinning images"); and the hardening the tenants issue
asked for is there on every pod, whatever checkov's rules happen to look at (issue 25)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy_manifests import ROOT, args_of, build, find

CHECKOV_VERSION = "3.3.30"             # = the Makefile's CHECKOV_VERSION
CHECKOV = ROOT / "var" / "tools" / "checkov" / "bin" / "checkov"
# Not pinned by digest yet: NVIDIA's and SMG's images need a registry lookup (the pin step), ours are
# built by the deployer. Pinned images (name@sha256:...) need no entry.
UNPINNED = {
    "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
    "lightseekorg/smg:1.13.0",
    "llama-triton-code:0.1.0",
    "llama-triton-cpu:0.1.0",
}
# Built locally for the CPU trial (kind load / minikube image load): never pulled there, so not "Always".
LOCAL_IMAGES = {"overlays/cpu": {"llama-triton-code:0.1.0", "llama-triton-cpu:0.1.0"}, "base": set()}
IMAGE_CHECKS = {"CKV_K8S_43": "image by digest", "CKV_K8S_15": "image pull policy Always"}
OVERLAYS = ["base", "overlays/cpu"]


def pods(objects) -> list[tuple[dict, dict]]:
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def containers(template) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory) -> tuple[list[dict], Path, str]:
    objects = build(request.param)
    path = tmp_path_factory.mktemp("rendered") / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    return objects, path, request.param


def test_checkov_passes_but_for_unpinned_images(rendered):
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed: run `make policy-tools` (installs checkov {CHECKOV_VERSION} into "
                    f"var/tools/checkov)")
    version = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, timeout=120).stdout.strip()
    assert version == CHECKOV_VERSION
    objects, path, overlay = rendered
    out = subprocess.run([str(CHECKOV), "-f", str(path), "--framework", "kubernetes", "-o", "json", "--compact"],
                         capture_output=True, text=True, timeout=600)
    report = json.loads(out.stdout) if out.stdout.strip() else {}
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 50, out.stdout[:2000] + out.stderr[-2000:]     # it did look at the manifests
    images = {o["metadata"]["name"]: {c["image"] for c in containers(t)} for o, t in pods(objects)}
    for check in failed:
        cid, resource = check["check_id"], check["resource"]
        assert cid in IMAGE_CHECKS, f"{cid} ({check['check_name']}) fails for {resource}"
        name = resource.split(".")[2]        # Deployment.<namespace>.<name>
        excused = images[name] & (UNPINNED if cid == "CKV_K8S_43" else LOCAL_IMAGES[overlay])
        assert excused, f"{cid} ({IMAGE_CHECKS[cid]}) fails for {resource}, whose images {images[name]} are not excepted"


def test_the_exception_list_is_exactly_the_unpinned_images():
    seen = set()
    for overlay in OVERLAYS:
        for _, t in pods(build(overlay)):
            for c in containers(t):
                seen.add(c["image"])
                if "@sha256:" not in c["image"]:
                    assert c["image"] in UNPINNED, f"{c['image']}: pin it by digest or list it in UNPINNED"
                expected = "IfNotPresent" if c["image"] in LOCAL_IMAGES[overlay] else "Always"
                assert c.get("imagePullPolicy") == expected, c["name"]
    assert UNPINNED <= seen, f"no longer used, drop from UNPINNED: {UNPINNED - seen}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened(overlay):
    objects = build(overlay)
    for o, t in pods(objects):
        spec = t["spec"]
        sec = spec["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] >= 10000 and \
            sec["seccompProfile"] == {"type": "RuntimeDefault"}, o["metadata"]["name"]
        # No automounted API token; the router's is mounted explicitly (service discovery).
        assert spec["automountServiceAccountToken"] is False
        for c in containers(t):
            cs = c["securityContext"]
            assert cs["allowPrivilegeEscalation"] is False and cs["readOnlyRootFilesystem"] is True
            assert cs["capabilities"]["drop"] == ["ALL"] and "add" not in cs["capabilities"]
            r = c["resources"]
            for kind in ("cpu", "memory"):
                assert kind in r["requests"] and kind in r["limits"], (c["name"], kind)
            # No secret in an argument or an environment value
            assert not any("SECRET" in str(e) or "secretKeyRef" in str(e) for e in c.get("env", []))
            assert not any(a.startswith(("--api-key", "--tenant-api-key", "--control-plane-api-keys"))
                           for a in args_of(c))
    # No key is part of the manifests: the Secret is made by hand (docs/SCALE-OUT.md, "Keys").
    assert not [x for x in objects if x["kind"] == "Secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_ingress_and_egress_policies(overlay):
    objects = build(overlay)
    policies = [p for p in objects if p["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for o, t in pods(objects):
        labels = t["metadata"]["labels"]
        mine = [p for p in policies if p["spec"]["podSelector"].get("matchLabels")
                and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(mine) == 1 and set(mine[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, o["metadata"]["name"]
    router = find(objects, "NetworkPolicy", "smg")
    # the router reaches the replicas' API port and the Kubernetes API, nothing else
    to_replicas, to_api = router["spec"]["egress"]
    assert to_replicas["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "replica"
    assert [p["port"] for p in to_replicas["ports"]] == [8080]
    assert "to" not in to_api and sorted(p["port"] for p in to_api["ports"]) == [443, 6443]
    # its metrics only for the monitoring namespace
    metrics_rule = next(r for r in router["spec"]["ingress"] if r["ports"][0]["port"] == 29000)
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert find(objects, "NetworkPolicy", "llama-triton-replica")["spec"]["egress"] == []


def test_router_takes_its_keys_from_files(tmp_path):
    for overlay in OVERLAYS:
        objects = build(overlay)
        dep = find(objects, "Deployment", "smg")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        cmd = args_of(c)
        assert cmd[:3] == ["python3", "-m", "llama_triton.serve.router_launch"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        items = {i["key"] for i in volumes["router-keys"]["secret"]["items"]}
        assert items == {"keys", "router-admin-key", "router-worker-key"}
        for flag, item in (("--admin-key-file", "router-admin-key"), ("--worker-key-file", "router-worker-key"),
                           ("--tenant-keys-file", "keys")):
            assert cmd[cmd.index(flag) + 1] == f"{mounts['router-keys']}/{item}"
        # the replicas never see the router's admin key
        rep = find(objects, "Deployment", "llama-triton-replica")["spec"]["template"]["spec"]
        rep_items = {i["key"] for v in rep["volumes"] if "secret" in v for i in v["secret"]["items"]}
        assert rep_items == {"keys", "metrics-keys"}


def test_dockerignore_keeps_local_state_out_of_the_images():
    lines = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", "var"} <= lines
