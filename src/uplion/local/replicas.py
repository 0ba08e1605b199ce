"""A model's workers on one machine, held at a replica count and restarted when they die.

Two kinds behind one face: on the embedded broker the workers are tasks in this process (sharing
one loaded engine); on Redis they are ``uplion worker`` processes. Either way a replica removed
by scale-down is drained (it finishes what it holds; SIGTERM for a process), a replica that dies
is restarted with exponential backoff, and ``CRASHES_TO_FAIL`` deaths within ``CRASH_WINDOW_S``
mark the model Failed (the heartbeat of a worker that starts healthy later clears it).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path

import yaml

from uplion import broker, protocol, worker
from uplion.models import ModelsFile, ModelSpec
from uplion.worker import engines, loading
from uplion.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

CRASHES_TO_FAIL = 3
CRASH_WINDOW_S = 60.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
_DRAIN_TIMEOUT_S = 150.0


class Replicas(abc.ABC):
    """Keeps ``target`` replicas of one model running."""

    def __init__(self, source: broker.Broker, spec: ModelSpec) -> None:
        self.broker = source
        self.spec = spec
        self.target = 0
        self._crashes: deque[float] = deque()
        self._backoff = BACKOFF_FIRST_S
        self._restart_after = 0.0
        self._lock = asyncio.Lock()  # one change at a time: scaling, restarting, closing

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Replicas started and not yet stopping."""

    async def scale(self, target: int) -> None:
        async with self._lock:
            if target != self.target:
                log.info("scaling %s@%s from %d to %d replicas", self.spec.name,
                         self.spec.version, self.target, target)
            self.target = target
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Start or drain replicas towards the target; restart dead ones when backoff allows."""
        await self._reap()
        while self.count > self.target:
            await self._stop_one()
        while self.count < self.target and time.monotonic() >= self._restart_after:
            await self._start_one()  # a start that fails sets a backoff, ending the loop

    async def crashed(self, detail: str) -> None:
        """A replica died: back off before restarting; fail the model on repeated deaths."""
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW_S:
            self._crashes.popleft()
        self._restart_after = now + self._backoff
        log.warning("a worker of %s@%s died (%s); restarting in %.0f s", self.spec.name,
                    self.spec.version, detail, self._backoff)
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        if len(self._crashes) >= CRASHES_TO_FAIL:
            await self.broker.publish_status(protocol.WorkerStatus(
                worker=f"supervisor-{os.getpid()}-{self.spec.name}@{self.spec.version}",
                model=self.spec.name, version=self.spec.version, state="failed", slots=0,
                busy=0, at=time.time(), reason="CrashLoopBackOff",
                message=f"{len(self._crashes)} worker crashes in {CRASH_WINDOW_S:.0f} s; "
                f"last: {detail}",
            ))

    async def restart(self) -> None:
        """Drain every replica and start them again with the current spec."""
        async with self._lock:
            await self._close()
            await self._reconcile()

    async def close(self) -> None:
        """Drain every replica."""
        async with self._lock:
            await self._close()

    def healthy(self) -> None:
        """A replica has served: forget the backoff."""
        self._backoff = BACKOFF_FIRST_S

    @abc.abstractmethod
    async def _start_one(self) -> None: ...

    @abc.abstractmethod
    async def _stop_one(self) -> None: ...

    @abc.abstractmethod
    async def _reap(self) -> None:
        """Notice replicas that ended on their own (crashed, or failed) and forget them."""

    @abc.abstractmethod
    async def _close(self) -> None: ...


class InProcessReplicas(Replicas):
    """Workers as tasks of this process; one engine, loaded when the first replica starts. Their
    metrics go to ``metrics``, which the gateway's ``/metrics`` includes."""

    def __init__(
        self, source: broker.Broker, spec: ModelSpec, metrics: WorkerMetrics | None = None
    ) -> None:
        super().__init__(source, spec)
        self._metrics = metrics
        self._engine: engines.base.Engine | None = None
        self._workers: dict[worker.Worker, asyncio.Task[None]] = {}
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        return sum(1 for replica in self._workers if not replica.stopping)

    async def _start_one(self) -> None:
        if self._engine is None:
            log.info("loading %s@%s (%s)", self.spec.name, self.spec.version,
                     self.spec.engine.kind)
            try:
                engine = await loading.load_engine(self.spec, metrics=self._metrics)
            except engines.base.Unrecoverable as failure:
                await worker.announce_failure(self.broker, self.spec, worker.worker_name(),
                                              failure)
                await self.crashed(f"{failure.reason}: {failure.message}")
                return
            self._engine = engine
        replica = worker.Worker(self.broker, self.spec, self._engine, metrics=self._metrics)
        self._workers[replica] = asyncio.create_task(replica.run(), name=replica.name)

    async def _stop_one(self) -> None:
        replica = next(r for r in reversed(self._workers) if not r.stopping)
        replica.stop()
        self._draining.add(self._workers.pop(replica))
        self._draining = {task for task in self._draining if not task.done()}

    async def _reap(self) -> None:
        for replica, running in list(self._workers.items()):
            if not running.done():
                if replica.completed:
                    self.healthy()
                continue
            del self._workers[replica]
            error = None if running.cancelled() else running.exception()
            if replica.failure is not None:
                if self._engine is replica.engine:
                    self._engine = None  # reload: the configuration may have been fixed
                await self._close_unused(replica.engine)
                await self.crashed(f"{replica.failure.reason}: {replica.failure.message}")
            elif error is not None:
                await self.crashed(repr(error))
        if not self._workers and self._engine is not None and self.target == 0:
            await self._engine.close()
            self._engine = None

    async def _close_unused(self, engine: engines.base.Engine) -> None:
        """Close a failed engine once no replica uses it (a child server, sessions, files)."""
        if engine is not self._engine and all(r.engine is not engine for r in self._workers):
            await engine.close()

    async def _close(self) -> None:
        for replica in self._workers:
            replica.stop()
        await asyncio.gather(*self._workers.values(), *self._draining, return_exceptions=True)
        self._workers.clear()
        if self._engine is not None:
            await self._engine.close()
            self._engine = None


class ProcessReplicas(Replicas):
    """Workers as ``uplion worker`` processes on a shared broker (Redis). The broker URL, which
    may carry a password, reaches them in their environment (``UPLION_BROKER_URL``), never in
    their command line, which every user of the machine can read."""

    def __init__(
        self, source: broker.Broker, spec: ModelSpec, broker_url: str, state_dir: Path
    ) -> None:
        super().__init__(source, spec)
        self.broker_url = broker_url
        self.log_dir = state_dir / "logs"
        self.specs_dir = state_dir / "specs"
        self._processes: list[asyncio.subprocess.Process] = []
        self._draining: list[asyncio.subprocess.Process] = []
        self._started: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._serial = 0

    @property
    def count(self) -> int:
        return len(self._processes)

    async def _start_one(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.specs_dir.mkdir(parents=True, exist_ok=True)
        label = f"{self.spec.name}@{self.spec.version}"
        log_file = self.log_dir / f"{label}.log"
        models_file = self.specs_dir / f"{label}.yaml"  # the worker's own: this spec alone
        models_file.write_text(yaml.safe_dump(
            ModelsFile(models=[self.spec]).model_dump(mode="json")
        ))
        self._serial += 1
        name = f"{worker.worker_name()}-{self._serial}"
        with log_file.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "uplion", "worker", "--model",
                label, "--models", str(models_file), "--name", name,
                stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "UPLION_BROKER_URL": self.broker_url},
            )
        self._processes.append(process)
        self._started[process.pid] = time.monotonic()
        self._names[process.pid] = name
        log.info("started worker process %d for %s@%s (log: %s)", process.pid, self.spec.name,
                 self.spec.version, log_file)

    async def _stop_one(self) -> None:
        process = self._processes.pop()
        process.send_signal(signal.SIGTERM)
        self._draining.append(process)

    async def _reap(self) -> None:
        self._draining = [p for p in self._draining if p.returncode is None]
        for process in list(self._processes):
            code = process.returncode
            if code is None:
                if time.monotonic() - self._started[process.pid] > CRASH_WINDOW_S:
                    self.healthy()
                continue
            self._processes.remove(process)
            self._started.pop(process.pid, None)
            name = self._names.pop(process.pid, "")
            await self.broker.publish_status(protocol.WorkerStatus(  # it cannot say so itself
                worker=name, model=self.spec.name, version=self.spec.version, state="stopped",
                slots=self.spec.concurrency, busy=0, at=time.time(),
            ))
            await self.crashed(f"process {process.pid} exited with {code}")

    async def _close(self) -> None:
        for process in self._processes:
            process.send_signal(signal.SIGTERM)
        self._draining.extend(self._processes)
        self._processes.clear()
        for process in self._draining:
            try:
                await asyncio.wait_for(process.wait(), _DRAIN_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._draining.clear()
