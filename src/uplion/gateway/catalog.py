"""Which models the gateway serves, and which version (and topic) a request for a model goes to.

A client names ``<model>@<version>`` (that version, pinned) or ``<model>``: the model's stable
version, or its canary for ``weight`` percent of such requests, drawn per request. A model's
first version is its stable one until its traffic split says otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from uplion import protocol
from uplion.models import ModelSpec
from uplion.models.deployment import TrafficSplit


@dataclass(frozen=True, slots=True)
class Route:
    spec: ModelSpec
    topic: str


@dataclass(slots=True)
class _Model:
    """One model's versions and split, with the split's routes looked up once."""

    versions: dict[str, Route]
    split: TrafficSplit
    stable: Route
    canary: Route | None = None
    share: float = 0.0  # the canary's weight as a fraction

    def apply(self, split: TrafficSplit) -> None:
        self.split = split
        self.stable = self.versions[split.stable]
        self.canary = None if split.canary is None else self.versions[split.canary]
        self.share = split.weight / 100


class Catalog:
    """Models by name, each with one or more versions and a traffic split between two of them."""

    def __init__(
        self, specs: list[ModelSpec], draw: Callable[[], float] = random.random
    ) -> None:
        self._models: dict[str, _Model] = {}
        self._draw = draw
        for spec in specs:
            self.add(spec)

    def add(self, spec: ModelSpec) -> Route:
        route = Route(spec, protocol.topic_for(spec.name, spec.version))
        model = self._models.get(spec.name)
        if model is None:
            self._models[spec.name] = _Model({spec.version: route}, TrafficSplit(spec.version),
                                             route)
            return route
        if spec.version in model.versions:
            raise ValueError(f"model {spec.name}@{spec.version} exists already")
        model.versions[spec.version] = route
        return route

    def replace(self, spec: ModelSpec) -> None:
        model = self._models[spec.name]
        model.versions[spec.version] = Route(spec, protocol.topic_for(spec.name, spec.version))
        model.apply(model.split)

    def remove(self, name: str, version: str) -> None:
        """Stop routing ``name@version``; a removed canary leaves the split, a removed stable
        version hands the stable role to the first version left (the canary if it is the only
        one)."""
        model = self._models.get(name)
        if model is None or model.versions.pop(version, None) is None:
            return
        if not model.versions:
            del self._models[name]
            return
        split = model.split
        if version == split.canary:
            model.apply(TrafficSplit(split.stable))
        elif version == split.stable:
            others = [v for v in model.versions if v != split.canary]
            if others:
                model.apply(TrafficSplit(others[0], split.canary, split.weight))
            else:  # only the canary is left
                model.apply(TrafficSplit(next(iter(model.versions))))

    def names(self) -> list[str]:
        return list(self._models)

    def versions(self, name: str) -> list[str]:
        """The model's versions, the stable one first."""
        model = self._models.get(name)
        if model is None:
            return []
        stable = model.split.stable
        return [stable, *(v for v in model.versions if v != stable)]

    def routes(self) -> list[Route]:
        return [route for model in self._models.values() for route in model.versions.values()]

    def split(self, name: str) -> TrafficSplit | None:
        model = self._models.get(name)
        return None if model is None else model.split

    def set_split(self, name: str, split: TrafficSplit) -> None:
        """``LookupError`` for an unknown model, ``ValueError`` for a version it does not serve."""
        model = self._models.get(name)
        if model is None:
            raise LookupError(f"The model `{name}` does not exist.")
        for version in (split.stable, split.canary):
            if version is not None and version not in model.versions:
                raise ValueError(f"The model `{name}` has no version `{version}` to route to "
                                 f"(it serves {', '.join(self.versions(name))}).")
        model.apply(split)

    def stable(self, model: str, version: str | None = None) -> Route | None:
        """The route of ``model`` (``name@version`` or ``version``: that version; ``name``: the
        stable one), with no draw: what describes the model rather than what answers a request."""
        name, _, pinned = model.partition("@")
        entry = self._models.get(name)
        if entry is None:
            return None
        wanted = version or pinned
        return entry.versions.get(wanted) if wanted else entry.stable

    def resolve(self, model: str, version: str | None = None) -> Route | None:
        """The route of ``model`` (``name`` or ``name@version``) or of ``version`` if given;
        for an unpinned name, the stable version or, with the canary's weight, the canary."""
        name, _, pinned = model.partition("@")
        entry = self._models.get(name)
        if entry is None:
            return None
        wanted = version or pinned
        if wanted:
            return entry.versions.get(wanted)
        if entry.canary is not None and self._draw() < entry.share:
            return entry.canary
        return entry.stable
