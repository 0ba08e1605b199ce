"""``uplion rollout set-weight|promote|rollback``: the steps that move a model's traffic.

Each is one ``PUT /admin/models/{name}/traffic``; the gateway checks the versions and keeps the
split (with its local deployments, or in the model's AIModel in a cluster). Each returns the
split before and after the change.
"""

from __future__ import annotations

from typing import Any

from uplion.rollout.gateway import Gateway

Change = tuple[dict[str, Any], dict[str, Any]]


async def _change(gateway: Gateway, model: str, body: dict[str, Any]) -> Change:
    before = await gateway.traffic(model)
    return before, await gateway.set_traffic(model, body)


async def set_weight(gateway: Gateway, model: str, version: str, weight: int) -> Change:
    """Send ``weight`` percent of the requests that pin no version to ``version``."""
    return await _change(gateway, model, {"canary": {"version": version, "weight": weight}})


async def promote(gateway: Gateway, model: str, version: str) -> Change:
    """Make ``version`` the stable version, with no canary."""
    return await _change(gateway, model, {"stable": version, "canary": None})


async def rollback(gateway: Gateway, model: str) -> Change:
    """Drop the canary: every request that pins no version goes to the stable one."""
    return await _change(gateway, model, {"canary": None})


def describe(split: dict[str, Any]) -> str:
    """``echo: stable 1, canary 2 at 10 %`` or ``echo: stable 1, no canary``."""
    canary = split["canary"]
    shown = "no canary" if canary is None else (
        f"canary {canary['version']} at {canary['weight']} %")
    return f"{split['model']}: stable {split['stable']}, {shown}"
