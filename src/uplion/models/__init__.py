"""The model spec and the scaling rule shared by the operator and the local runtime."""

from uplion.models.spec import EngineSpec, ModelsFile, ModelSpec, ReplicaSpec, load_models_file

__all__ = ["EngineSpec", "ModelSpec", "ModelsFile", "ReplicaSpec", "load_models_file"]
