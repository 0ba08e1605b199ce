"""Decoding on the CPU: bfloat16 where the CPU computes in it, and linear layers packed once for
oneDNN (``hf_cpu_linear``), computing what ``torch.nn.Linear`` computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engines import tiny_models
from tests.engines.streams import collect, text_of
from uplion.worker.engines import base, devices, hf_cpu_linear
from uplion.worker.engines.transformers_engine import TransformersEngine

module_loop = pytest.mark.asyncio(loop_scope="module")

X86_FLAGS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f {extra}\nbogomips\t: 5192\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (X86_FLAGS.format(extra="avx512_bf16 avx512_vnni"), True),
    (X86_FLAGS.format(extra="amx_bf16 amx_tile"), True),
    (X86_FLAGS.format(extra="avx512_vnni"), False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
], ids=["avx512-bf16", "amx", "avx512-without-bf16", "arm-bf16", "arm-without-bf16"])
def test_bfloat16_is_native_where_the_cpu_flags_say_so(
    tmp_path: Path, cpuinfo: str, native: bool
) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert devices.cpu_has_bfloat16(tmp_path / "cpuinfo") is native


def test_an_unreadable_cpuinfo_means_no_bfloat16(tmp_path: Path) -> None:
    assert devices.cpu_has_bfloat16(tmp_path / "missing") is False


def test_auto_decodes_in_bfloat16_on_such_a_cpu_and_encodes_in_float32() -> None:
    native = devices.cpu_has_bfloat16()
    assert devices.torch_dtype("cpu", "auto", decodes=True) == (
        torch.bfloat16 if native else torch.float32)
    assert devices.torch_dtype("cpu", "auto", decodes=False) == torch.float32
    assert devices.torch_dtype("cpu", "float32", decodes=True) == torch.float32


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 2), (64, 2)])
def test_torch_threads_leave_a_cpu_to_the_rest_of_the_process(cpus: int, threads: int) -> None:
    assert devices.default_cpu_threads(cpus) == threads


@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (2, 5, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_layer_computes_what_the_linear_layer_computes(
    shape: tuple[int, ...], bias: bool
) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias).to(torch.bfloat16)
    inputs = torch.randn(*shape, dtype=torch.bfloat16)
    exact = torch.nn.functional.linear(
        inputs.float(), linear.weight.float(), None if linear.bias is None else linear.bias.float())

    packed = hf_cpu_linear.PackedLinear(linear)(inputs)

    assert packed.shape == (*shape[:-1], 80)
    assert packed.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: results agree to its rounding
    torch.testing.assert_close(packed.float(), exact, atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(packed, linear(inputs), atol=2e-2, rtol=1.6e-2)


def test_pack_replaces_exactly_the_linear_layers() -> None:
    class Scaled(torch.nn.Linear):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(inputs)

    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()),
        Scaled(4, 4),
    ).to(torch.bfloat16)

    assert hf_cpu_linear.pack(model) == 2
    assert isinstance(model[0], hf_cpu_linear.PackedLinear)
    assert isinstance(model[1][0], hf_cpu_linear.PackedLinear)
    assert type(model[2]) is Scaled
    assert model(torch.ones(1, 8, dtype=torch.bfloat16)).shape == (1, 4)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.causal_lm(tmp_path_factory.mktemp("cpu-linear") / "llama")


@module_loop
async def test_a_bfloat16_causal_lm_decodes_through_packed_layers_as_generate_does(
    llama_dir: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = TransformersEngine(base.Artifact(path=llama_dir, device="cpu"), dtype="bfloat16")
    await engine.load()
    try:
        layers = list(engine._model.modules())  # type: ignore[union-attr]
        assert not any(type(layer) is torch.nn.Linear for layer in layers)
        assert any(isinstance(layer, hf_cpu_linear.PackedLinear) for layer in layers)
        answer = text_of(await collect(
            engine.complete("the cat sat", base.GenerationParams(temperature=0.0, max_tokens=10))))
    finally:
        await engine.close()

    reference: Any = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).eval()
    hf_cpu_linear.pack(reference)
    words = AutoTokenizer.from_pretrained(llama_dir)
    prompt = words("the cat sat", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        output = reference.generate(prompt, do_sample=False, max_new_tokens=10,
                                    pad_token_id=tiny_models.PAD)
    assert answer == words.decode(output[0, prompt.shape[1]:])


@module_loop
async def test_auto_reports_the_dtype_it_decodes_in(llama_dir: Path) -> None:
    engine = TransformersEngine(base.Artifact(path=llama_dir, device="cpu"))
    await engine.load()
    try:
        assert engine.info.extra["dtype"] == (
            "bfloat16" if devices.cpu_has_bfloat16() else "float32")
    finally:
        await engine.close()
