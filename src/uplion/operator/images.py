"""Which image a model's workers run: the CUDA variant for a model with GPUs, the CPU one else.

The uplion image comes in two variants (the Dockerfile's ``ACCELERATOR``): the CPU one, and the
CUDA one, whose tags end in ``-cuda`` (``.github/workflows/image.yml``). The operator and the
gateway's deployment API know both from their settings: ``UPLION_IMAGE`` (CPU) and
``UPLION_GPU_WORKER_IMAGE`` (CUDA; charts/uplion's ``gpuImage``).

An AIModel that names no image runs the variant its ``resources.gpus`` asks for; a GPU model when
no CUDA image is configured is refused (``ImageRefused``), never given the CPU image. An AIModel
naming its image runs it, except a GPU model naming the CPU image of the settings (refused too);
a GPU model whose image has no ``cuda`` in its name or tag gets a warning (``cuda_warning``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uplion import config
from uplion.models import resource

GPU_SETTING = "UPLION_GPU_WORKER_IMAGE"
CPU_SETTING = "UPLION_IMAGE"
GPU_CHART_VALUE = "gpuImage"


class ImageRefused(ValueError):
    """No image may run the model's workers; ``reason`` is the AIModel status' reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class WorkerImages:
    """The images of the settings (``None``: not configured)."""

    cpu: str | None = None
    gpu: str | None = None

    @classmethod
    def from_settings(cls, settings: config.Settings) -> WorkerImages:
        return cls(cpu=settings.image or None, gpu=settings.gpu_worker_image or None)

    def for_gpus(self, gpus: int, model: str) -> str:
        """The image of a model asking for ``gpus`` GPUs that names none."""
        if gpus:
            if self.gpu is None:
                raise ImageRefused("NoGpuImage", (
                    f"model {model} asks for {gpus} GPU(s) and names no image, but no CUDA "
                    f"worker image is configured ({GPU_SETTING}, charts/uplion's "
                    f"{GPU_CHART_VALUE}); the CPU image never runs a GPU model"))
            return self.gpu
        if self.cpu is None:
            raise ImageRefused("NoImage", (
                f"model {model} names no image and no worker image is configured "
                f"({CPU_SETTING})"))
        return self.cpu


def named_image(spec: resource.AIModelSpec, track: Literal["stable", "canary"]) -> str | None:
    """The image a track's spec names: the canary's, else ``spec.image``; ``None``: none."""
    if track == "canary" and spec.canary is not None and spec.canary.image:
        return spec.canary.image
    return spec.image


def worker_image(
    spec: resource.AIModelSpec, track: Literal["stable", "canary"], images: WorkerImages
) -> str:
    """The image of a track's workers; ``ImageRefused`` when none may run them."""
    named = named_image(spec, track)
    gpus = spec.resources.gpus
    if named is None:
        return images.for_gpus(gpus, spec.name)
    if gpus and named == images.cpu:
        instead = f" (e.g. {images.gpu})" if images.gpu else ""
        raise ImageRefused("CpuImageForGpus", (
            f"model {spec.name} asks for {gpus} GPU(s) but names the CPU worker image {named} "
            f"({CPU_SETTING}): name a CUDA image{instead}, or leave the image out to run "
            f"{GPU_SETTING}"))
    return named


def _name_and_tag(image: str) -> str:
    """The last path part of an image reference with its tag, without a digest."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1]


def cuda_warning(spec: resource.AIModelSpec) -> str | None:
    """A warning for a GPU model whose named image (either track's) looks like a CPU one: no
    ``cuda`` in its name or tag. ``None`` when there is nothing to say."""
    if not spec.resources.gpus:
        return None
    tracks: tuple[Literal["stable", "canary"], ...] = (
        ("stable", "canary") if spec.canary else ("stable",))
    suspects = sorted({image for track in tracks
                       for image in [named_image(spec, track)]
                       if image is not None and "cuda" not in _name_and_tag(image).lower()})
    if not suspects:
        return None
    return (f"model {spec.name} asks for {spec.resources.gpus} GPU(s) but its image "
            f"{', '.join(suspects)} has no 'cuda' in its name or tag: the CPU variant cannot use "
            "the GPUs (uplion's CUDA variant is tagged <version>-cuda)")
