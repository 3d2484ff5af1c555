"""deploy/overlays/llmapi: the GPU replica on TensorRT-LLM's LLM API renders, validates against the
Kubernetes schemas, and its launcher arguments select the LLM-API decoder over all of its GPUs."""
from __future__ import annotations

import kubernetes_validate

from llama_triton.serve.launcher import build_parser
from tests.unit.test_deploy_manifests import K8S_VERSION, build, find


def test_llmapi_overlay_serves_the_checkpoint_over_every_gpu():
    objects = build("overlays/llmapi")
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    replica = find(objects, "Deployment", "llama-triton-replica")
    container = replica["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["llama_triton.serve.launcher", "serve"] and container["image"].endswith("-trtllm-python-py3")
    args = build_parser().parse_args(["serve", *container["args"]])
    assert (args.decoder_io, args.llm_api, args.repository) == ("llmapi", "tensorrt_llm", None)
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert args.tp * args.pp == gpus
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/engines" in mounted and args.model_dir.startswith("/engines/")
