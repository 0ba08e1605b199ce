"""``sklearn``, ``xgboost``, ``lightgbm``: classic ML models over KServe v2 tensors.

One convention for the three. Input ``input``: FP32 ``[-1, n_features]``, one row per sample,
the columns in the order the model was trained on (``n_features`` from the model). Outputs:

- ``predict``: ``[-1]`` (``[-1, k]`` for a model with ``k`` targets): class labels for a
  classifier (INT64, or BYTES for string labels), values (FP32) otherwise;
- ``predict_proba``: FP32 ``[-1, n_classes]``, for classifiers that give probabilities, columns in
  the model's class order.

Output datatypes and shapes come from one prediction on a row of zeros at load, which also
proves the model runs. Loading is safe for XGBoost's and LightGBM's own formats; scikit-learn's
pickle and joblib files run code when loaded, so they load only with ``trust_pickle``. Models run
in worker threads, never on the event loop. XGBoost runs on CUDA when the device resolves to it;
scikit-learn and LightGBM run on the CPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uplion.worker.engines import base, detect, devices, tensor_io

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

INPUT = "input"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

Kind = Literal["sklearn", "xgboost", "lightgbm"]
Predictor = Callable[["np.ndarray"], "np.ndarray"]

_XGBOOST_CLASSIFIERS = frozenset({"binary:logistic", "multi:softprob", "multi:softmax"})
_LIGHTGBM_CLASSIFIERS = frozenset({"binary", "multiclass", "multiclassova"})
_EMPTY_DTYPES = {"FP32": "float32", "INT64": "int64", "BYTES": "object"}


@dataclass(slots=True)
class _Model:
    """A loaded model: its feature count, device, and a function per output."""

    n_features: int
    device: str
    outputs: dict[str, Predictor]
    extra: dict[str, Any] = field(default_factory=dict)


class ClassicEngine(base.Engine):
    def __init__(self, kind: Kind, artifact: base.Artifact) -> None:
        self.kind = kind
        self.artifact = artifact
        self.info = base.EngineInfo(platform=kind, serves="tensor")
        self._model: _Model | None = None

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._model = None

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if self._model is None:
            raise RuntimeError(f"the {self.kind} engine is not loaded")
        names = tensor_io.requested(self.info.outputs, outputs)
        return await asyncio.to_thread(self._run, self._model, inputs[INPUT], names)

    def batchable(self) -> frozenset[base.Batchable]:
        return frozenset({"infer"})  # one row per sample in, one per sample out

    def _load(self) -> None:
        import numpy as np

        if self.artifact.path is None:
            raise base.Unrecoverable(
                "InvalidConfig", f"the {self.kind} engine needs a model source"
            )
        model_file = detect.model_file(self.artifact.path, self.kind)
        model = _LOADERS[self.kind](model_file, self.artifact)
        probe = np.zeros((1, model.n_features), dtype=np.float32)
        self.info.inputs = [base.TensorSpec(INPUT, "FP32", [-1, model.n_features])]
        self.info.outputs = [_spec(name, predict(probe)) for name, predict in model.outputs.items()]
        self.info.device = model.device
        self.info.extra = {"model_file": model_file.name, **model.extra}
        self._model = model
        logger.info("loaded %s (%s) on %s", model_file, self.kind, model.device)

    def _run(self, model: _Model, rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        import numpy as np

        if len(rows) == 0:  # some models refuse an empty batch; its answer is known
            return {
                spec.name: np.empty((0, *spec.shape[1:]), dtype=_EMPTY_DTYPES[spec.datatype])
                for spec in self.info.outputs if spec.name in names
            }
        try:
            return {name: model.outputs[name](rows) for name in names}
        except ValueError as error:  # scikit-learn's word for input it refuses (NaN, inf)
            raise tensor_io.bad_request(f"input {INPUT!r}: {error}", "inputs") from error


def _spec(name: str, probe: np.ndarray) -> base.TensorSpec:
    datatype = {"f": "FP32", "i": "INT64", "O": "BYTES"}[probe.dtype.kind]
    return base.TensorSpec(name, datatype, [-1, *probe.shape[1:]])


def _labels(values: Any) -> np.ndarray:
    """Predictions as a v2 tensor: integers and booleans INT64, floats FP32, strings BYTES."""
    import numpy as np

    array = np.asarray(values)
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    encoded = [item if isinstance(item, bytes) else str(item).encode() for item in array.ravel()]
    return np.array(encoded, dtype=object).reshape(array.shape)


def _probabilities(values: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.float32)


def _cpu_only(kind: str, requested: str) -> str:
    if requested.startswith("cuda"):
        raise base.Unrecoverable(
            "DeviceUnavailable",
            f"device {requested!r} was asked for but the {kind} engine runs on the CPU only; "
            "set device: cpu or auto",
        )
    return "cpu"


def _sklearn(model_file: Path, artifact: base.Artifact) -> _Model:
    if not artifact.trust_pickle:
        raise base.Unrecoverable(
            "PickleNotTrusted",
            "pickle and joblib files run code when loaded; set engine.trust_pickle: true in the "
            f"model spec if you trust {model_file}",
        )
    device = _cpu_only("sklearn", artifact.device)
    import joblib  # type: ignore[import-untyped]  # joblib ships no type hints

    estimator = joblib.load(model_file)
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or not hasattr(estimator, "predict"):
        raise base.Unrecoverable(
            "UnsupportedModel",
            f"{model_file} holds a {type(estimator).__name__}, not a fitted scikit-learn "
            "estimator with predict and n_features_in_",
        )
    outputs: dict[str, Predictor] = {PREDICT: lambda rows: _labels(estimator.predict(rows))}
    if hasattr(estimator, "predict_proba"):
        outputs[PREDICT_PROBA] = lambda rows: _probabilities(estimator.predict_proba(rows))
    return _Model(n_features, device, outputs, {"estimator": type(estimator).__name__})


def _xgboost(model_file: Path, artifact: base.Artifact) -> _Model:
    import xgboost

    device = _xgboost_device(artifact.device, bool(xgboost.build_info().get("USE_CUDA")))
    booster = xgboost.Booster(model_file=str(model_file))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    outputs: dict[str, Predictor]
    if objective in _XGBOOST_CLASSIFIERS:
        classifier = xgboost.XGBClassifier()
        classifier.load_model(model_file)
        classifier.set_params(device=device)
        outputs = {
            PREDICT: lambda rows: _labels(classifier.predict(rows)),
            PREDICT_PROBA: lambda rows: _probabilities(classifier.predict_proba(rows)),
        }
    else:
        regressor = xgboost.XGBRegressor()
        regressor.load_model(model_file)
        regressor.set_params(device=device)
        outputs = {PREDICT: lambda rows: _labels(regressor.predict(rows))}
    return _Model(booster.num_features(), device, outputs, {"objective": objective})


def _xgboost_device(requested: str, built_with_cuda: bool) -> str:
    if requested == "cpu" or (requested == "auto" and not built_with_cuda):
        return "cpu"
    if not built_with_cuda:
        raise base.Unrecoverable(
            "DeviceUnavailable",
            f"device {requested!r} was asked for but this XGBoost is built without CUDA (the "
            "xgboost-cpu package); install xgboost with CUDA, or set device: cpu or auto",
        )
    return devices.resolve_device(requested)


def _lightgbm(model_file: Path, artifact: base.Artifact) -> _Model:
    import lightgbm
    import numpy as np

    device = _cpu_only("lightgbm", artifact.device)
    booster = lightgbm.Booster(model_file=str(model_file))
    objective = str(booster.params.get("objective", ""))
    n_classes = booster.num_model_per_iteration()

    def probabilities(rows: np.ndarray) -> np.ndarray:
        scores = _probabilities(booster.predict(rows))
        if objective == "binary":
            return np.stack([1 - scores, scores], axis=1)
        return scores.reshape(len(rows), n_classes)

    outputs: dict[str, Predictor]
    if objective in _LIGHTGBM_CLASSIFIERS:
        outputs = {
            PREDICT: lambda rows: probabilities(rows).argmax(axis=1).astype(np.int64),
            PREDICT_PROBA: probabilities,
        }
    else:
        outputs = {PREDICT: lambda rows: _labels(booster.predict(rows))}
    return _Model(booster.num_feature(), device, outputs, {"objective": objective})


_LOADERS: dict[Kind, Callable[[Path, base.Artifact], _Model]] = {
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
}
