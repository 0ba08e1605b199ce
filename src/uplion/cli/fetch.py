"""``uplion fetch-model``: fetch a model's artifact into the cache and print its local path.

A cluster's worker pods run it as their init container (``--models-file … --model … --link
…``), with the worker's credentials, into the cache volume; the worker then reads the link.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from pydantic import ValidationError

from uplion import config, fetch, logs
from uplion.models import ModelSpec, load_models_file
from uplion.models.spec import FetchSpec, S3Options

app = typer.Typer()


SourceOption = typer.Option(
    None, "--source", help="The artifact's URI: s3://bucket/prefix, hf://org/repo, "
    "hf://org/repo@rev/file, pvc://claim/path, https://…, file://…, package://pkg/path, or a "
    "path.",
)
Sha256Option = typer.Option(
    None, "--sha256", help="DIGEST of the file or archive the source names, or PATH=DIGEST for "
    "a file of a folder (repeat for several).",
)
IncludeOption = typer.Option(
    None, "--include", help="Glob of the files of a folder to fetch (repeatable)."
)
ExcludeOption = typer.Option(None, "--exclude", help="Glob of files not to fetch (repeatable).")
EndpointOption = typer.Option(
    None, "--s3-endpoint-url", help="S3 endpoint (MinIO…); AWS_ENDPOINT_URL otherwise."
)
RegionOption = typer.Option(None, "--s3-region", help="S3 region; AWS_REGION otherwise.")
PathStyleOption = typer.Option(False, "--s3-path-style", help="Path-style S3 addressing.")
CaBundleOption = typer.Option(
    None, "--s3-ca-bundle", help="CA bundle to trust for S3; AWS_CA_BUNDLE otherwise."
)
ModelsFileOption = typer.Option(
    None, "--models-file", help="Take the source and its fetch options from this models file…"
)
ModelOption = typer.Option(None, "--model", help="…from this entry: NAME or NAME@VERSION.")
CacheOption = typer.Option(
    None, "--cache", help="Cache folder (default: $UPLION_MODEL_CACHE, else "
    "$UPLION_CACHE_DIR/models, else ~/.cache/uplion/models).",
)
LinkOption = typer.Option(
    None, "--link", help="Then point this symbolic link at the artifact (replaced atomically)."
)


@app.command("fetch-model")
def fetch_model(
    source: str | None = SourceOption, sha256: list[str] | None = Sha256Option,
    include: list[str] | None = IncludeOption, exclude: list[str] | None = ExcludeOption,
    s3_endpoint_url: str | None = EndpointOption, s3_region: str | None = RegionOption,
    s3_path_style: bool = PathStyleOption, s3_ca_bundle: str | None = CaBundleOption,
    models_file: Path | None = ModelsFileOption, model: str | None = ModelOption,
    cache: Path | None = CacheOption, link: Path | None = LinkOption,
) -> None:
    """Fetch a model's artifact (once per version: the cache is shared) and print its path."""
    flags = [sha256, include, exclude, s3_endpoint_url, s3_region, s3_ca_bundle]
    if models_file is not None or model is not None:
        if source is not None or s3_path_style or any(flags):
            raise typer.BadParameter(
                "with --models-file, the source and its fetch options come from the file",
                param_hint="--source/--sha256/--include/--exclude/--s3-*",
            )
        spec = _entry(models_file, model)
        uri, options = spec.source, spec.fetch
    elif source is None:
        raise typer.BadParameter("give --source URI, or --models-file FILE --model NAME",
                                 param_hint="--source")
    else:
        uri, options = source, _options(
            sha256 or [], include or [], exclude or [],
            S3Options(endpoint_url=s3_endpoint_url, region=s3_region, path_style=s3_path_style,
                      ca_bundle=s3_ca_bundle),
        )
    assert uri is not None
    settings = config.Settings()
    logs.setup(settings.log_level, settings.log_format)
    try:
        path = fetch.fetch(uri, options, cache)
    except fetch.FetchError as error:
        typer.echo(f"{error.reason}: {error.message}", err=True)
        raise typer.Exit(1) from None
    if link is not None:
        try:
            _point(link, path)
        except OSError as error:
            typer.echo(f"LinkFailed: cannot link {link} to {path}: {error}", err=True)
            raise typer.Exit(1) from None
    typer.echo(str(path))


def _entry(models_file: Path | None, model: str | None) -> ModelSpec:
    if models_file is None or model is None:
        raise typer.BadParameter("--models-file and --model go together",
                                 param_hint="--models-file/--model")
    try:
        specs = load_models_file(models_file)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--models-file") from None
    name, _, version = model.partition("@")
    spec = next((s for s in specs if s.name == name and version in ("", s.version)), None)
    if spec is None:
        raise typer.BadParameter(f"{model} is not in {models_file}", param_hint="--model")
    if spec.source is None:
        raise typer.BadParameter(f"{model} in {models_file} has no source to fetch",
                                 param_hint="--model")
    return spec


def _options(
    sha256: list[str], include: list[str], exclude: list[str], s3: S3Options
) -> FetchSpec:
    pairs = [value.partition("=") for value in sha256]
    digests: str | dict[str, str] | None = None
    if len(pairs) == 1 and not pairs[0][1]:
        digests = sha256[0]
    elif pairs:
        if not all(sep and path for path, sep, _ in pairs):
            raise typer.BadParameter(
                "give one DIGEST (of the file or archive), or PATH=DIGEST pairs",
                param_hint="--sha256",
            )
        digests = {path: digest for path, _, digest in pairs}
    try:
        return FetchSpec(sha256=digests, include=include, exclude=exclude, s3=s3)
    except ValidationError as error:
        message = "; ".join(str(e["msg"]) for e in error.errors())
        raise typer.BadParameter(message, param_hint="--sha256") from None


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` in one step (a new link, renamed over it)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.absolute())
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
