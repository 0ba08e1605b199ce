"""The broker URL reaches AIModels and worker pods as a Secret reference, never as a plain value.

``spec.broker.urlSecretRef`` names the Secret key holding the workers' URL (credentials and all);
the worker and its init container read it through ``valueFrom.secretKeyRef``. KEDA's Redis scaler
gets the address, database and TLS from the spec and its credentials from ``authenticationRef``.
A plain ``url`` is still read (AIModels written before) but discouraged.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.operator import examples
from uplion.models import resource
from uplion.models.deployment import DeploymentRequest
from uplion.operator import deployments, kube, manifests

NS = "models"
REF = {"name": "uplion-secrets", "key": "UPLION_WORKER_BROKER_URL"}
SECRET_REF = {"secretKeyRef": REF}


def with_broker(name: str, broker: dict[str, Any]) -> dict[str, Any]:
    aimodel = examples.example(name)
    aimodel["spec"]["broker"] = broker
    return aimodel


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("example", ["local", "s3-source"])
def test_workers_read_the_redis_url_from_the_secret(example: str) -> None:
    aimodel = with_broker(example, {"kind": "redis", "urlSecretRef": REF,
                                    "address": "redis.uplion:6379", "database": 2})
    deployment = manifests.worker_deployment(aimodel, NS)
    for container in containers(deployment):
        env = {e["name"]: e for e in container["env"]}
        assert env["UPLION_BROKER_URL"] == {"name": "UPLION_BROKER_URL", "valueFrom": SECRET_REF}
    triggers = manifests.scaled_object(aimodel, NS)["spec"]["triggers"]
    for trigger in triggers:
        assert trigger["metadata"]["address"] == "redis.uplion:6379"
        assert trigger["metadata"]["databaseIndex"] == "2"
        assert "enableTLS" not in trigger["metadata"]
        assert "authenticationRef" not in trigger


def test_keda_reads_redis_over_tls_with_its_authentication() -> None:
    aimodel = with_broker("local", {"kind": "redis", "urlSecretRef": REF,
                                    "address": "redis.uplion:6380", "tls": True,
                                    "authenticationRef": "uplion-redis-keda"})
    for trigger in manifests.scaled_object(aimodel, NS)["spec"]["triggers"]:
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["metadata"]["databaseIndex"] == "0"
        assert trigger["authenticationRef"] == {"name": "uplion-redis-keda"}


def test_pulsar_workers_read_the_url_from_the_secret() -> None:
    aimodel = with_broker("upstream", {"kind": "pulsar", "urlSecretRef": REF,
                                       "adminUrl": "http://pulsar.pulsar:8080"})
    container = containers(manifests.worker_deployment(aimodel, NS))[0]
    env = {e["name"]: e for e in container["env"]}
    assert env["UPLION_BROKER_URL"]["valueFrom"] == SECRET_REF
    trigger = manifests.scaled_object(aimodel, NS)["spec"]["triggers"][0]
    assert trigger["metadata"]["adminURL"] == "http://pulsar.pulsar:8080"


@pytest.mark.parametrize(("broker", "message"), [
    ({"kind": "redis"}, "urlSecretRef"),
    ({"kind": "redis", "url": "redis://r:6379/0", "urlSecretRef": REF}, "not both"),
    ({"kind": "redis", "urlSecretRef": REF}, "broker.address"),
    ({"kind": "redis", "urlSecretRef": REF, "address": "redis://r:6379"}, "host:port"),
    ({"kind": "redis", "url": "redis://r:6379/0", "address": "r:6379"}, "only with urlSecretRef"),
])
def test_inconsistent_brokers_are_refused(broker: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        resource.AIModelSpec.model_validate({**examples.example("local")["spec"],
                                             "broker": broker})


def test_a_plain_url_still_works_for_older_aimodels() -> None:
    deployment = manifests.worker_deployment(examples.example("local"), NS)
    env = {e["name"]: e for e in containers(deployment)[0]["env"]}
    assert env["UPLION_BROKER_URL"]["value"].startswith("redis://redis.uplion:6379/2")


@pytest.mark.parametrize(("url", "address", "database", "tls"), [
    ("redis://:gateway-password@redis.uplion:6379/3?socket_timeout=2", "redis.uplion:6379", 3,
     False),
    ("rediss://admin:gateway-password@redis.uplion/0", "redis.uplion:6379", 0, True),
])
def test_a_cluster_gateway_gives_its_aimodels_a_reference(
    url: str, address: str, database: int, tls: bool
) -> None:
    broker = deployments.workers_broker(url, "uplion-secrets/UPLION_WORKER_BROKER_URL",
                                        "uplion-redis-keda")
    assert broker.url is None
    assert broker.url_secret_ref == resource.SecretKeyRef.model_validate(REF)
    assert (broker.address, broker.database, broker.tls) == (address, database, tls)
    assert broker.authentication_ref == "uplion-redis-keda"
    assert "gateway-password" not in str(broker.model_dump())


def test_a_pulsar_gateway_gives_its_admin_url_tenant_and_namespace() -> None:
    broker = deployments.workers_broker(
        "pulsar://pulsar:6650?admin=http://pulsar-admin:8080&tenant=ai&namespace=prod",
        "uplion-secrets/UPLION_WORKER_BROKER_URL",
    )
    assert (broker.kind, broker.url, broker.admin_url, broker.tenant, broker.namespace) == (
        "pulsar", None, "http://pulsar-admin:8080", "ai", "prod")
    assert broker.url_secret_ref is not None


@pytest.mark.parametrize("secret", ["", "just-a-name", "a/b/c", "/key", "name/"])
def test_a_bad_secret_setting_is_refused_with_its_form(secret: str) -> None:
    with pytest.raises(ValueError, match="UPLION_WORKERS_BROKER_SECRET"):
        deployments.workers_broker("redis://r:6379/0", secret)


async def test_deployed_aimodels_carry_no_broker_credentials(client: kube.Kube) -> None:
    broker = deployments.workers_broker("redis://:gateway-password@redis.uplion:6379/0",
                                        "uplion-secrets/UPLION_WORKER_BROKER_URL")
    backend = deployments.KubernetesDeployments(client, NS, "ghcr.io/uplion/uplion:0.1.0",
                                                broker)
    created = await backend.create(DeploymentRequest.model_validate(
        {"model": {"name": "echo", "engine": {"kind": "test-echo"}}}))
    aimodel = await client.get_aimodel(NS, created.id)
    assert aimodel["spec"]["broker"] == {"kind": "redis", "urlSecretRef": REF,
                                         "address": "redis.uplion:6379", "database": 0,
                                         "tls": False, "tenant": "public",
                                         "namespace": "default"}
    for obj in manifests.all_objects({**aimodel, "metadata": {**aimodel["metadata"],
                                                              "uid": "u"}}, NS):
        assert "gateway-password" not in str(obj)


def test_pulsar_defaults_follow_the_url() -> None:
    broker = deployments.workers_broker("pulsar://pulsar:6650", "s/k")
    assert (broker.admin_url, broker.tenant, broker.namespace) == (
        "http://pulsar:8080", "public", "default")


def test_a_bad_pulsar_url_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="unknown"):
        deployments.workers_broker("pulsar://pulsar:6650?colour=blue", "s/k")
