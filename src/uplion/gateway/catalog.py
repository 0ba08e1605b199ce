"""Which models the gateway serves, and which topic a request for a model goes to."""

from __future__ import annotations

from dataclasses import dataclass

from uplion import protocol
from uplion.models import ModelSpec


@dataclass(frozen=True, slots=True)
class Route:
    spec: ModelSpec
    topic: str


class Catalog:
    """Models by name; each name has one or more versions, the first listed being the default.

    A client names ``<model>`` (the default version) or ``<model>@<version>``.
    """

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._versions: dict[str, dict[str, Route]] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ModelSpec) -> Route:
        versions = self._versions.setdefault(spec.name, {})
        if spec.version in versions:
            raise ValueError(f"model {spec.name}@{spec.version} exists already")
        route = versions[spec.version] = Route(spec, protocol.topic_for(spec.name, spec.version))
        return route

    def replace(self, spec: ModelSpec) -> None:
        self._versions[spec.name][spec.version] = Route(
            spec, protocol.topic_for(spec.name, spec.version)
        )

    def remove(self, name: str, version: str) -> None:
        versions = self._versions.get(name, {})
        versions.pop(version, None)
        if not versions:
            self._versions.pop(name, None)

    def names(self) -> list[str]:
        return list(self._versions)

    def versions(self, name: str) -> list[str]:
        return list(self._versions.get(name, {}))

    def routes(self) -> list[Route]:
        return [route for versions in self._versions.values() for route in versions.values()]

    def resolve(self, model: str, version: str | None = None) -> Route | None:
        name, _, pinned = model.partition("@")
        versions = self._versions.get(name)
        if not versions:
            return None
        wanted = version or pinned
        if wanted:
            return versions.get(wanted)
        return next(iter(versions.values()))
