"""GGUF files, dequantized once into a cached safetensors folder that transformers loads fast.

Unpacking GGUF takes seconds to minutes, so the first load converts the file and later loads read
the folder. The folder's name carries a digest of the GGUF file's path, size and modification
time: a new file at the same path is converted again. It is written to a temporary folder and
renamed into place, so concurrent processes never see a half-written one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from uplion.worker.engines import base

logger = logging.getLogger(__name__)


def default_root() -> Path:
    """``$UPLION_CACHE_DIR/converted``, or ``~/.cache/uplion/converted``."""
    root = os.environ.get("UPLION_CACHE_DIR") or Path.home() / ".cache" / "uplion"
    return Path(root) / "converted"


def cached_folder(gguf: Path, root: Path | None = None) -> Path:
    """Where the conversion of ``gguf`` lives (or will live)."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    return (root if root is not None else default_root()) / f"{gguf.stem}-{digest}"


def converted(gguf: Path, root: Path | None = None) -> Path:
    """A transformers folder (config, safetensors weights, tokenizer) holding ``gguf``
    dequantized, converted now unless an earlier load did it."""
    target = cached_folder(gguf, root)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    logger.info("converting %s into %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent,
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                local_files_only=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                gguf.parent, gguf_file=gguf.name, local_files_only=True
            )
        except (ValueError, KeyError, NotImplementedError) as error:
            raise base.Unrecoverable(
                "UnsupportedModel", f"cannot load the GGUF file {gguf} with transformers: {error}"
            ) from error
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # mkdtemp (and safetensors, for the weights) wrote them for their owner alone: the
        # image converts as root at build time and its workers (another user) read them; so
        # may the other users of a shared cache.
        staging.chmod(0o755)
        for written in staging.rglob("*"):
            written.chmod(0o755 if written.is_dir() else 0o644)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            logger.info("another process converted %s first", gguf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted %s in %.1fs", gguf, time.perf_counter() - started)
    return target
