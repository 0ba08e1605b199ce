"""The one door to the Kubernetes API: every read and write of the operator goes through here.

``Kube`` wraps a ``kubernetes_asyncio`` API client and speaks plain dicts (the manifests'
shape) over the generic REST paths, for any resource: core ``v1``, ``apps/v1``, KEDA's
``keda.sh/v1alpha1`` and ``uplion.ai/v1alpha1``. ``apply`` is create-or-patch and changes
nothing when the live object already holds every desired field; a Deployment's ``replicas``
is written only when it is created (KEDA owns the count afterwards).

Errors: ``NotFound`` (404), ``Conflict`` (409), ``ApiError`` for the rest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, cast

from kubernetes_asyncio import client, config

from uplion.models import resource

log = logging.getLogger(__name__)

AIMODEL_API_VERSION = f"{resource.GROUP}/{resource.VERSION}"
_MERGE_PATCH = "application/merge-patch+json"
_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ApiError(RuntimeError):
    """The API server refused a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(ApiError, LookupError):
    pass


class Conflict(ApiError):
    pass


def in_cluster() -> bool:
    """Whether this process runs in a pod with a service account token mounted."""
    return os.path.exists(_SERVICE_ACCOUNT_TOKEN)


def pod_namespace() -> str | None:
    """This pod's namespace: ``POD_NAMESPACE``, else the service account's namespace file."""
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip() or None
    except OSError:
        return None


def _plural(kind: str) -> str:
    # Every kind the operator touches pluralises regularly (ConfigMap, Deployment, ...).
    return kind.lower() + "s"


def _path(
    api_version: str, plural: str, namespace: str | None, name: str | None = None,
    subresource: str | None = None,
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base] + (["namespaces", namespace] if namespace else []) + [plural]
    parts += [name] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


def contains(live: Any, desired: Any) -> bool:
    """Whether ``live`` already holds every field of ``desired`` (lists compared whole)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    return bool(live == desired)


class Kube:
    """A connection to one API server."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(cls, host: str | None = None) -> Kube:
        """In a pod: its service account; elsewhere: the kubeconfig; ``host``: that URL."""
        configuration = client.Configuration()
        if host is not None:
            configuration.host = host
        elif in_cluster():
            config.load_incluster_config(  # type: ignore[no-untyped-call]  # untyped upstream
                client_configuration=configuration)
        else:
            await config.load_kube_config(client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self, method: str, path: str, body: object = None,
        query: list[tuple[str, str]] | None = None, content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            data = await self._api.call_api(
                path, method, query_params=query or [], body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True,
            )
        except client.ApiException as error:
            status = int(error.status or 0)
            message = f"{method} {path}: {error.reason}"
            if status == 404:
                raise NotFound(status, message) from None
            if status == 409:
                raise Conflict(status, message) from None
            raise ApiError(status, message) from None
        return cast(dict[str, Any], data or {})

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any]:
        return await self._call("GET", _path(api_version, _plural(kind), namespace, name))

    async def list_objects(
        self, api_version: str, kind: str, namespace: str | None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of a kind (every namespace when ``namespace`` is None)."""
        query = [("fieldSelector", field_selector)] if field_selector else []
        found = await self._call("GET", _path(api_version, _plural(kind), namespace), query=query)
        return cast(list[dict[str, Any]], found.get("items") or [])

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], _plural(obj["kind"]), meta.get("namespace"))
        return await self._call("POST", path, body=dict(obj))

    async def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str,
        patch: Mapping[str, Any], subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (``subresource="status"`` for a status)."""
        path = _path(api_version, _plural(kind), namespace, name, subresource)
        return await self._call("PATCH", path, body=dict(patch), content_type=_MERGE_PATCH)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        await self._call("DELETE", _path(api_version, _plural(kind), namespace, name))

    async def apply(self, obj: Mapping[str, Any]) -> bool:
        """Create the object, or patch the fields that differ; whether anything changed."""
        meta = obj["metadata"]
        try:
            live = await self.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        except NotFound:
            await self.create(obj)
            log.info("created %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
            return True
        desired = dict(obj)
        if obj["kind"] == "Deployment":
            desired["spec"] = {k: v for k, v in obj["spec"].items() if k != "replicas"}
        if contains(live, desired):
            return False
        await self.patch(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], desired)
        log.info("patched %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
        return True

    async def get_aimodel(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.get(AIMODEL_API_VERSION, resource.KIND, namespace, name)

    async def list_aimodels(self, namespace: str | None) -> list[dict[str, Any]]:
        return await self.list_objects(AIMODEL_API_VERSION, resource.KIND, namespace)

    async def patch_aimodel(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(AIMODEL_API_VERSION, resource.KIND, namespace, name, patch)

    async def patch_aimodel_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(
            AIMODEL_API_VERSION, resource.KIND, namespace, name, {"status": dict(status)},
            subresource="status",
        )

    async def delete_aimodel(self, namespace: str, name: str) -> None:
        await self.delete(AIMODEL_API_VERSION, resource.KIND, namespace, name)

    async def create_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return await self.create({"apiVersion": "v1", "kind": "Event", **event})

    async def list_events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        return await self.list_objects("v1", "Event", namespace, field_selector=f"reason={reason}")
