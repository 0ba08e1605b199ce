"""The first admin's token kept in a Kubernetes Secret, never in a log.

``uplion admin bootstrap --token-secret NAME`` (the chart's bootstrap Job) writes the token it
creates to the Secret NAME, key ``token``, through the operator's Kubernetes door. The Secret is
made (or found) and patched once *before* the store is touched: a Job without the rights to
write it fails before it creates an admin whose token would be lost.
"""

from __future__ import annotations

import base64

from uplion.operator import kube

KEY = "token"
_LABELS = {"app.kubernetes.io/part-of": "uplion", "app.kubernetes.io/component": "admin-token"}


async def reserve(client: kube.Kube, namespace: str, name: str) -> bool:
    """Make the Secret writable (create it empty, or find it, then patch its labels); whether it
    already holds a token."""
    try:
        live = await client.get("v1", "Secret", namespace, name)
    except kube.NotFound:
        empty = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                 "metadata": {"name": name, "namespace": namespace, "labels": _LABELS}}
        try:
            live = await client.create(empty)
        except kube.Conflict:  # made by a concurrent run in between
            live = await client.get("v1", "Secret", namespace, name)
    await client.patch("v1", "Secret", namespace, name, {"metadata": {"labels": _LABELS}})
    return bool((live.get("data") or {}).get(KEY))


async def store(client: kube.Kube, namespace: str, name: str, token: str) -> None:
    """Write the token under ``token`` (base64, as the API server keeps Secret data)."""
    data = {KEY: base64.b64encode(token.encode()).decode()}
    await client.patch("v1", "Secret", namespace, name, {"data": data})
