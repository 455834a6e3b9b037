"""What a run computes with on this CPU: native bf16 found from the CPU and the kernel caps."""

from __future__ import annotations

import pytest
import torch

from resnets.training import runtime


@pytest.fixture
def fresh_probe() -> object:
    """`cpu_has_native_bf16` is cached per process: clear it around each test."""
    runtime.cpu_has_native_bf16.cache_clear()
    yield
    runtime.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "avx512_core"),
     ("ATEN_CPU_CAPABILITY", "avx2"), ("ATEN_CPU_CAPABILITY", "default")],
)  # fmt: skip
def test_kernel_caps_mean_no_native_bf16(
    fresh_probe: object, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert not runtime.cpu_has_native_bf16()
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert "no native bf16" in runtime.cpu_kernels()
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: kept


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16 amx_tile", True),
     ("avx2 avx512f avx512_vnni", False)],
)  # fmt: skip
def test_native_bf16_read_from_the_cpu_flags(
    fresh_probe: object, monkeypatch: pytest.MonkeyPatch, tmp_path: object, flags: str,
    native: bool,
) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    text = f"processor\t: 0\nflags\t\t: {flags}\n"
    real_read = runtime.Path.read_text

    def read_text(self: runtime.Path, *args: object, **kwargs: object) -> str:
        if str(self) == "/proc/cpuinfo":
            return text
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.Path, "read_text", read_text)
    assert runtime.cpu_has_native_bf16() is native
    expected = "bf16" if native else "fp32"
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    assert runtime.resolve_channels_last(None, torch.device("cpu"), expected) is True
