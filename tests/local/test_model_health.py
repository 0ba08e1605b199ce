"""A remote model whose keys are all refused is Failed within seconds and fails fast with 503;
fixing the key file brings it back to Running (the runtime restarts its worker)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests import helpers
from tests.worker.fake_provider import FakeProvider

GOOD_KEY = "sk-good-0123456789"


def status(served: helpers.Served, name: str) -> dict[str, Any]:
    models = httpx.get(f"{served.url}/v1/models", headers=served.headers).json()["data"]
    found: dict[str, Any] = next(m for m in models if m["id"] == name)["status"]
    return found


def wait_phase(served: helpers.Served, name: str, phase: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if status(served, name)["phase"] == phase:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{name} never became {phase}: {status(served, name)}")


def test_all_keys_invalid_fails_fast_and_a_fixed_key_recovers(tmp_path: Path) -> None:
    key_file = tmp_path / "upstream.key"
    key_file.write_text("sk-wrong-key\n")
    models = tmp_path / "models.yaml"
    with FakeProvider() as provider:
        provider.script(GOOD_KEY)
        models.write_text(f"""models:
  - name: remote
    engine:
      kind: openai-upstream
      options:
        base_url: {provider.base_url}
        model: upstream-model
        accounts: [{{name: primary, api_key_file: {key_file}, max_concurrency: 2}}]
        retest_interval_s: 0.5
    request_timeout_s: 20
""")
        with helpers.platform(tmp_path, models) as served:
            took = wait_phase(served, "remote", "Failed", 10)
            failed = status(served, "remote")
            assert failed["reason"] == "AllAccountsUnauthorized"
            print(f"\nFailed {took:.1f} s after start: {failed['message']}")

            chat = {"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
            started = time.monotonic()
            refused = httpx.post(f"{served.url}/v1/chat/completions", json=chat,
                                 headers=served.headers, timeout=20)
            assert time.monotonic() - started < 1.0
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "model_failed"
            assert "AllAccountsUnauthorized" in refused.json()["error"]["message"]
            ready = httpx.get(f"{served.url}/v2/models/remote/ready", headers=served.headers)
            assert ready.status_code == 503

            key_file.write_text(GOOD_KEY + "\n")
            wait_phase(served, "remote", "Running", 40)
            answer = httpx.post(f"{served.url}/v1/chat/completions", json=chat,
                                headers=served.headers, timeout=20)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"]
