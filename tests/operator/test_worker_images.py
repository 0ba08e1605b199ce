"""GPU models run the CUDA image, CPU models the CPU one; a GPU model never gets the CPU image."""

from __future__ import annotations

import copy
from typing import Any, cast

import kopf
import pytest

from tests.operator import examples
from uplion import config
from uplion.models import resource
from uplion.models.deployment import DeploymentConflict, DeploymentRequest, TrafficSplit
from uplion.operator import deployments, handlers, images, kube, manifests

NS = examples.NAMESPACE
CPU = "registry.example/uplion:1.2.3"
GPU = "registry.example/uplion:1.2.3-cuda"
IMAGES = images.WorkerImages(cpu=CPU, gpu=GPU)
BROKER = resource.Broker(kind="redis", url="redis://redis.uplion:6379/0")


def gpu_model(image: str | None = None, gpus: int = 1) -> dict[str, Any]:
    """A model with a source (so a fetch-model init container) asking for ``gpus`` GPUs."""
    aimodel = examples.example("s3-source")
    aimodel["spec"]["resources"] = {"limits": {"memory": "16Gi"}, "gpus": gpus}
    del aimodel["spec"]["image"]
    if image is not None:
        aimodel["spec"]["image"] = image
    return aimodel


def cpu_model() -> dict[str, Any]:
    aimodel = examples.example("local")
    del aimodel["spec"]["image"]
    return aimodel


def pod_images(deployment: dict[str, Any]) -> dict[str, str]:
    pod = deployment["spec"]["template"]["spec"]
    return {c["name"]: c["image"] for c in [*pod.get("initContainers", []), *pod["containers"]]}


def worker(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_a_gpu_model_naming_no_image_runs_the_cuda_image() -> None:
    deployment = manifests.worker_deployment(gpu_model(), NS, images=IMAGES)
    assert pod_images(deployment) == {"fetch-model": GPU, "worker": GPU}
    assert worker(deployment)["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": 1}


def test_a_cpu_model_naming_no_image_runs_the_cpu_image() -> None:
    deployment = manifests.worker_deployment(cpu_model(), NS, images=IMAGES)
    assert pod_images(deployment) == {"worker": CPU}
    assert "nvidia.com/gpu" not in worker(deployment)["resources"]["limits"]


def test_a_gpu_canary_naming_no_image_runs_the_cuda_image() -> None:
    aimodel = gpu_model()
    aimodel["spec"]["canary"] = {"version": "4", "weight": 10}
    for obj in manifests.all_objects(aimodel, NS, images=IMAGES):
        if obj["kind"] == "Deployment":
            assert set(pod_images(obj).values()) == {GPU}, obj["metadata"]["name"]


def test_a_gpu_model_is_refused_when_no_cuda_image_is_configured() -> None:
    with pytest.raises(images.ImageRefused, match="UPLION_GPU_WORKER_IMAGE") as refused:
        manifests.worker_deployment(gpu_model(), NS, images=images.WorkerImages(cpu=CPU))
    assert refused.value.reason == "NoGpuImage"
    assert "gpuImage" in str(refused.value)
    assert "churn-classifier" in str(refused.value)


def test_a_gpu_model_naming_the_cpu_image_is_refused() -> None:
    with pytest.raises(images.ImageRefused, match=f"names the CPU worker image {CPU}") as refused:
        manifests.worker_deployment(gpu_model(CPU), NS, images=IMAGES)
    assert refused.value.reason == "CpuImageForGpus"
    assert GPU in str(refused.value)  # what to name instead


def test_a_named_image_is_respected_and_a_non_cuda_one_warned_about() -> None:
    own = "registry.example/team/llm-server:7"
    deployment = manifests.worker_deployment(gpu_model(own), NS, images=IMAGES)
    assert pod_images(deployment) == {"fetch-model": own, "worker": own}
    spec = resource.AIModelSpec.model_validate(gpu_model(own)["spec"])
    warning = images.cuda_warning(spec)
    assert warning is not None
    assert own in warning
    assert "cuda" in warning

    for fine in (GPU, "registry.example/uplion-cuda:7", "registry.example/uplion:7-cuda@sha256:"
                 + "ab" * 32):
        assert images.cuda_warning(resource.AIModelSpec.model_validate(
            gpu_model(fine)["spec"])) is None, fine
    named_cpu = cpu_model()
    named_cpu["spec"]["image"] = own
    assert images.cuda_warning(resource.AIModelSpec.model_validate(named_cpu["spec"])) is None
    # A registry host with "cuda" in it says nothing of the image.
    assert images.cuda_warning(resource.AIModelSpec.model_validate(
        gpu_model("cuda.registry.example/uplion:7")["spec"])) is not None


def test_a_canary_image_without_cuda_is_warned_about() -> None:
    aimodel = gpu_model(GPU)
    aimodel["spec"]["canary"] = {"version": "4", "weight": 10, "image": CPU}
    warning = images.cuda_warning(resource.AIModelSpec.model_validate(aimodel["spec"]))
    assert warning is not None
    assert CPU in warning
    assert GPU not in warning


def test_the_settings_name_both_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLION_IMAGE", CPU)
    monkeypatch.setenv("UPLION_GPU_WORKER_IMAGE", GPU)
    assert images.WorkerImages.from_settings(config.Settings()) == IMAGES
    monkeypatch.setenv("UPLION_GPU_WORKER_IMAGE", "")
    assert images.WorkerImages.from_settings(config.Settings()).gpu is None
    monkeypatch.delenv("UPLION_GPU_WORKER_IMAGE")
    assert config.Settings().gpu_worker_image is None


def body(obj: dict[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, obj))


async def reconcile(client: kube.Kube, aimodel: dict[str, Any],
                    worker_images: images.WorkerImages) -> dict[str, Any]:
    patch = kopf.Patch()
    await handlers.reconcile(body=body(aimodel), patch=patch,
                             memo={"kube": client, "images": worker_images, "environ": {}})
    status: dict[str, Any] = dict(patch["status"])
    return status


async def test_the_operator_runs_a_gpu_model_on_the_cuda_image(client: kube.Kube) -> None:
    aimodel = await client.create(gpu_model())
    status = await reconcile(client, aimodel, IMAGES)
    assert status["phase"] == "Pending"
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Applied"]
    deployment = await client.get("apps/v1", "Deployment", NS, "churn-worker")
    assert pod_images(deployment) == {"fetch-model": GPU, "worker": GPU}


async def test_the_operator_refuses_a_gpu_model_without_a_cuda_image(client: kube.Kube) -> None:
    aimodel = await client.create(gpu_model())
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="NoGpuImage"):
        await handlers.reconcile(body=body(aimodel), patch=patch, memo={
            "kube": client, "images": images.WorkerImages(cpu=CPU), "environ": {}})
    status = patch["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "NoGpuImage")
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "NoGpuImage")
    assert "UPLION_GPU_WORKER_IMAGE" in ready["message"]
    with pytest.raises(kube.NotFound):  # nothing runs: least of all the CPU image
        await client.get("apps/v1", "Deployment", NS, "churn-worker")


async def test_a_gpu_model_naming_a_cpu_like_image_runs_it_with_a_warning(
    client: kube.Kube,
) -> None:
    own = "registry.example/team/llm-server:7"
    aimodel = await client.create(gpu_model(own))
    status = await reconcile(client, aimodel, IMAGES)
    await client.patch_aimodel_status(NS, "churn", status)
    warning = next(c for c in status["conditions"] if c["type"] == "CudaImage")
    assert (warning["status"], warning["reason"]) == ("False", "ImageWithoutCuda")
    assert own in warning["message"]
    deployment = await client.get("apps/v1", "Deployment", NS, "churn-worker")
    assert pod_images(deployment)["worker"] == own

    # A change of the Deployment recomputes the status: the warning stays.
    await handlers.deployment_changed(body=body(deployment), type="MODIFIED",
                                      memo={"kube": client})
    stored = (await client.get_aimodel(NS, "churn"))["status"]
    assert [c["type"] for c in stored["conditions"]] == ["Ready", "Applied", "CudaImage"]


def gpu_request() -> DeploymentRequest:
    return DeploymentRequest.model_validate({
        "type": "gpu", "gpus": 1,
        "model": {"name": "llama", "version": "1", "engine": {"kind": "test-echo"}},
    })


async def test_the_deployment_api_names_the_image_of_the_request_type(client: kube.Kube) -> None:
    backend = deployments.KubernetesDeployments(client, NS, CPU, BROKER, gpu_image=GPU)
    gpu = await backend.create(gpu_request())
    assert (await client.get_aimodel(NS, gpu.id))["spec"]["image"] == GPU
    cpu_request = gpu_request().model_copy(update={
        "type": "cpu", "gpus": 0, "model": gpu_request().model.model_copy(update={"name": "b"})})
    cpu = await backend.create(cpu_request)
    assert (await client.get_aimodel(NS, cpu.id))["spec"]["image"] == CPU


async def test_the_deployment_api_refuses_gpus_without_a_cuda_image(client: kube.Kube) -> None:
    backend = deployments.KubernetesDeployments(client, NS, CPU, BROKER)
    with pytest.raises(DeploymentConflict, match="UPLION_GPU_WORKER_IMAGE"):
        await backend.create(gpu_request())
    assert await client.list_aimodels(NS) == []


def test_a_traffic_split_of_models_naming_no_image_leaves_the_choice_to_the_operator() -> None:
    spec = copy.deepcopy(gpu_model()["spec"])
    spec["canary"] = {"version": "4", "weight": 10}
    split = TrafficSplit("4")
    assert deployments.traffic_patch(spec, split) == {
        "version": "4", "image": None, "canary": None}
