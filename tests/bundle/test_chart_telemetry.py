"""charts/uplion's pods as telemetry and the mesh see them: OpenTelemetry settings on every
component (and, through the operator, on its workers), Prometheus let through mutual TLS, and no
sidecar in the migration Job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bundle import conftest
from tests.bundle.test_charts import helm_run, render
from tests.operator import examples
from uplion.operator import manifests

TRACING = conftest.CHARTS / "uplion" / "ci" / "tracing-values.yaml"


def _deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The chart's Deployments by component, their first container's plain env values."""
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: {
            e["name"]: e.get("value")
            for e in o["spec"]["template"]["spec"]["containers"][0].get("env", [])
        }
        for o in objects if o["kind"] == "Deployment"
    }


def test_tracing_reaches_every_component_as_otel_variables(
    helm: Path, helm_env: dict[str, str],
) -> None:
    env = _deployments(render(helm, helm_env, "uplion", "-f", str(TRACING)))
    assert set(env) == {"gateway", "billing", "operator"}
    for component, variables in env.items():
        otel = {k: v for k, v in variables.items() if k.startswith("OTEL_")}
        assert otel == {
            "OTEL_SERVICE_NAME": f"uplion-{component}",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES":
                "k8s.namespace.name=uplion,deployment.environment=staging",
        }, component


def test_tracing_is_off_by_default(helm: Path, helm_env: dict[str, str]) -> None:
    for variables in _deployments(render(helm, helm_env, "uplion")).values():
        assert not any(name.startswith("OTEL_") for name in variables)


def test_the_operator_passes_the_charts_tracing_on_to_its_workers(
    helm: Path, helm_env: dict[str, str], validate_objects: conftest.ValidateObjects,
) -> None:
    operator = _deployments(render(helm, helm_env, "uplion", "-f", str(TRACING)))["operator"]
    environ = {k: v for k, v in operator.items() if v is not None}
    deployment = manifests.worker_deployment(examples.example("local"), "models",
                                             environ=environ)
    worker = {e["name"]: e.get("value")
              for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: v for k, v in worker.items() if k.startswith("OTEL_")} == {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=models,deployment.environment=staging",
    }  # named uplion-worker, its default, in its own namespace
    validate_objects([deployment])


@pytest.mark.parametrize("values", [
    ["--set", "tracing.enabled=true"],
    ["--set", "tracing.enabled=true,tracing.otlpEndpoint=collector:4318"],
    ["--set", "tracing.enabled=true,tracing.otlpEndpoint=http://c:4318,tracing.protocol=http"],
])
def test_an_unusable_tracing_setting_is_refused(
    helm: Path, helm_env: dict[str, str], values: list[str],
) -> None:
    done = helm_run(helm, helm_env, "template", "rel", str(conftest.CHARTS / "uplion"), *values)
    assert done.returncode != 0
    assert "tracing" in done.stderr


@pytest.mark.parametrize("command", ["migrate", "bootstrap"])
def test_the_migration_job_runs_without_a_sidecar(
    helm: Path, helm_env: dict[str, str], command: str,
) -> None:
    """An injected sidecar that is not a native one keeps the pod running after the migration:
    the Job would never complete and the Sync hook would wait for ever."""
    objects = render(helm, helm_env, "uplion", "--set", f"migrate.command={command}",
                     "--set", "istio.enabled=true")
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"


def test_prometheus_scrapes_through_strict_mutual_tls(
    helm: Path, helm_env: dict[str, str], validate_objects: conftest.ValidateObjects,
) -> None:
    """Prometheus has no sidecar: with the monitors on, the metrics port also takes plain text
    (only it); without them, nothing does."""
    def peer(*args: str) -> dict[str, Any]:
        objects = render(helm, helm_env, "uplion", "--set", "istio.enabled=true", *args)
        (found,) = [o for o in objects if o["kind"] == "PeerAuthentication"]
        return found

    scraped = peer("--set", "metrics.serviceMonitor.enabled=true")
    assert scraped["spec"]["mtls"] == {"mode": "STRICT"}
    assert scraped["spec"]["portLevelMtls"] == {9090: {"mode": "PERMISSIVE"}}
    validate_objects([scraped])
    assert "portLevelMtls" not in peer()["spec"]
