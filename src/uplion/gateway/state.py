"""What the gateway's handlers share, kept on ``app.state`` (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from uplion import broker
from uplion.accounts import AccountService, Database
from uplion.gateway.admission import Admission
from uplion.gateway.auth import Authenticator
from uplion.gateway.catalog import Catalog
from uplion.gateway.exchange import Exchange
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import Relay
from uplion.models import ModelSpec
from uplion.models.deployment import DeploymentBackend


@dataclass
class GatewayState:
    broker: broker.Broker
    catalog: Catalog
    relay: Relay
    metrics: GatewayMetrics
    exchange: Exchange
    auth: Authenticator
    admission: Admission
    accounts: AccountService
    database: Database
    health: HealthBoard
    deployments: DeploymentBackend | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False


    def serves_of(self, spec: ModelSpec) -> str | None:
        """What a model version answers: its spec's ``serves``, else what its workers report
        from the artifact (``None`` until one has)."""
        if spec.serves is not None:
            return spec.serves
        info = self.health.info(spec.name, spec.version)
        return None if info is None else info.serves


    def status_of(self, spec: ModelSpec) -> dict[str, object]:
        """A model version's health, with the device its workers said they run it on."""
        info = self.health.info(spec.name, spec.version)
        return {**self.health.of(spec.name, spec.version).as_json(),
                "device": None if info is None else info.device}


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.uplion
    return state
