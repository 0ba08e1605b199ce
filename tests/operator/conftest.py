"""A ``kube.Kube`` client on kmock's Kubernetes emulator, with uplion's resources declared."""

from __future__ import annotations

from collections.abc import AsyncIterator

import kmock
import pytest

from tests.operator.kmock_api import declare
from uplion.operator import kube


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kube.Kube]:
    declare(kmock)
    connection = await kube.Kube.connect(host=str(kmock.url).rstrip("/"))
    yield connection
    await connection.close()
