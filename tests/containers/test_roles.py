"""Every role from the built image, in containers run as the charts, the operator and the rollout
WorkflowTemplate run them: read-only root filesystem, non-root user, every capability dropped,
their own environment, mounts and commands. The release's Redis and PostgreSQL are the tests'.

The gateway answers its probes and an OpenAI chat request that a worker container (the operator's
Deployment of charts/uplion-model's default AIModel: SmolLM2, fetched by its init container) serves;
the billing aggregator writes the request's usage to PostgreSQL; the migrate Job migrates and the
bootstrap variant gives the admin token; every `uplion rollout` step starts, and `smoke` passes.
"""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import openai
import pytest
import yaml

from tests.bundle.conftest import ROOT
from tests.containers import pods
from tests.containers.conftest import helm_template, pod_spec
from uplion.operator import manifests

START_TIMEOUT_S = 180
MODEL = "smollm2-135m-instruct"


def eventually(check: Callable[[], bool], container: pods.Container, what: str) -> None:
    """Poll ``check`` until it holds; fail with the container's log if it stops or times out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        if not container.running():
            pytest.fail(f"{container.name} stopped before {what}:\n{container.logs()[-6000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{container.name}: no {what} in {START_TIMEOUT_S} s:\n"
                        f"{container.logs()[-6000:]}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def probe_url(container: pods.Container, spec: dict[str, Any], probe: str) -> str:
    get = spec[probe]["httpGet"]
    port = next(p["containerPort"] for p in spec["ports"] if p["name"] == get["port"])
    return f"http://127.0.0.1:{container.ports[port]}{get['path']}"


def container_spec(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = next(c for c in pod["containers"] if c["name"] == name)
    return spec


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pods")
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def started() -> Iterator[list[pods.Container]]:
    """Every container the module starts, removed at its end."""
    containers: list[pods.Container] = []
    yield containers
    for container in containers:
        container.remove()


@pytest.fixture(scope="module")
def admin_token(uplion_image: str, release: list[dict[str, Any]], objects: pods.Objects,
                files: Path, started: list[pods.Container]) -> str:
    """The chart's migrate Job, then its bootstrap variant (`migrate.command: bootstrap`)."""
    job = pod_spec(release, "Job", "migrate")
    migrate = pods.run(uplion_image, job, "migrate", objects, files)
    started.append(migrate)
    assert migrate.wait(START_TIMEOUT_S) == 0, migrate.logs()
    bootstrap_job = copy.deepcopy(job)
    assert bootstrap_job["containers"][0]["args"] == ["admin", "migrate"]
    bootstrap_job["containers"][0]["args"] = ["admin", "bootstrap"]
    bootstrap = pods.run(uplion_image, bootstrap_job, "migrate", objects, files)
    started.append(bootstrap)
    assert bootstrap.wait(START_TIMEOUT_S) == 0, bootstrap.logs()
    found = re.search(r"^\s+(\S+)$", bootstrap.logs(), re.MULTILINE)
    assert found, bootstrap.logs()
    return found[1]


@pytest.fixture(scope="module")
def gateway(uplion_image: str, release: list[dict[str, Any]], objects: pods.Objects,
            files: Path, started: list[pods.Container]) -> pods.Container:
    pod = pod_spec(release, "Deployment", "gateway")
    spec = container_spec(pod, "gateway")
    container = pods.run(uplion_image, pod, "gateway", objects, files,
                         publish=tuple(p["containerPort"] for p in spec["ports"]))
    started.append(container)
    eventually(lambda: answers(probe_url(container, spec, "readinessProbe")), container,
               "answer to the readiness probe")
    return container


@pytest.fixture(scope="module")
def worker(uplion_image: str, helm: Path, helm_env: dict[str, str], objects: pods.Objects,
           files: Path, started: list[pods.Container]) -> pods.Container:
    """The operator's worker Deployment of charts/uplion-model's default AIModel: its
    fetch-model init container, then the worker, sharing the model cache volume."""
    aimodel = next(o for o in helm_template(helm, helm_env, "uplion-model")
                   if o["kind"] == "AIModel")
    aimodel["metadata"].update(namespace=pods.NAMESPACE, uid="uid-smollm2")
    objects.add(manifests.worker_config_map(aimodel, pods.NAMESPACE))
    pod = manifests.worker_deployment(aimodel, pods.NAMESPACE)["spec"]["template"]["spec"]
    cache = files / "worker-cache"
    cache.mkdir()
    fetch = pods.run(uplion_image, pod, "fetch-model", objects, files, shared={"cache": cache})
    started.append(fetch)
    assert fetch.wait(START_TIMEOUT_S) == 0, fetch.logs()
    spec = container_spec(pod, "worker")
    container = pods.run(uplion_image, pod, "worker", objects, files, shared={"cache": cache},
                         publish=(manifests.HEALTH_PORT,))
    started.append(container)
    eventually(lambda: answers(probe_url(container, spec, "readinessProbe")), container,
               "answer to the readiness probe")
    return container


@pytest.fixture(scope="module")
def billing(uplion_image: str, release: list[dict[str, Any]], objects: pods.Objects,
            files: Path, started: list[pods.Container]) -> pods.Container:
    container = pods.run(uplion_image, pod_spec(release, "Deployment", "billing"), "billing",
                         objects, files)
    started.append(container)
    return container


def test_the_image_is_lean_and_runs_as_its_user(uplion_image: str) -> None:
    inspect = subprocess.run(["podman", "image", "inspect", uplion_image], capture_output=True,
                             text=True, check=True)
    config = yaml.safe_load(inspect.stdout)[0]
    assert config["Config"]["User"] == "10001:10001"
    assert config["Labels"]["ai.uplion.accelerator"] == "cpu"
    compilers = subprocess.run(
        ["podman", "run", "--rm", "--read-only", "--cap-drop=ALL", "--entrypoint", "/bin/sh",
         uplion_image, "-c", "for c in cc gcc g++ clang c++ make pip; do command -v $c; done; "
         "true"],
        capture_output=True, text=True, check=True)
    assert compilers.stdout == "", f"found in the image: {compilers.stdout}"


def test_the_migrate_job_and_its_bootstrap_variant(admin_token: str) -> None:
    assert len(admin_token) > 20


def test_gateway_answers_its_probes(gateway: pods.Container, release: list[dict[str, Any]]) -> None:
    spec = container_spec(pod_spec(release, "Deployment", "gateway"), "gateway")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert answers(probe_url(gateway, spec, probe)), probe


def test_chat_through_a_worker_and_its_usage_billed(
    gateway: pods.Container, worker: pods.Container, billing: pods.Container,
    admin_token: str, release: list[dict[str, Any]],
) -> None:
    spec = container_spec(pod_spec(release, "Deployment", "gateway"), "gateway")
    port = next(p["containerPort"] for p in spec["ports"] if p["name"] == "http")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.ports[port]}/v1",
                           api_key=admin_token, timeout=120, max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0

    url = next(o for o in release if o["kind"] == "Secret")["stringData"]["UPLION_DATABASE_URL"]
    dsn = url.replace("postgresql+asyncpg", "postgresql").replace(pods.HOST, "127.0.0.1")

    async def billed() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            total = await connection.fetchval(
                "SELECT coalesce(sum(completion_tokens), 0) FROM usage_hourly WHERE model = $1",
                MODEL)
        finally:
            await connection.close()
        return int(total)

    expected = answer.usage.completion_tokens
    eventually(lambda: asyncio.run(billed()) == expected, billing, "usage written")


def _workflow_steps() -> dict[str, dict[str, Any]]:
    workflow = yaml.safe_load((ROOT / "workflows" / "model-rollout.yaml").read_text())
    return {template["name"]: template["container"] for template in workflow["spec"]["templates"]
            if template.get("container", {}).get("args", [None])[0] == "rollout"}


def test_every_rollout_step_starts(uplion_image: str, files: Path, objects: pods.Objects) -> None:
    steps = _workflow_steps()
    assert set(steps) >= {"smoke", "evaluate", "set-weight", "promote", "rollback"}
    for name, spec in steps.items():
        pod = {"containers": [{**spec, "args": ["rollout", spec["args"][1], "--help"],
                               "env": []}]}
        container = pods.run(uplion_image, pod, spec["name"], objects, files)
        try:
            assert container.wait(START_TIMEOUT_S) == 0, container.logs()
            assert "Usage: uplion rollout" in container.logs(), (name, container.logs())
        finally:
            container.remove()


def test_rollout_smoke_passes_against_the_gateway(
    uplion_image: str, files: Path, gateway: pods.Container, worker: pods.Container,
    admin_token: str, release: list[dict[str, Any]],
) -> None:
    spec = _workflow_steps()["smoke"]
    gateway_spec = container_spec(pod_spec(release, "Deployment", "gateway"), "gateway")
    port = next(p["containerPort"] for p in gateway_spec["ports"] if p["name"] == "http")
    parameters = {"workflow.parameters.model": MODEL, "workflow.parameters.version": "1",
                  "workflow.parameters.smoke-requests": "1",
                  "workflow.parameters.tokens-secret": "rollout-tokens",
                  "inputs.parameters.environment": "test",
                  "inputs.parameters.gateway-url": f"http://{pods.HOST}:{gateway.ports[port]}"}
    text = yaml.safe_dump(spec)
    for key, value in parameters.items():
        text = text.replace("{{" + key + "}}", value)
    objects = pods.Objects(secrets={"rollout-tokens": {"test-api-token": admin_token,
                                                       "test-admin-token": admin_token}})
    container = pods.run(uplion_image, {"containers": [yaml.safe_load(text)]}, spec["name"],
                         objects, files)
    try:
        assert container.wait(START_TIMEOUT_S) == 0, container.logs()
    finally:
        container.remove()
