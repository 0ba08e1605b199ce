"""Tiny real tensor models (scikit-learn, XGBoost, LightGBM, ONNX), built in a fraction of a second.

The builders fit a model on a small synthetic dataset (the test then calls it directly for the
expected answers); the ``save_*`` functions write it in its own format and return the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import lightgbm
import numpy as np
import xgboost
from onnx import TensorProto, helper
from skl2onnx import to_onnx

FEATURES = 4
CLASSES = 3


def dataset(rows: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FP32 features, integer labels of three classes, and a regression target."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64) + (features[:, 1] > 0.5)
    target = features @ np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32) + 0.1
    return features, labels, target


def _labels(binary: bool) -> np.ndarray:
    _, labels, _ = dataset()
    return (labels > 0).astype(np.int64) if binary else labels


def xgboost_classifier(binary: bool = False) -> xgboost.XGBClassifier:
    features, _, _ = dataset()
    model = xgboost.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1)
    return model.fit(features, _labels(binary))


def xgboost_regressor() -> xgboost.XGBRegressor:
    features, _, target = dataset()
    return xgboost.XGBRegressor(n_estimators=8, max_depth=3, n_jobs=1).fit(features, target)


def _lightgbm_params() -> dict[str, Any]:
    return {"n_estimators": 8, "num_leaves": 4, "min_child_samples": 5, "verbose": -1,
            "n_jobs": 1}


def lightgbm_classifier(binary: bool = False) -> lightgbm.LGBMClassifier:
    features, _, _ = dataset()
    return lightgbm.LGBMClassifier(**_lightgbm_params()).fit(features, _labels(binary))


def lightgbm_regressor() -> lightgbm.LGBMRegressor:
    features, _, target = dataset()
    return lightgbm.LGBMRegressor(**_lightgbm_params()).fit(features, target)


def save_joblib(estimator: Any, file: Path) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, file)
    return file


def save_xgboost(model: xgboost.XGBModel, file: Path) -> Path:
    """In XGBoost's own format: JSON or UBJSON, from the file's suffix."""
    file.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(file)
    return file


def save_lightgbm(model: lightgbm.LGBMModel, file: Path) -> Path:
    """In LightGBM's text format."""
    file.parent.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(file)
    return file


def save_onnx(model: Any, file: Path) -> Path:
    """An ONNX ``ModelProto`` written to ``file``."""
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(model.SerializeToString())
    return file


def onnx_from_sklearn(estimator: Any, zipmap: bool = True) -> Any:
    """``estimator`` converted by skl2onnx (``zipmap=False``: probabilities as a plain tensor)."""
    features, _, _ = dataset()
    options = None if zipmap else {id(estimator): {"zipmap": False}}
    return to_onnx(estimator, features[:1], options=options, target_opset=17)


def typed_onnx() -> Any:
    """A graph with several typed inputs and outputs and dynamic dimensions:

    ``features`` FP32 [batch, 3] → ``scaled`` FP64 = features * 2, ``half`` FP16 = features;
    ``counts`` INT64 [?, 3] → ``total`` INT64 [?] = row sums, ``small`` UINT8 = counts;
    ``flags`` BOOL [batch] → ``negated`` BOOL; ``names`` STRING [batch] → ``same_names``.
    """
    nodes = [
        helper.make_node("Mul", ["features", "two"], ["doubled"]),
        helper.make_node("Cast", ["doubled"], ["scaled"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["features"], ["half"], to=TensorProto.FLOAT16),
        helper.make_node("ReduceSum", ["counts", "axis"], ["total"], keepdims=0),
        helper.make_node("Cast", ["counts"], ["small"], to=TensorProto.UINT8),
        helper.make_node("Not", ["flags"], ["negated"]),
        helper.make_node("Identity", ["names"], ["same_names"]),
    ]
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "typed",
        [
            tensor("features", TensorProto.FLOAT, ["batch", 3]),
            tensor("counts", TensorProto.INT64, [None, 3]),
            tensor("flags", TensorProto.BOOL, ["batch"]),
            tensor("names", TensorProto.STRING, ["batch"]),
        ],
        [
            tensor("scaled", TensorProto.DOUBLE, ["batch", 3]),
            tensor("half", TensorProto.FLOAT16, ["batch", 3]),
            tensor("total", TensorProto.INT64, [None]),
            tensor("small", TensorProto.UINT8, [None, 3]),
            tensor("negated", TensorProto.BOOL, ["batch"]),
            tensor("same_names", TensorProto.STRING, ["batch"]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    return _model(graph)


def bfloat16_onnx() -> Any:
    """A graph whose input is a BF16 tensor, a type uplion does not carry."""
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "bf16",
        [tensor("x", TensorProto.BFLOAT16, [2])],
        [tensor("y", TensorProto.BFLOAT16, [2])],
    )
    return _model(graph)


def _model(graph: Any) -> Any:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
