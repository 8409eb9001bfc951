"""Where and how tensors run: the device, the memory format a model trains fastest in, and
numeric precision."""

from __future__ import annotations

import platform
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def resolve_device(name: str = "auto") -> torch.device:
    """auto → cuda, else mps, else cpu; an explicit device must exist."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name.startswith("cuda") and not cuda:
        raise CnnlabError(f"--device {name}: CUDA is not available here (torch "
                          f"{torch.__version__}); use --device cpu or auto")
    if name == "mps" and not mps:
        raise CnnlabError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n×n matmul on the CPU with the current threads (best of
    `repeats`): the limit a training step's achieved GFLOP/s is set against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def train_gflops(images_per_s: float, macs_per_image: int) -> float:
    """Achieved training GFLOP/s: a training step costs about 3× the forward pass (forward,
    input gradients, weight gradients), 2 FLOP a multiply-add."""
    return images_per_s * 3 * 2 * macs_per_image / 1e9


def machine_name(device: torch.device) -> str:
    """The GPU's model name, or the CPU's with its widest vector unit: speeds mean little
    without them (one CPU model name, e.g. "AMD EPYC", covers chips with and without
    AVX-512)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    units = [unit for flag, unit in (("amx_bf16", "AMX-bf16"), ("avx512f", "AVX-512"),
                                     ("avx2", "AVX2")) if flag in flags]
    return f"{name} ({units[0]})" if units else name


def cpu_has_amx_bf16() -> bool:
    return machine_name(torch.device("cpu")).endswith("(AMX-bf16)")


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 where it is fast: CUDA, or a CPU with AMX-bf16 (elsewhere bf16 convolutions
    fall off oneDNN's fast kernels and run many times slower than fp32)."""
    if precision != "bf16" or device.type == "cuda":
        return
    if device.type != "cpu" or not cpu_has_amx_bf16():
        raise CnnlabError(f"precision bf16 on {device.type}: this CPU has no AMX-bf16 units, "
                          "where bf16 runs far slower than fp32; use precision fp32 (the "
                          "default) or a CUDA device")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last unless the model says it runs faster in NCHW (a class attribute
    `channels_last = False`, set from `cnnlab bench` measurements) or the recipe chose NCHW."""
    if getattr(model, "channels_last", True):
        return torch.channels_last
    return torch.contiguous_format


def prepare_model(model: nn.Module, device: torch.device, layout: str = "auto") -> nn.Module:
    """On the device, in the memory format it trains fastest in, or the one `layout`
    (a recipe's model.memory_format) asks for; feed it through `as_input`."""
    if layout != "auto":
        model.channels_last = layout == "channels_last"
    return model.to(device=device, memory_format=memory_format(model))


def as_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The batch with the strides of the model's memory format spelled out. For 1-channel
    images both layouts are valid, so `x.contiguous(memory_format=...)` keeps the NCHW
    strides, and the first convolution would then hand NCHW activations to a
    channels_last network (measured: NCHW max-pool forward is 10-15x slower here)."""
    return torch.empty_like(x, memory_format=memory_format(model)).copy_(x)


def eval_batch_size(device: torch.device) -> int:
    """Large batches keep a GPU busy; on CPU, batches of 128 stay in cache and measured
    1.6× faster than 1,000 for the custom network."""
    return 1000 if device.type == "cuda" else 128
