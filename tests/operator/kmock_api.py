"""The resources the operator and a cluster gateway use, declared on kmock's Kubernetes emulator."""

from __future__ import annotations

import kmock

RESOURCES = {
    "uplion.ai/v1alpha1/aimodels": ("AIModel", {"status"}),
    "apps/v1/deployments": ("Deployment", {"status"}),
    "v1/configmaps": ("ConfigMap", set()),
    "keda.sh/v1alpha1/scaledobjects": ("ScaledObject", set()),
    "v1/events": ("Event", set()),
}


def declare(server: kmock.KubernetesEmulator) -> None:
    """The resources, as the API server's discovery lists them."""
    verbs = {"get", "list", "watch", "create", "patch", "delete"}
    for key, (kind, subresources) in RESOURCES.items():
        server.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs=verbs, subresources=subresources)
