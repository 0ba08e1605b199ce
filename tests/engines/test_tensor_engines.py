"""The tensor engines (``onnx``, ``sklearn``, ``xgboost``, ``lightgbm``) on tiny real models.

Each engine is created from a spec the way the worker does (``engines.create``, kind ``auto``
unless the test is about the kind), loaded, and its answers compared with the model called
directly here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import xgboost
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from tests.engines import tensor_models as tm
from uplion.models import EngineSpec
from uplion.worker import engines
from uplion.worker.engines import base

ROWS, LABELS, TARGET = tm.dataset()
BATCH = tm.dataset(rows=7, seed=1)[0]


@pytest.fixture
async def loaded() -> AsyncIterator[Callable[..., Any]]:
    """``await loaded(path, kind=..., **spec)``: a loaded engine, closed after the test."""
    opened: list[base.Engine] = []

    async def load(path: Path, kind: str = "auto", **spec: Any) -> base.Engine:
        engine = engines.create(EngineSpec(kind=kind, **spec), path)
        opened.append(engine)
        await engine.load()
        return engine

    yield load
    for engine in opened:
        await engine.close()


def specs(tensors: Sequence[base.TensorSpec]) -> list[tuple[str, str, list[int]]]:
    return [(t.name, t.datatype, t.shape) for t in tensors]


def unrecoverable(error: pytest.ExceptionInfo[base.Unrecoverable]) -> tuple[str, str]:
    return error.value.reason, error.value.message


# scikit-learn ------------------------------------------------------------------------------


async def test_sklearn_classifier_answers_like_the_estimator(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    estimator = LogisticRegression().fit(ROWS, LABELS)
    file = tm.save_joblib(estimator, tmp_path / "model.joblib")

    engine = await loaded(file, trust_pickle=True)
    result = await engine.infer({"input": BATCH}, [])

    assert engine.info.serves == "tensor"
    assert engine.info.device == "cpu"
    assert specs(engine.info.inputs) == [("input", "FP32", [-1, tm.FEATURES])]
    assert specs(engine.info.outputs) == [
        ("predict", "INT64", [-1]), ("predict_proba", "FP32", [-1, tm.CLASSES]),
    ]
    assert result["predict"].dtype == np.int64
    np.testing.assert_array_equal(result["predict"], estimator.predict(BATCH))
    assert result["predict_proba"].dtype == np.float32
    np.testing.assert_allclose(result["predict_proba"], estimator.predict_proba(BATCH), rtol=1e-6)


async def test_sklearn_string_labels_are_bytes(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    names = np.array(["low", "mid", "high"])[LABELS]
    estimator = RandomForestClassifier(n_estimators=5, random_state=0).fit(ROWS, names)
    file = tm.save_joblib(estimator, tmp_path / "forest.pkl")

    engine = await loaded(file, kind="sklearn", trust_pickle=True)
    result = await engine.infer({"input": BATCH}, ["predict"])

    assert specs(engine.info.outputs)[0] == ("predict", "BYTES", [-1])
    assert list(result) == ["predict"]
    assert result["predict"].tolist() == [label.encode() for label in estimator.predict(BATCH)]


async def test_sklearn_regressors_single_and_multi_target(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    single = LinearRegression().fit(ROWS, TARGET)
    multi = RandomForestRegressor(n_estimators=4, random_state=0).fit(
        ROWS, np.stack([TARGET, -TARGET], axis=1)
    )
    one = await loaded(tm.save_joblib(single, tmp_path / "one" / "m.pickle"), trust_pickle=True)
    two = await loaded(tm.save_joblib(multi, tmp_path / "two" / "m.joblib"), trust_pickle=True)

    assert specs(one.info.outputs) == [("predict", "FP32", [-1])]
    assert specs(two.info.outputs) == [("predict", "FP32", [-1, 2])]
    np.testing.assert_allclose(
        (await one.infer({"input": BATCH}, []))["predict"], single.predict(BATCH), rtol=1e-5
    )
    np.testing.assert_allclose(
        (await two.infer({"input": BATCH}, []))["predict"], multi.predict(BATCH), rtol=1e-5
    )


async def test_pickle_is_refused_without_trust(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    file = tm.save_joblib(LogisticRegression().fit(ROWS, LABELS), tmp_path / "model.joblib")

    with pytest.raises(base.Unrecoverable) as error:
        await loaded(tmp_path)

    reason, message = unrecoverable(error)
    assert reason == "PickleNotTrusted"
    assert "engine.trust_pickle: true" in message
    assert str(file) in message


async def test_requested_outputs_and_bad_requests(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    estimator = LogisticRegression().fit(ROWS, LABELS)
    engine = await loaded(tm.save_joblib(estimator, tmp_path / "m.joblib"), trust_pickle=True)

    only = await engine.infer({"input": BATCH}, ["predict_proba"])
    empty = await engine.infer({"input": BATCH[:0]}, [])
    with pytest.raises(base.EngineError) as unknown:
        await engine.infer({"input": BATCH}, ["labels"])
    with pytest.raises(base.EngineError) as nan:
        await engine.infer({"input": np.full((1, tm.FEATURES), np.nan, np.float32)}, [])

    assert list(only) == ["predict_proba"]
    assert empty["predict"].shape == (0,)
    assert empty["predict"].dtype == np.int64
    assert empty["predict_proba"].shape == (0, tm.CLASSES)
    assert unknown.value.error.status == 400
    assert "'labels'" in unknown.value.error.message
    assert "predict, predict_proba" in unknown.value.error.message
    assert nan.value.error.status == 400
    assert "NaN" in nan.value.error.message


async def test_sklearn_runs_on_the_cpu_only(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    tm.save_joblib(LinearRegression().fit(ROWS, TARGET), tmp_path / "m.joblib")

    with pytest.raises(base.Unrecoverable) as error:
        await loaded(tmp_path, trust_pickle=True, device="cuda")

    reason, message = unrecoverable(error)
    assert reason == "DeviceUnavailable"
    assert "CPU only" in message


def test_classic_kinds_take_no_options() -> None:
    with pytest.raises(ValueError, match="engine 'xgboost' has no option 'threads'"):
        engines.check(EngineSpec(kind="xgboost", options={"threads": 2}))


# XGBoost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
@pytest.mark.parametrize("binary", [False, True])
async def test_xgboost_classifier(
    tmp_path: Path, loaded: Callable[..., Any], suffix: str, binary: bool
) -> None:
    model = tm.xgboost_classifier(binary)
    classes = 2 if binary else tm.CLASSES
    engine = await loaded(tm.save_xgboost(model, tmp_path / f"model{suffix}"))
    result = await engine.infer({"input": BATCH}, [])

    assert engine.info.platform == "xgboost"
    assert engine.info.device == "cpu"
    assert specs(engine.info.inputs) == [("input", "FP32", [-1, tm.FEATURES])]
    assert specs(engine.info.outputs) == [
        ("predict", "INT64", [-1]), ("predict_proba", "FP32", [-1, classes]),
    ]
    np.testing.assert_array_equal(result["predict"], model.predict(BATCH))
    np.testing.assert_allclose(result["predict_proba"], model.predict_proba(BATCH), rtol=1e-6)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
async def test_xgboost_regressor(
    tmp_path: Path, loaded: Callable[..., Any], suffix: str
) -> None:
    model = tm.xgboost_regressor()
    engine = await loaded(tm.save_xgboost(model, tmp_path / f"model{suffix}"))
    result = await engine.infer({"input": BATCH}, [])

    assert engine.info.extra["objective"] == "reg:squarederror"
    assert specs(engine.info.outputs) == [("predict", "FP32", [-1])]
    np.testing.assert_allclose(result["predict"], model.predict(BATCH), rtol=1e-6)


async def test_xgboost_booster_trained_without_scikit_learn(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgboost.DMatrix(ROWS, label=(LABELS > 0).astype(np.float32)), num_boost_round=4,
    )
    booster.save_model(tmp_path / "booster.json")

    engine = await loaded(tmp_path)
    result = await engine.infer({"input": BATCH}, [])

    positive = booster.predict(xgboost.DMatrix(BATCH))
    np.testing.assert_allclose(result["predict_proba"][:, 1], positive, rtol=1e-6)
    np.testing.assert_array_equal(result["predict"], (positive > 0.5).astype(np.int64))


async def test_xgboost_cuda_needs_a_cuda_build(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    if xgboost.build_info().get("USE_CUDA"):
        pytest.skip("this XGBoost is built with CUDA")
    tm.save_xgboost(tm.xgboost_regressor(), tmp_path / "model.ubj")

    with pytest.raises(base.Unrecoverable) as error:
        await loaded(tmp_path, device="cuda:0")

    reason, message = unrecoverable(error)
    assert reason == "DeviceUnavailable"
    assert "without CUDA" in message


# LightGBM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
async def test_lightgbm_classifier(
    tmp_path: Path, loaded: Callable[..., Any], binary: bool
) -> None:
    model = tm.lightgbm_classifier(binary)
    classes = 2 if binary else tm.CLASSES
    engine = await loaded(tm.save_lightgbm(model, tmp_path / "model.txt"))
    result = await engine.infer({"input": BATCH}, [])

    assert engine.info.platform == "lightgbm"
    assert engine.info.device == "cpu"
    assert engine.info.extra["objective"] == ("binary" if binary else "multiclass")
    assert specs(engine.info.inputs) == [("input", "FP32", [-1, tm.FEATURES])]
    assert specs(engine.info.outputs) == [
        ("predict", "INT64", [-1]), ("predict_proba", "FP32", [-1, classes]),
    ]
    np.testing.assert_array_equal(result["predict"], model.predict(BATCH))
    np.testing.assert_allclose(result["predict_proba"], model.predict_proba(BATCH), rtol=1e-5)


async def test_lightgbm_regressor(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    model = tm.lightgbm_regressor()
    engine = await loaded(tm.save_lightgbm(model, tmp_path / "regressor.txt"), kind="lightgbm")
    result = await engine.infer({"input": BATCH}, ["predict"])

    assert specs(engine.info.outputs) == [("predict", "FP32", [-1])]
    np.testing.assert_allclose(result["predict"], model.predict(BATCH), rtol=1e-5)


async def test_concurrent_requests_each_get_their_answer(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    xgb_model, lgb_model = tm.xgboost_classifier(), tm.lightgbm_regressor()
    xgb = await loaded(tm.save_xgboost(xgb_model, tmp_path / "x" / "model.json"))
    lgb = await loaded(tm.save_lightgbm(lgb_model, tmp_path / "l" / "model.txt"))
    batches = [tm.dataset(rows=5 + index, seed=index)[0] for index in range(8)]

    answers = await asyncio.gather(
        *(xgb.infer({"input": rows}, ["predict_proba"]) for rows in batches),
        *(lgb.infer({"input": rows}, ["predict", "predict"]) for rows in batches),
    )

    for rows, answer in zip(batches, answers[:8], strict=True):
        expected = xgb_model.predict_proba(rows)
        np.testing.assert_allclose(answer["predict_proba"], expected, rtol=1e-6)
    for rows, answer in zip(batches, answers[8:], strict=True):
        assert list(answer) == ["predict"]
        np.testing.assert_allclose(answer["predict"], lgb_model.predict(rows), rtol=1e-5)


# ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipmap", [True, False])
async def test_onnx_from_sklearn(
    tmp_path: Path, loaded: Callable[..., Any], zipmap: bool
) -> None:
    estimator = LogisticRegression().fit(ROWS, LABELS)
    file = tm.save_onnx(tm.onnx_from_sklearn(estimator, zipmap), tmp_path / "classifier.onnx")

    engine = await loaded(file)
    result = await engine.infer({"X": BATCH}, [])

    # skl2onnx names the outputs after the option.
    label, probabilities = (
        ("output_label", "output_probability") if zipmap else ("label", "probabilities")
    )
    assert engine.info.platform == "onnxruntime"
    assert engine.info.serves == "tensor"
    assert specs(engine.info.inputs) == [("X", "FP32", [-1, tm.FEATURES])]
    assert specs(engine.info.outputs) == [
        (label, "INT64", [-1]),
        (probabilities, "FP32", [-1, -1] if zipmap else [-1, tm.CLASSES]),
    ]
    np.testing.assert_array_equal(result[label], estimator.predict(BATCH))
    assert result[probabilities].dtype == np.float32
    np.testing.assert_allclose(result[probabilities], estimator.predict_proba(BATCH), rtol=1e-4)


async def test_onnx_zipmap_with_string_labels(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    names = np.array(["low", "mid", "high"])[LABELS]
    estimator = LogisticRegression().fit(ROWS, names)
    engine = await loaded(tm.save_onnx(tm.onnx_from_sklearn(estimator), tmp_path / "m.onnx"))

    result = await engine.infer({"X": BATCH}, [])
    empty = await engine.infer({"X": BATCH[:0]}, ["output_probability"])

    assert specs(engine.info.outputs)[0] == ("output_label", "BYTES", [-1])
    assert result["output_label"].tolist() == [name.encode() for name in estimator.predict(BATCH)]
    # ZipMap columns follow the model's class order, as predict_proba's do.
    np.testing.assert_allclose(
        result["output_probability"], estimator.predict_proba(BATCH), rtol=1e-4
    )
    assert empty["output_probability"].shape == (0, 0)


async def test_onnx_typed_graph(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    file = tm.save_onnx(tm.typed_onnx(), tmp_path / "model" / "typed.onnx")
    (tmp_path / "model" / "README.md").write_text("a typed graph\n")
    feed = {
        "features": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "counts": np.array([[1, 2, 3], [40, 50, 60]], dtype=np.int64),
        "flags": np.array([True, False]),
        "names": np.array([b"caf\xc3\xa9", "plain"], dtype=object),
    }

    engine = await loaded(tmp_path / "model", kind="onnx", options={"threads": 1})
    result = await engine.infer(feed, [])
    some = await engine.infer(feed, ["total", "same_names"])

    assert engine.info.extra["model_file"] == "typed.onnx"
    assert specs(engine.info.inputs) == [
        ("features", "FP32", [-1, 3]), ("counts", "INT64", [-1, 3]),
        ("flags", "BOOL", [-1]), ("names", "BYTES", [-1]),
    ]
    assert specs(engine.info.outputs) == [
        ("scaled", "FP64", [-1, 3]), ("half", "FP16", [-1, 3]), ("total", "INT64", [-1]),
        ("small", "UINT8", [-1, 3]), ("negated", "BOOL", [-1]), ("same_names", "BYTES", [-1]),
    ]
    session = onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])
    direct = dict(zip(
        [node.name for node in session.get_outputs()],
        session.run(None, {**feed, "names": np.array(["café", "plain"], dtype=object)}),
        strict=True,
    ))
    for name in ("scaled", "half", "total", "small", "negated"):
        assert result[name].dtype == direct[name].dtype, name
        np.testing.assert_array_equal(result[name], direct[name])
    np.testing.assert_array_equal(result["total"], [6, 150])
    assert result["same_names"].tolist() == ["café".encode(), b"plain"]
    assert list(some) == ["total", "same_names"]


async def test_onnx_casts_nothing(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    engine = await loaded(tm.save_onnx(tm.typed_onnx(), tmp_path / "typed.onnx"))
    feed = {
        "features": np.zeros((1, 3), dtype=np.float32),
        "counts": np.zeros((1, 3), dtype=np.int32),  # the graph takes INT64
        "flags": np.array([True]),
        "names": np.array(["a"], dtype=object),
    }

    with pytest.raises(base.EngineError) as wrong_type:
        await engine.infer(feed, [])
    with pytest.raises(base.EngineError) as not_utf8:
        await engine.infer({**feed, "names": np.array([b"\xff"], dtype=object)}, [])

    assert wrong_type.value.error.status == 400
    assert "tensor(int32)" in wrong_type.value.error.message
    assert not_utf8.value.error.status == 400
    assert "'names'" in not_utf8.value.error.message


async def test_onnx_folder_must_hold_one_model(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    tm.save_onnx(tm.typed_onnx(), tmp_path / "a.onnx")
    tm.save_onnx(tm.typed_onnx(), tmp_path / "sub" / "b.onnx")

    with pytest.raises(base.Unrecoverable) as error:
        await loaded(tmp_path, kind="onnx")

    reason, message = unrecoverable(error)
    assert reason == "UnrecognizedArtifact"
    assert "a.onnx (onnx)" in message
    assert "sub/b.onnx (onnx)" in message


async def test_onnx_type_without_v2_datatype(tmp_path: Path, loaded: Callable[..., Any]) -> None:
    with pytest.raises(base.Unrecoverable) as error:
        await loaded(tm.save_onnx(tm.bfloat16_onnx(), tmp_path / "bf16.onnx"))

    reason, message = unrecoverable(error)
    assert reason == "UnsupportedModel"
    assert "'x'" in message
    assert "bfloat16" in message


async def test_onnx_cuda_needs_the_cuda_provider(
    tmp_path: Path, loaded: Callable[..., Any]
) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    file = tm.save_onnx(tm.typed_onnx(), tmp_path / "typed.onnx")

    with pytest.raises(base.Unrecoverable) as error:
        await loaded(file, device="cuda")
    on_auto = await loaded(file, device="auto")

    reason, message = unrecoverable(error)
    assert reason == "DeviceUnavailable"
    assert "CUDAExecutionProvider" in message
    assert on_auto.info.device == "cpu"
