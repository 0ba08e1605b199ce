"""The model spec and the scaling rule shared by the operator and the local runtime."""

from uplion.models.scaling import ScaleDecider, desired_replicas
from uplion.models.spec import EngineSpec, ModelsFile, ModelSpec, ReplicaSpec, load_models_file

__all__ = [
    "EngineSpec",
    "ModelSpec",
    "ModelsFile",
    "ReplicaSpec",
    "ScaleDecider",
    "desired_replicas",
    "load_models_file",
]
