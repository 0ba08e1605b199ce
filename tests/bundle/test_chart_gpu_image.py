"""charts/uplion's `gpuImage`: the CUDA variant the image workflow pushes reaches the operator
and the gateway's deployment API, and a GPU model of charts/uplion-model runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest
from tests.bundle.test_charts import helm_run, render
from uplion import config
from uplion.operator import images, manifests

WORKFLOW = conftest.ROOT / ".github" / "workflows" / "image.yml"
CI = conftest.CHARTS / "uplion" / "ci"


def _env(objects: list[dict[str, Any]], component: str) -> dict[str, str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment"
                      and o["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _cuda_suffix() -> str:
    """The tag suffix of the CUDA variant in the image workflow's build matrix."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    matrix = workflow["jobs"]["image"]["strategy"]["matrix"]["include"]
    suffix: str = next(m["suffix"] for m in matrix if m["accelerator"] == "cuda")
    return suffix


def test_the_operator_gets_the_cuda_image_the_workflow_pushes(
    helm: Path, helm_env: dict[str, str]
) -> None:
    app_version = yaml.safe_load((conftest.CHARTS / "uplion" / "Chart.yaml").read_text())[
        "appVersion"]
    env = _env(render(helm, helm_env, "uplion"), "operator")
    assert _cuda_suffix() == "-cuda"
    assert env["UPLION_IMAGE"] == f"ghcr.io/uplion/uplion:{app_version}"
    assert env["UPLION_GPU_WORKER_IMAGE"] == f"ghcr.io/uplion/uplion:{app_version}-cuda"


def test_the_cuda_image_follows_the_image_tag_unless_given(
    helm: Path, helm_env: dict[str, str]
) -> None:
    pinned = _env(render(helm, helm_env, "uplion", "--set", "image.tag=0.3.1",
                         "--set", "image.repository=registry.example/uplion"), "operator")
    assert pinned["UPLION_GPU_WORKER_IMAGE"] == "registry.example/uplion:0.3.1-cuda"
    own = _env(render(helm, helm_env, "uplion", "--set", "gpuImage.repository=gpu.example/u",
                      "--set", "gpuImage.tag=9-cuda12"), "operator")
    assert own["UPLION_GPU_WORKER_IMAGE"] == "gpu.example/u:9-cuda12"


def test_the_deployment_api_gets_both_images(helm: Path, helm_env: dict[str, str]) -> None:
    objects = render(helm, helm_env, "uplion", "-f", str(CI / "deployments-values.yaml"))
    gateway, operator = _env(objects, "gateway"), _env(objects, "operator")
    for name in ("UPLION_IMAGE", "UPLION_GPU_WORKER_IMAGE"):
        assert gateway[name] == operator[name], name


def test_the_values_schema_rejects_an_unknown_gpu_image_key(
    helm: Path, helm_env: dict[str, str]
) -> None:
    done = helm_run(helm, helm_env, "template", "rel", str(conftest.CHARTS / "uplion"),
                    "--set", "gpuImage.tga=1")
    assert done.returncode != 0
    assert "tga" in done.stderr


def test_the_model_charts_gpu_model_runs_the_operators_cuda_image(
    helm: Path, helm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the operator's settings from its rendered env, the AIModel of uplion-model's
    GPU scenario, the worker Deployment the operator would apply."""
    for name, value in _env(render(helm, helm_env, "uplion"), "operator").items():
        monkeypatch.setenv(name, value)
    worker_images = images.WorkerImages.from_settings(config.Settings())
    aimodel = next(o for o in render(helm, helm_env, "uplion-model", "-f",
                                     str(conftest.CHARTS / "uplion-model" / "ci" /
                                         "gpu-values.yaml"))
                   if o["kind"] == "AIModel")
    assert "image" not in aimodel["spec"]
    aimodel["metadata"].update(namespace="models", uid="uid-gpu")
    deployment = manifests.worker_deployment(aimodel, "models", images=worker_images)
    pod = deployment["spec"]["template"]["spec"]
    assert {c["image"] for c in [*pod.get("initContainers", []), *pod["containers"]]} == {
        worker_images.gpu}
    assert worker_images.gpu is not None
    assert worker_images.gpu.endswith("-cuda")
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1

    # The chart's default image left in place on a GPU model: refused, never run.
    default = next(o for o in render(helm, helm_env, "uplion-model", "--set",
                                     "spec.resources.gpus=1") if o["kind"] == "AIModel")
    default["metadata"].update(namespace="models", uid="uid-default")
    with pytest.raises(images.ImageRefused, match="CPU worker image"):
        manifests.worker_deployment(default, "models", images=worker_images)
