"""The cost of the gateway → broker → worker → upstream path over calling the upstream directly.

A fake OpenAI-compatible provider (the tests' own, in this process) answers streamed chat
completions at once. `wrk` drives the same streamed request at it directly, and through
`uplion run` serving it as an `openai-upstream` model with four pooled accounts, authenticated
by a token with rate limits and a quota. Printed per concurrency: requests/s, p50 and p99, and
what uplion adds at p50 and p99.

    .venv/bin/python -m bench.upstream [--duration 5] [--concurrency 16,64]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.worker.fake_provider import FakeProvider

from bench.overhead import HIGH_LIMITS, Figures, server, tokens, wrk
from bench.services import free_port

KEYS = [f"sk-bench-{index}" for index in range(4)]
BODY = ('{"model":"%s","stream":true,"stream_options":{"include_usage":true},'
        '"messages":[{"role":"user","content":"one two three four"}]}')
LUA = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def models_file(workdir: Path, base_url: str) -> Path:
    accounts = []
    for index, key in enumerate(KEYS):
        key_file = workdir / f"key-{index}"
        key_file.write_text(key)
        accounts.append(f"{{name: a{index}, api_key_file: {key_file}, max_concurrency: 32}}")
    path = workdir / "models.yaml"
    path.write_text(f"""models:
  - name: remote
    engine:
      kind: openai-upstream
      options: {{base_url: {base_url}, model: upstream, accounts: [{", ".join(accounts)}]}}
    concurrency: 128
""")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", default="16,64", help="comma-separated levels")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it)")
    levels = [int(level) for level in args.concurrency.split(",")]
    direct: dict[int, Figures] = {}
    through: dict[int, Figures] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeProvider() as provider:
        workdir = Path(tmp)
        for key in KEYS:
            provider.script(key)
        script = workdir / "direct.lua"
        script.write_text(LUA % (BODY % "upstream", KEYS[0]))
        url = provider.base_url.removesuffix("/v1")
        wrk(url, 4, 1, script)
        direct = {level: wrk(url, level, args.duration, script) for level in levels}
        port = free_port()
        command = [sys.executable, "-m", "uplion", "run", "--models",
                   str(models_file(workdir, provider.base_url)), "--port", str(port)]
        log = workdir / "uplion.log"
        with server(command, port, "/v2/health/ready", log, workdir / "data") as gateway:
            token = tokens(gateway, log)["limits"]
            script = workdir / "through.lua"
            script.write_text(LUA % (BODY % "remote", token))
            wrk(gateway, 4, 1, script)
            through = {level: wrk(gateway, level, args.duration, script) for level in levels}
    print(f"the token's limits and quota (on, never reached): {HIGH_LIMITS}")
    header = f"{'path':<8} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{header} {'+p50':>8} {'+p99':>8}")
    for level in levels:
        base = direct[level]
        for name, figures in (("direct", base), ("uplion", through[level])):
            print(f"{name:<8} {level:>5} {figures.rps:>9.0f} {figures.p50_ms:>8.3f} "
                  f"{figures.p99_ms:>8.3f} {figures.p50_ms - base.p50_ms:>+8.3f} "
                  f"{figures.p99_ms - base.p99_ms:>+8.3f}")


if __name__ == "__main__":
    main()
