"""``auto``: the engine kind picked for each artifact format, and the errors for the rest."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from sklearn.linear_model import LinearRegression

from tests.engines import tensor_models as tm
from uplion.models import EngineSpec
from uplion.worker import engines
from uplion.worker.engines import base, detect
from uplion.worker.engines.classic import ClassicEngine
from uplion.worker.engines.onnx_tensor import OnnxTensorEngine


class _Trap:
    """Unpickling this writes ``path``: detection must never do it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.path),))


def reason_and_message(path: Path) -> tuple[str, str]:
    with pytest.raises(base.Unrecoverable) as error:
        detect.engine_kind(path)
    return error.value.reason, error.value.message


def write_json(file: Path, content: object) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(content))
    return file


@pytest.mark.parametrize("config", [{"architectures": ["LlamaForCausalLM"]}, {"model_type": "t5"}])
def test_transformers_folder(tmp_path: Path, config: dict[str, object]) -> None:
    write_json(tmp_path / "config.json", config)
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    (tmp_path / "onnx").mkdir()
    tm.save_onnx(tm.typed_onnx(), tmp_path / "onnx" / "model.onnx")  # exports beside it: still HF

    assert detect.engine_kind(tmp_path) == "transformers"


def test_sentence_transformers_folder(tmp_path: Path) -> None:
    write_json(tmp_path / "modules.json", [{"idx": 0, "path": "", "type": "Transformer"}])

    assert detect.engine_kind(tmp_path) == "transformers"


def test_gguf_file_and_folder(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny-q8_0.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "README.md").write_text("# a model\n")
    (tmp_path / ".gitattributes").write_text("*.gguf filter=lfs\n")

    assert detect.engine_kind(gguf) == "transformers"
    assert detect.engine_kind(tmp_path) == "transformers"


def test_onnx_file_and_nested_folder(tmp_path: Path) -> None:
    file = tm.save_onnx(tm.typed_onnx(), tmp_path / "1" / "model.onnx")
    tm.save_onnx(tm.typed_onnx(), tmp_path / ".cache" / "old.onnx")  # hidden: not looked at

    assert detect.engine_kind(file) == "onnx"
    assert detect.engine_kind(tmp_path) == "onnx"
    assert isinstance(engines.create(EngineSpec(), tmp_path), OnnxTensorEngine)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgboost(tmp_path: Path, suffix: str) -> None:
    file = tm.save_xgboost(tm.xgboost_regressor(), tmp_path / f"model{suffix}")

    assert detect.engine_kind(file) == "xgboost"
    assert detect.engine_kind(tmp_path) == "xgboost"
    engine = engines.create(EngineSpec(), tmp_path)
    assert isinstance(engine, ClassicEngine)
    assert engine.kind == "xgboost"


def test_lightgbm(tmp_path: Path) -> None:
    file = tm.save_lightgbm(tm.lightgbm_regressor(), tmp_path / "model.txt")
    (tmp_path / "requirements.txt").write_text("lightgbm==4.7.0\n")

    assert detect.engine_kind(file) == "lightgbm"
    assert detect.engine_kind(tmp_path) == "lightgbm"


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl", "model.pickle"])
def test_sklearn_without_unpickling(tmp_path: Path, name: str) -> None:
    features, _, target = tm.dataset()
    tm.save_joblib(LinearRegression().fit(features, target), tmp_path / "real" / name)
    trap = tmp_path / "trap" / name
    trap.parent.mkdir()
    trap.write_bytes(pickle.dumps(_Trap(tmp_path / "unpickled")))

    assert detect.engine_kind(tmp_path / "real" / name) == "sklearn"
    assert detect.engine_kind(trap.parent) == "sklearn"
    assert not (tmp_path / "unpickled").exists()


def test_json_and_text_files_that_are_not_models(tmp_path: Path) -> None:
    other_json = write_json(tmp_path / "settings.json", {"learning_rate": 0.1})
    config = write_json(tmp_path / "config.json", {"hidden_size": 8})  # no architectures
    notes = tmp_path / "notes.txt"
    notes.write_text("tree\nthis is not a LightGBM model\n")

    for file in (other_json, config, notes):
        reason, message = reason_and_message(file)
        assert reason == "UnrecognizedArtifact"
        assert file.name in message
    reason, message = reason_and_message(tmp_path)
    assert reason == "UnrecognizedArtifact"
    assert "config.json, notes.txt, settings.json" in message


def test_unrecognized_folder_lists_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "weights.csv").write_text("1,2\n")
    (tmp_path / "README.md").write_text("# weights\n")

    reason, message = reason_and_message(tmp_path)

    assert reason == "UnrecognizedArtifact"
    assert "found README.md, weights.csv" in message
    assert "*.onnx (onnx)" in message
    assert "*.joblib" in message


def test_ambiguous_folder_names_the_candidates(tmp_path: Path) -> None:
    tm.save_onnx(tm.typed_onnx(), tmp_path / "model.onnx")
    tm.save_xgboost(tm.xgboost_regressor(), tmp_path / "model.ubj")

    reason, message = reason_and_message(tmp_path)

    assert reason == "UnrecognizedArtifact"
    assert "model.onnx (onnx)" in message
    assert "model.ubj (xgboost)" in message


def test_missing_artifact(tmp_path: Path) -> None:
    reason, message = reason_and_message(tmp_path / "nothing-here")

    assert reason == "UnrecognizedArtifact"
    assert "nothing-here" in message
