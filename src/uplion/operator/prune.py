"""Deleting what an AIModel no longer wants: the objects it owns (its uid as their controller)
of the kinds ``manifests`` builds, that the desired set does not name. A promoted or rolled-back
canary leaves no Deployment or ScaledObject behind; other AIModels' objects and objects made by
hand are never touched, whatever their names or labels."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from uplion.operator import kube

log = logging.getLogger(__name__)

PRUNED_KINDS = (("apps/v1", "Deployment"), ("keda.sh/v1alpha1", "ScaledObject"),
                ("v1", "ConfigMap"))
"""The kinds an AIModel owns (``manifests.all_objects``)."""


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling owner, if it has one."""
    for owner in obj.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("controller"):
            uid = owner.get("uid")
            return str(uid) if uid is not None else None
    return None


def stale(
    owner_uid: str, desired: Iterable[Mapping[str, Any]], live: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The live objects controlled by ``owner_uid`` that ``desired`` does not name."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    return [
        obj for obj in live
        if controller_uid(obj) == owner_uid
        and (obj.get("kind"), obj["metadata"]["name"]) not in wanted
    ]


async def prune(
    client: kube.Kube, aimodel: Mapping[str, Any], desired: list[dict[str, Any]]
) -> list[str]:
    """Delete the AIModel's owned objects that are no longer desired; ``kind/name`` of each."""
    meta = aimodel["metadata"]
    deleted: list[str] = []
    for api_version, kind in PRUNED_KINDS:
        live = [{"kind": kind, **obj}
                for obj in await client.list_objects(api_version, kind, meta["namespace"])]
        for obj in stale(meta["uid"], desired, live):
            name = obj["metadata"]["name"]
            try:
                await client.delete(api_version, kind, meta["namespace"], name)
            except kube.NotFound:
                continue  # gone already (the garbage collector, another replica)
            log.info("deleted %s %s/%s: %s no longer wants it", kind, meta["namespace"], name,
                     meta["name"])
            deleted.append(f"{kind}/{name}")
    return deleted
