"""Models of one's own, end to end: artifacts put in a real S3 endpoint (moto's server), an HTTP
server (an archive) and a hand-built Hugging Face cache by the test, deployed through
``POST /v1/modelDeployment`` on a running ``uplion run``, called with the real clients
(``tritonclient`` in JSON and binary modes, ``openai``), and their answers compared with the
models called directly here. Failures (a missing prefix, a wrong key, a bad
checksum, an untrusted pickle, an unrecognized artifact) turn the deployment ``failed`` with a
reason that names the cause."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import openai
import pytest
import torch
import tritonclient.http as triton
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from tests import helpers
from tests.engines import tensor_models, tiny_models
from tests.fetch.helpers import hub_repo
from tests.fetch.servers import FileServer, Route, S3Server
from tests.triton import connect as triton_client

BUCKET = "demmodels"
pytestmark = pytest.mark.slow


class Models:
    """The models the test made, by S3 prefix, with what they answer."""

    def __init__(self, folder: Path) -> None:
        self.features, _, _ = tensor_models.dataset(rows=6, seed=7)
        classifier = tensor_models.xgboost_classifier()
        self.xgboost_proba = classifier.predict_proba(self.features)
        self.onnx_model = tensor_models.onnx_from_sklearn(_logistic(), zipmap=False)
        self.lightgbm = tensor_models.lightgbm_regressor()
        self.files: dict[str, Path] = {
            "xgb/model.json": tensor_models.save_xgboost(classifier, folder / "model.json"),
            "onnx/model.onnx": tensor_models.save_onnx(self.onnx_model, folder / "model.onnx"),
            "lgbm/model.txt": tensor_models.save_lightgbm(self.lightgbm, folder / "model.txt"),
            "pickled/model.joblib": tensor_models.save_joblib(_logistic(), folder / "m.joblib"),
        }
        readme = folder / "README.md"
        readme.write_text("# not a model\n")
        self.files["notes/README.md"] = readme
        self.llm = tiny_models.causal_lm(folder / "llm")
        for file in self.llm.iterdir():
            self.files[f"llm/{file.name}"] = file
        self.seq2seq = tiny_models.seq2seq(folder / "t5")
        self.classifier = tiny_models.classifier(folder / "bert")


def _archive(folder: Path) -> bytes:
    """``folder`` as a .tar.gz holding that one folder, as ``tar czf`` makes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    return buffer.getvalue()


def _logistic() -> Any:
    from sklearn.linear_model import LogisticRegression

    features, labels, _ = tensor_models.dataset()
    return LogisticRegression(max_iter=200).fit(features, labels)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def file_server(models: Models) -> Iterator[FileServer]:
    with FileServer() as files:
        files.routes["/models/t5.tar.gz"] = Route(_archive(models.seq2seq), etag='"t5-1"')
        yield files


@pytest.fixture(scope="module")
def served(
    models: Models, file_server: FileServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[helpers.Served, httpx.Client]]:
    tmp = tmp_path_factory.mktemp("platform")
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
    hub = tmp / "hub"
    hub_repo(hub, "acme/tiny-sentiment",
             {f.name: f.read_bytes() for f in models.classifier.iterdir() if f.is_file()})
    with S3Server() as s3:
        client = boto3.client("s3", endpoint_url=s3.url, **_boto_keys(keys))
        client.create_bucket(Bucket=BUCKET)
        for key, file in models.files.items():
            client.upload_file(str(file), BUCKET, key)
        env = {**keys, "AWS_ENDPOINT_URL": s3.url, "UPLION_MODEL_CACHE": str(tmp / "cache"),
               "AWS_CONFIG_FILE": str(tmp / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "x"),
               "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        with helpers.platform(tmp, env=env, timeout=120) as platform, \
                httpx.Client(base_url=platform.url, headers=platform.headers,
                             timeout=60) as admin:
            yield platform, admin


def _boto_keys(keys: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"],
            "region_name": keys["AWS_DEFAULT_REGION"]}


def deploy(admin: httpx.Client, model: dict[str, Any]) -> dict[str, Any]:
    """The payload model-serving users send, for ``model``; the deployment once it settled."""
    created = admin.post("/v1/modelDeployment", json={
        "type": "cpu", "model": model, "replicas": 1,
        "request_res": {"cpu": "1", "memory": "1Gi"}, "limit_res": {"cpu": "2"},
    })
    assert created.status_code == 201, created.text
    deployment: dict[str, Any] = created.json()
    deadline = time.monotonic() + 120
    while deployment["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
        deployment = admin.get(f"/v1/modelDeployment/{deployment['id']}").json()
    return deployment


def _infer(
    platform: helpers.Served, name: str, features: np.ndarray, output: str, binary: bool,
    input_name: str = "input",
) -> np.ndarray:
    client = triton_client(platform)
    try:
        tensor = triton.InferInput(input_name, list(features.shape), "FP32")
        tensor.set_data_from_numpy(features, binary_data=binary)
        wanted = triton.InferRequestedOutput(output, binary_data=binary)
        result = client.infer(name, [tensor], outputs=[wanted])
        array = result.as_numpy(output)
        assert array is not None
        return array
    finally:
        client.close()


def test_the_usual_payload_deploys_an_s3_model_under_a_generated_name(
    served: tuple[helpers.Served, httpx.Client], models: Models
) -> None:
    platform, admin = served
    deployment = deploy(admin, {"version": "v1", "type": "single",
                                "bucket": f"s3://{BUCKET}/", "prefix": "xgb"})
    assert deployment["state"] == "active", deployment
    name = deployment["name"]
    assert name == f"md-{deployment['id']}"
    assert deployment["model"]["source"] == f"s3://{BUCKET}/xgb"
    assert deployment["predict_url"] == f"{platform.url}/v2/models/{name}/infer"
    assert deployment["status"]["device"] == "cpu"
    assert admin.get(f"/v1/models/{name}").json()["serves"] == "tensor"
    for binary in (False, True):
        proba = _infer(platform, name, models.features, "predict_proba", binary)
        np.testing.assert_allclose(proba, models.xgboost_proba, rtol=1e-5)
    metadata = admin.get(f"/v2/models/{name}").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32",
                                   "shape": [-1, tensor_models.FEATURES]}]
    assert {o["name"] for o in metadata["outputs"]} == {"predict", "predict_proba"}


def test_onnx_and_lightgbm_models_answer_as_they_do_here(
    served: tuple[helpers.Served, httpx.Client], models: Models
) -> None:
    import onnxruntime

    platform, admin = served
    onnx = deploy(admin, {"name": "iris-onnx", "source": f"s3://{BUCKET}/onnx"})
    lgbm = deploy(admin, {"name": "reg-lgbm", "source": f"s3://{BUCKET}/lgbm"})
    assert onnx["state"] == lgbm["state"] == "active", (onnx, lgbm)
    session = onnxruntime.InferenceSession(models.onnx_model.SerializeToString())
    [expected] = session.run(["probabilities"], {"X": models.features})
    probabilities = _infer(platform, "iris-onnx", models.features, "probabilities",
                           binary=False, input_name="X")
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    predicted = _infer(platform, "reg-lgbm", models.features, "predict", binary=True)
    np.testing.assert_allclose(predicted.ravel(), models.lightgbm.predict(models.features),
                               rtol=1e-5)


def test_a_language_model_from_s3_chats_through_the_openai_client(
    served: tuple[helpers.Served, httpx.Client], models: Models
) -> None:
    platform, admin = served
    deployment = deploy(admin, {"name": "tiny-llm", "source": f"s3://{BUCKET}/llm"})
    assert deployment["state"] == "active", deployment
    assert "chat_completions" in admin.get(
        f"/v1/modelDeployment/{deployment['id']}").json()["endpoints"]
    client = openai.OpenAI(base_url=f"{platform.url}/v1",
                           api_key=platform.headers["Authorization"].removeprefix("Bearer "))
    messages = [{"role": "user", "content": "hello world"}]
    answer = client.chat.completions.create(
        model="tiny-llm", messages=messages, max_tokens=8, temperature=0,  # type: ignore[arg-type]
    )
    tokenizer = AutoTokenizer.from_pretrained(models.llm)
    model = AutoModelForCausalLM.from_pretrained(models.llm)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(generated[0, prompt["input_ids"].shape[1]:],
                                skip_special_tokens=True)
    assert expected.strip()
    assert answer.choices[0].message.content == expected
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == prompt["input_ids"].shape[1]


def test_a_seq2seq_model_from_an_https_archive_completes(
    served: tuple[helpers.Served, httpx.Client], models: Models, file_server: FileServer
) -> None:
    platform, admin = served
    url = f"{file_server.url}/models/t5.tar.gz"
    deployment = deploy(admin, {"name": "tiny-t5", "source": url})
    assert deployment["state"] == "active", deployment
    client = openai.OpenAI(base_url=f"{platform.url}/v1",
                           api_key=platform.headers["Authorization"].removeprefix("Bearer "))
    answer = client.completions.create(model="tiny-t5", prompt="hello world", max_tokens=6,
                                       temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(models.seq2seq)
    model = AutoModelForSeq2SeqLM.from_pretrained(models.seq2seq)
    inputs = tokenizer("hello world", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(generated[0], skip_special_tokens=True)
    assert expected.strip()
    assert answer.choices[0].text == expected


def test_a_classifier_from_the_hub_labels_texts_over_v2(
    served: tuple[helpers.Served, httpx.Client], models: Models
) -> None:
    platform, admin = served
    deployment = deploy(admin, {"name": "sentiment", "source": "hf://acme/tiny-sentiment"})
    assert deployment["state"] == "active", deployment
    texts = ["hello world", "the cat sat"]
    client = triton_client(platform)
    try:
        tensor = triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        result = client.infer("sentiment", [tensor])
        labels = [label.decode() for label in result.as_numpy("label")]
        scores = result.as_numpy("score")
    finally:
        client.close()
    tokenizer = AutoTokenizer.from_pretrained(models.classifier)
    model = AutoModelForSequenceClassification.from_pretrained(models.classifier)
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    probabilities = torch.softmax(logits, dim=-1)
    best = probabilities.max(dim=-1)
    assert labels == [model.config.id2label[int(i)] for i in best.indices]
    np.testing.assert_allclose(scores, best.values.numpy(), rtol=1e-4)
    assert admin.get("/v1/models/sentiment").json()["serves"] == "classification"


@pytest.mark.parametrize(("model", "reason", "named"), [
    ({"source": f"s3://{BUCKET}/no-such-prefix"}, "SourceNotFound", "no-such-prefix"),
    ({"source": "s3://no-such-bucket/models"}, "SourceNotFound", "no-such-bucket"),
    ({"source": f"s3://{BUCKET}/xgb", "fetch": {"sha256": {"model.json": "0" * 64}}},
     "ChecksumMismatch", "model.json"),
    ({"source": f"s3://{BUCKET}/pickled"}, "PickleNotTrusted", "trust_pickle"),
    ({"source": f"s3://{BUCKET}/notes"}, "UnrecognizedArtifact", "README.md"),
])
def test_a_model_that_cannot_load_fails_with_a_reason_that_names_the_cause(
    served: tuple[helpers.Served, httpx.Client], model: dict[str, Any], reason: str, named: str
) -> None:
    _, admin = served
    deployment = deploy(admin, model)
    assert deployment["state"] == "failed", deployment
    assert deployment["reason"].startswith(f"{reason}: "), deployment["reason"]
    assert named in deployment["reason"]
    refused = admin.post(f"/v2/models/{deployment['name']}/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]})
    assert refused.status_code == 503
    assert reason in refused.text
    assert admin.delete(f"/v1/modelDeployment/{deployment['id']}").status_code == 200


def test_a_pickle_loads_when_the_spec_trusts_it(
    served: tuple[helpers.Served, httpx.Client], models: Models
) -> None:
    platform, admin = served
    deployment = deploy(admin, {"name": "trusted", "source": f"s3://{BUCKET}/pickled",
                                "engine": {"trust_pickle": True}})
    assert deployment["state"] == "active", deployment
    labels = _infer(platform, "trusted", models.features, "predict", binary=False)
    np.testing.assert_array_equal(labels.ravel(), _logistic().predict(models.features))
