"""A gateway that may run beside other replicas refuses in-process caches, limits and usage.

Without Redis each replica would keep its own principal cache (a token revoked on one replica stays
valid on the others), its own rate limits and quotas (multiplied by the replica count) and its own
usage (never billed). ``uplion gateway`` therefore needs Redis, unless told it runs alone
(``UPLION_SINGLE_REPLICA=true``); ``uplion run`` is one machine and always may.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests import helpers
from uplion import config, wiring


def refused(tmp_path: Path, env: dict[str, str]) -> str:
    """Start ``uplion gateway``, expect it to exit with status 2; what it printed."""
    log = tmp_path / "gateway.log"
    process = helpers.spawn("gateway", "--models", str(helpers.ECHO_MODELS), "--port", "0",
                            log=log, env={"UPLION_DATA_DIR": str(tmp_path), **env})
    try:
        code = process.wait(timeout=60)
    finally:
        helpers.stop(process)
    printed = log.read_text()
    assert code == 2, printed
    return printed


@pytest.mark.parametrize("env", [
    {"UPLION_BROKER_URL": "memory://"},
    {"UPLION_BROKER_URL": "pulsar://127.0.0.1:9", "UPLION_DEPLOYMENTS": "kubernetes"},
])
def test_gateway_without_redis_refuses_to_start(tmp_path: Path, env: dict[str, str]) -> None:
    printed = refused(tmp_path, env)
    assert "UPLION_REDIS_URL" in printed
    assert "UPLION_SINGLE_REPLICA=true" in printed
    assert "Traceback" not in printed


def test_a_gateway_told_it_runs_alone_starts(tmp_path: Path) -> None:
    with helpers.platform(tmp_path, command="gateway",
                          env={"UPLION_SINGLE_REPLICA": "true"}) as served:
        assert httpx.get(f"{served.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(("settings", "allowed"), [
    (config.Settings(broker_url="memory://"), False),
    (config.Settings(broker_url="memory://", single_replica=True), True),
    (config.Settings(broker_url="redis://127.0.0.1:6379/0"), True),
    (config.Settings(broker_url="pulsar://p:6650", redis_url="redis://r:6379/0"), True),
    (config.Settings(broker_url="pulsar://p:6650", deployments="kubernetes"), False),
    (config.Settings(broker_url="pulsar://p:6650", deployments="kubernetes",
                     single_replica=True), True),
])
def test_shared_state_rule(settings: config.Settings, allowed: bool) -> None:
    if allowed:
        wiring.require_shared_state(settings)
    else:
        with pytest.raises(wiring.SharedStateMissing, match="UPLION_SINGLE_REPLICA=true"):
            wiring.require_shared_state(settings)


def test_a_cluster_gateway_needs_the_secret_of_its_workers_broker(
    tmp_path: Path, clean_redis: str
) -> None:
    """The AIModels it creates name the workers' broker URL by its Secret key, never by value."""
    printed = refused(tmp_path, {"UPLION_BROKER_URL": clean_redis,
                                 "UPLION_DEPLOYMENTS": "kubernetes"})
    assert "UPLION_WORKERS_BROKER_SECRET=<secret>/<key>" in printed
    assert "Traceback" not in printed
