"""``uplion run|gateway|worker|billing``: the platform on one machine, or one of its processes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import prometheus_client
import typer
import uvicorn
import uvloop
from starlette.applications import Starlette

from uplion import billing, broker, cluster, config, fetch, gateway, logs, tracing, wiring, worker
from uplion.accounts import default_url, migrate
from uplion.billing.metrics import BillingMetrics
from uplion.local.runtime import LocalPlatform
from uplion.models import ModelSpec, load_models_file, resource
from uplion.operator import deployments as deployments_
from uplion.operator import events as operator_events
from uplion.operator import kube
from uplion.operator import run as operator_run
from uplion.operator.deployments import KubernetesDeployments
from uplion.operator.images import WorkerImages
from uplion.worker import loading
from uplion.worker import probes as probes_
from uplion.worker.engines.base import Engine, Unrecoverable
from uplion.worker.metrics import WorkerMetrics

app = typer.Typer()

ModelsOption = typer.Option(None, "--models", "-m", help="Models file (YAML).")
BrokerOption = typer.Option(
    None, "--broker", "-b", help="memory://, redis://host:port/db or pulsar://host:6650 (a URL "
    "with a password belongs in UPLION_BROKER_URL: every user of the machine can read a command "
    "line).",
)
HostOption = typer.Option(None, "--host", help="Address to listen on.")
PortOption = typer.Option(None, "--port", "-p", help="Port to listen on.")


def _settings(
    models: Path | None, broker_url: str | None, host: str | None = None, port: int | None = None
) -> config.Settings:
    overrides = {"models_file": models, "broker_url": broker_url, "host": host, "port": port}
    settings = config.Settings.model_validate({k: v for k, v in overrides.items() if v is not None})
    logs.setup(settings.log_level, settings.log_format)
    return settings


def _trace(service: str) -> None:
    """Trace as the ``OTEL_*`` environment says: off unless it names an exporter."""
    try:
        tracing.configure(service)
    except ValueError as error:
        typer.echo(f"uplion: {error}", err=True)
        raise typer.Exit(2) from None


def _specs(settings: config.Settings) -> list[ModelSpec]:
    try:
        return load_models_file(settings.models_file)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--models") from None


def _banner(settings: config.Settings, specs: list[ModelSpec]) -> str:
    base = f"http://{settings.host}:{settings.port}"
    chat = next((s.name for s in specs if s.serves == "text-generation"), "<model>")
    metrics = (f"{base}/metrics" if settings.metrics_port is None
               else f"http://{settings.host}:{settings.metrics_port}/metrics")
    return "\n".join([
        # Without its user, password and options: a banner ends up in logs and screenshots.
        f"uplion is serving {', '.join(s.name for s in specs)} on "
        f"{fetch.redact(settings.broker_url)}",
        f"  OpenAI API:  {base}/v1   (KServe v2: {base}/v2, metrics: {metrics})",
        f"  Web:         {base}/ui/chat   (admin dashboard: {base}/ui/admin)",
        "  try (with an API token in UPLION_TOKEN):",
        f"    curl {base}/v1/chat/completions -H \"Authorization: Bearer $UPLION_TOKEN\" \\",
        "      -H 'Content-Type: application/json' \\",
        f"      -d '{{\"model\": \"{chat}\", \"messages\": "
        "[{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
    ])


def _uvicorn_config(app_: Starlette, settings: config.Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app_, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", log_level=settings.log_level, access_log=False, log_config=None,
        proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies,
    )


def _serve(app_: Starlette, settings: config.Settings) -> None:
    uvloop.run(_serving(app_, settings))


class _FrozenAfterStartup(uvicorn.Server):
    """Once started, takes what start-up built out of the garbage collector's walks: it lives
    as long as the process, and a full collection walking its few hundred thousand objects
    held the event loop for 100-300 ms."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        gc.collect()
        gc.freeze()


_SWITCH_INTERVAL_S = 0.0005
"""How long another thread may keep the GIL from the event loop's thread once it asks for it.
CPython's 5 ms stalls every request behind a busy background thread (the billing aggregator and
its database driver, in-process engines) for up to that long."""


async def _serving(app_: Starlette, settings: config.Settings) -> None:
    """Serve the gateway ``app_``, and its metrics alone on ``metrics_port`` when that is set;
    SIGTERM stops both (each uvicorn server passes the signal on to the other's handler)."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    server = _FrozenAfterStartup(_uvicorn_config(app_, settings))
    if settings.metrics_port is None:
        await server.serve()
        return
    metrics = uvicorn.Server(uvicorn.Config(
        gateway.metrics_app(app_), host=settings.host, port=settings.metrics_port,
        http="httptools", lifespan="off", log_level=settings.log_level, access_log=False,
        log_config=None,
    ))
    scraping = asyncio.create_task(metrics.serve(), name="metrics-port")
    try:
        await server.serve()
    finally:
        metrics.should_exit = True
        await scraping


@app.command()
def run(
    models: Path | None = ModelsOption, broker_url: str | None = BrokerOption,
    host: str | None = HostOption, port: int | None = PortOption,
) -> None:
    """Start the whole platform in one process: gateway, broker (embedded by default), workers."""
    settings = _settings(models, broker_url, host, port)
    _trace("uplion")
    specs = _specs(settings)
    platform = LocalPlatform(settings, specs)
    banner = _banner(settings, specs)

    def ready(admin_token: str | None) -> None:
        typer.echo(banner)
        if admin_token is not None:
            typer.echo(
                "\nThe account store was empty: created the user 'admin'. Its API token, shown "
                f"only this once:\n\n    {admin_token}\n\n"
                "Use it as `Authorization: Bearer <token>` (export UPLION_TOKEN=... for "
                "`uplion admin`)."
            )

    _serve(platform.app(on_ready=ready), settings)


@app.command("gateway")
def gateway_command(
    models: Path | None = ModelsOption, broker_url: str | None = BrokerOption,
    host: str | None = HostOption, port: int | None = PortOption,
) -> None:
    """Start a gateway only; workers run as separate `uplion worker` processes.

    Needs Redis (UPLION_REDIS_URL, or a redis:// broker) for the state gateways share, unless
    UPLION_SINGLE_REPLICA=true says it runs alone."""
    settings = _settings(models, broker_url, host, port)
    _trace("uplion-gateway")
    try:
        wiring.require_shared_state(settings)
        workers = _workers_broker(settings)
    except (wiring.SharedStateMissing, ValueError) as error:
        typer.echo(f"uplion gateway: {error}", err=True)
        raise typer.Exit(2) from None
    backends = wiring.backends(settings)
    catalog = gateway.Catalog(_specs(settings))
    if workers is not None:
        uvloop.run(_cluster_gateway(settings, backends, catalog, workers))
        return

    @contextlib.asynccontextmanager
    async def lifespan(app_: Starlette) -> AsyncIterator[None]:
        async with backends.running(migrate_first=False):
            yield

    _serve(_gateway_app(settings, backends, catalog, None, lifespan), settings)


def _gateway_app(
    settings: config.Settings, backends: wiring.Backends, catalog: gateway.Catalog,
    deployments: KubernetesDeployments | None,
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]],
) -> Starlette:
    return gateway.create_app(
        backends.broker, catalog, principals=backends.principals, admission=backends.admission,
        usage=backends.usage, accounts=backends.accounts, database=backends.database,
        deployments=deployments, lifespan=lifespan, settings=settings,
    )


def _workers_broker(settings: config.Settings) -> resource.Broker | None:
    """The broker of the AIModels a cluster gateway creates (``None``: it creates none);
    ``ValueError`` naming the setting that is missing or wrong."""
    if settings.deployments != "kubernetes":
        return None
    if not settings.workers_broker_secret:
        raise ValueError(
            "UPLION_DEPLOYMENTS=kubernetes needs UPLION_WORKERS_BROKER_SECRET=<secret>/<key>: the "
            "Secret key holding the workers' broker URL, which the AIModels it creates name "
            "(the URL itself never goes into an AIModel)"
        )
    return deployments_.workers_broker(
        settings.broker_url, settings.workers_broker_secret, settings.workers_broker_auth
    )


async def _cluster_gateway(
    settings: config.Settings, backends: wiring.Backends, catalog: gateway.Catalog,
    workers: resource.Broker,
) -> None:
    """A gateway whose /v1/modelDeployment manages AIModels and that routes what they serve."""
    client = await kube.Kube.connect()
    namespace = settings.namespace or os.environ.get("POD_NAMESPACE") or "default"
    deployments = KubernetesDeployments(client, namespace, settings.image, workers,
                                        gpu_image=settings.gpu_worker_image or None)
    routes = cluster.AIModelRoutes(client, namespace, catalog)

    @contextlib.asynccontextmanager
    async def lifespan(app_: Starlette) -> AsyncIterator[None]:
        async with backends.running(migrate_first=False):
            await routes.sync()
            follow = asyncio.create_task(routes.follow(), name="aimodel-routes")
            try:
                yield
            finally:
                follow.cancel()

    try:
        await _serving(
            _gateway_app(settings, backends, catalog, deployments, lifespan), settings
        )
    finally:
        await client.close()


@app.command("billing")
def billing_command(broker_url: str | None = BrokerOption) -> None:
    """Run the usage aggregator of a cluster (Redis usage stream → database) until SIGTERM."""
    settings = _settings(None, broker_url)
    redis_url = settings.shared_redis_url()
    if redis_url is None:
        raise typer.BadParameter(
            "the aggregator of a cluster reads the Redis usage stream: set UPLION_REDIS_URL "
            "(on one machine, `uplion run` aggregates in-process)", param_hint="--broker"
        )
    database_url = settings.database_url or default_url()
    uvloop.run(_aggregate(settings, redis_url, database_url))


async def _aggregate(settings: config.Settings, redis_url: str, database_url: str) -> None:
    await migrate(database_url)
    metrics = BillingMetrics()
    if settings.metrics_port is not None:
        prometheus_client.start_http_server(settings.metrics_port, registry=metrics.registry)
    await billing.run_aggregator(
        redis_url, database_url, settings.billing_flush_events, settings.billing_flush_seconds,
        observe=metrics.observe,
    )


@app.command("operator")
def operator_command(
    namespace: str | None = typer.Option(
        None, "--namespace", envvar="UPLION_OPERATOR_NAMESPACE",
        help="Watch AIModels of this namespace only (default: every namespace).",
    ),
) -> None:
    """Run the Kubernetes operator: AIModel objects → worker Deployments and KEDA scalers."""
    settings = _settings(None, None)
    operator_run.run_operator(namespace or None, settings.metrics_port,
                              WorkerImages.from_settings(settings))


@app.command("worker")
def worker_command(
    model: str = typer.Option(..., "--model", help="Model to serve: NAME or NAME@VERSION."),
    models: Path | None = ModelsOption, broker_url: str | None = BrokerOption,
    concurrency: int | None = typer.Option(None, "--concurrency", "-c", help="Task slots."),
    name: str | None = typer.Option(None, "--name", help="Worker name in statuses and logs."),
) -> None:
    """Serve one model: pull its tasks when a slot is free; SIGTERM drains and exits.

    Exits with status 3 when the model cannot be served (its failure is announced first)."""
    settings = _settings(models, broker_url)
    _trace("uplion-worker")
    model_name, _, version = model.partition("@")
    spec = next((s for s in _specs(settings)
                 if s.name == model_name and (not version or s.version == version)), None)
    if spec is None:
        raise typer.BadParameter(f"{model} is not in {settings.models_file}", param_hint="--model")
    if concurrency is not None:
        spec = spec.model_copy(update={"concurrency": concurrency})
    run = _run_worker(settings.broker_url, spec, name, settings.health_port, settings.model_path)
    if not uvloop.run(run):
        raise typer.Exit(EXIT_UNRECOVERABLE)


EXIT_UNRECOVERABLE = 3


async def _run_worker(
    broker_url: str, spec: ModelSpec, name: str | None, health_port: int | None,
    fetched: Path | None,
) -> bool:
    """Serve until stopped; ``False`` when the model failed unrecoverably."""
    source = broker.connect(broker_url)
    await source.start()
    name = name or worker.worker_name()
    engine: Engine | None = None
    serving: list[worker.Worker] = []
    metrics = WorkerMetrics()

    def ready() -> bool:
        return bool(serving) and not serving[0].stopping

    probes = (None if health_port is None
              else await probes_.serve_probes(health_port, ready, metrics))
    try:
        try:
            engine = await loading.load_engine(spec, fetched, metrics)
        except Unrecoverable as failure:
            await worker.announce_failure(source, spec, name, failure)
            await operator_events.report_unrecoverable(failure.reason, failure.message)
            return False
        replica = worker.Worker(source, spec, engine, name, metrics)
        serving.append(replica)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, replica.stop)
        await replica.run()
        if replica.failure is not None:
            await operator_events.report_unrecoverable(
                replica.failure.reason, replica.failure.message
            )
            return False
        return True
    finally:
        if probes is not None:
            probes.close()
        if engine is not None:
            await engine.close()
        await source.close()

