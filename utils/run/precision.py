"""Mixed precision (``-amp``): which part of a network runs in which floating-point format.

The one place the precision policy lives; the model files stay in float32 (measured
effects: docs/mixed_precision.md):

* CUDA: ``torch.autocast`` float16 with a GradScaler, as before (the neurons and ASA integrate in
  float32 inside their own modules).
* CPU: ``torch.autocast`` bfloat16 where the processor computes bfloat16 natively (the
  ``avx512_bf16`` or ``amx_bf16`` flag); elsewhere one note and float32 (emulated bfloat16 is
  slower than float32). bfloat16 has float32's exponent range, so no GradScaler is needed.
  Inside the autocast region these parts are float32 regions (autocast off, floating inputs cast
  to float32), applied by module hooks (:func:`apply_policy`):

  - the first layer (the first ``Conv2d`` of the network): its input is data, not spikes, and
    event counts above 256 or interval-scaled fractions would be rounded to bfloat16's 8
    significant bits (bfloat16 would run this layer faster; README "Mixed precision"),
  - the output layer (the last ``Linear``),
  - every ASA module (its scores, top-k choices, pooling and re-weighting),
  - every spiking neuron (membrane state and threshold comparisons),

  and the loss is computed in float32 outside autocast (utils/run/engine.py). The other
  convolutions and linear layers and their BatchNorm run in bfloat16, channels-last (spikes, 0/1,
  are exact in bfloat16; dropout's 1/(1-p), weights and sums are rounded). Every change of format
  is one copy each way (:class:`_Recast`), the gradient returning in the input's own format.
  Weights, gradients, optimizer state and checkpoints stay float32: autocast casts weights per
  operation.
"""
from __future__ import annotations

import functools
from contextlib import nullcontext

import torch
from torch import nn

from models.module import ASA, SpikingNeuron

LOW = (torch.float16, torch.bfloat16)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_POLICY = "_precision_policy_handles"
_APPLIED = "_precision_policy_applied"        # on the network: apply_policy ran (autocast skips it)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The processor's feature flags (Linux), None when they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """(native bfloat16 on this CPU, why): the processor flag and oneDNN's own check must agree."""
    flags = cpu_flags()
    if flags is None:
        return False, "the CPU's feature flags cannot be read (/proc/cpuinfo)"
    have = [f for f in CPU_BF16_FLAGS if f in flags]
    if not have:
        return False, f"this CPU has no native bfloat16 ({' or '.join(CPU_BF16_FLAGS)} flag)"
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if not torch.backends.mkldnn.is_available() or (check is not None and not check()):
        return False, "PyTorch's oneDNN does not support bfloat16 here"
    return True, f"native bfloat16 ({', '.join(have)})"


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype ``-amp`` gives on ``device``, None for float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16()[0]:
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp: bool, net: nn.Module | None = None):
    """The autocast region of a forward pass under ``-amp``; on CPU it first gives ``net`` its
    float32 regions (:func:`apply_policy`, once). float32 runs get a null context."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext()
    if device.type == "cpu" and net is not None and not getattr(net, _APPLIED, False):
        apply_policy(net)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _layers(named, cls) -> list[str]:
    """Names of the ``cls`` modules outside ASA, in network order."""
    return [n for n, m in named if isinstance(m, cls) and not _inside(n, named, ASA)]


def bf16_convs(net: nn.Module) -> list[str]:
    """The convolutions that run in bfloat16 under CPU autocast: all but the first and ASA's."""
    return _layers(list(net.named_modules()), nn.Conv2d)[1:]


def fp32_modules(net: nn.Module) -> dict[str, list[str]]:
    """{part: module names} of the float32 regions the CPU policy gives ``net``."""
    named = list(net.named_modules())
    return {"first layer": _layers(named, nn.Conv2d)[:1], "output layer": _layers(named, nn.Linear)[-1:],
            "ASA": [n for n, m in named if isinstance(m, ASA)],
            "neurons": [n for n, m in named if isinstance(m, SpikingNeuron)]}


def _inside(name: str, named, cls) -> bool:
    return any(isinstance(m, cls) and n and name.startswith(n + ".") for n, m in named)


class _Recast(torch.autograd.Function):
    """``x`` in another dtype and memory layout, in one copy; the gradient goes back in ``x``'s own
    dtype and strides, again in one copy. (``Tensor.to`` returns its gradient in the new layout,
    and the next consumer then pays a second, transposing copy of a whole layer's activations.)"""

    @staticmethod
    def forward(ctx, x, dtype, memory_format):
        ctx.dtype, ctx.shape, ctx.strides = x.dtype, x.shape, x.stride()
        return x.to(dtype, memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty_strided(ctx.shape, ctx.strides, dtype=ctx.dtype, device=grad.device)
        return out.copy_(grad), None, None


def to_float32(x: torch.Tensor) -> torch.Tensor:
    """Entry of a float32 region: ``x`` as contiguous float32; the gradient goes back in ``x``'s
    dtype and memory layout (a channels-last bfloat16 region keeps its fast backward paths)."""
    return _Recast.apply(x, torch.float32, torch.contiguous_format)


def to_bf16_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Entry of a bfloat16 convolution: ``x`` as channels-last bfloat16; the gradient goes back as
    ``x`` was (contiguous float32 from a neuron), so the neuron's backward reads it directly."""
    return _Recast.apply(x, torch.bfloat16, torch.channels_last)


def _to_fp32(module, args):
    return tuple(to_float32(a) if torch.is_tensor(a) and a.dtype in LOW else a for a in args)


def _enter_fp32(module, args):
    """Forward pre-hook: autocast off for this module (CPU autocast only), inputs to float32."""
    if not torch.is_autocast_enabled("cpu"):
        module._precision_region = None
        return None
    module._precision_region = torch.autocast(device_type="cpu", enabled=False)
    module._precision_region.__enter__()
    return _to_fp32(module, args)


def _enter_bf16(module, args):
    """Forward pre-hook of a bfloat16 convolution under CPU autocast: its input in bfloat16 and
    channels-last in one copy, so that oneDNN, BatchNorm and pooling take their fast
    channels-last paths (the same values; README "Mixed precision")."""
    if not torch.is_autocast_enabled("cpu"):
        return None
    return tuple(to_bf16_channels_last(a) if torch.is_tensor(a) and a.dim() == 4 else a for a in args)


def _exit_fp32(module, args, output):
    region, module._precision_region = getattr(module, "_precision_region", None), None
    if region is not None:
        region.__exit__(None, None, None)


def apply_policy(net: nn.Module) -> dict[str, list[str]]:
    """Make the parts named by :func:`fp32_modules` float32 regions whenever CPU autocast is on
    (hooks; no effect without autocast, so a float32 run is unchanged). Idempotent per module (a
    network and its DistributedDataParallel wrapper share the hooks); returns the parts."""
    parts = fp32_modules(net)
    modules = dict(net.named_modules())
    for names in parts.values():
        for n in names:
            m = modules[n]
            if getattr(m, _POLICY, None) is None:
                setattr(m, _POLICY, (m.register_forward_pre_hook(_enter_fp32),
                                     m.register_forward_hook(_exit_fp32, always_call=True)))
    for n in bf16_convs(net):
        m = modules[n]
        if getattr(m, _POLICY, None) is None:
            setattr(m, _POLICY, (m.register_forward_pre_hook(_enter_bf16),))
    setattr(net, _APPLIED, True)
    return parts


def remove_policy(net: nn.Module) -> None:
    """Remove the float32 regions of :func:`apply_policy`."""
    for m in net.modules():
        for h in getattr(m, _POLICY, None) or ():
            h.remove()
        for attr in (_POLICY, _APPLIED):
            if hasattr(m, attr):
                delattr(m, attr)


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe(net: nn.Module, device: torch.device, amp: bool) -> list[str]:
    """The start-up report's lines on precision: which part runs in which format."""
    if not amp:
        return ["precision: float32 everywhere (-amp off)"]
    if device.type == "cuda":
        return ["precision: -amp on CUDA: float16 autocast with a GradScaler; ASA and the neurons' "
                "membrane state in float32; loss float32"]
    ok, why = cpu_bf16() if device.type == "cpu" else (False, f"no mixed precision on {device.type}")
    if not ok:
        return [f"note: -amp: {why}; training in float32"]
    parts = fp32_modules(net)
    low = [n for n in _layers(list(net.named_modules()), (nn.Conv2d, nn.Linear))
           if n not in parts["first layer"] + parts["output layer"]]
    return [f"precision: -amp on CPU, {why}: bfloat16 autocast for {len(low)} conv/linear layers "
            f"({', '.join(low)}) and their BatchNorm; float32 for the first layer "
            f"({', '.join(parts['first layer'])}), the output layer ({', '.join(parts['output layer'])}), "
            f"ASA incl. its top-k ({len(parts['ASA'])} modules), the neurons' membrane state "
            f"({len(parts['neurons'])} layers) and the loss; weights, gradients and checkpoints float32"]


def observed_line(net: nn.Module, x: torch.Tensor, device: torch.device, amp: bool) -> str:
    """One line of the start-up report: the modules grouped by the dtype they ran in, observed on
    one evaluation-mode forward of ``x`` (no statistics are updated)."""
    was = net.training
    net.eval()
    try:
        seen = observe(net, x, device, amp)
    finally:
        net.train(was)
    groups: dict[str, list[str]] = {}
    for n, d in seen.items():
        groups.setdefault(d, []).append(n)
    return "precision observed on one sample: " + "; ".join(
        f"{d}: {', '.join(ns)}" for d, ns in sorted(groups.items()))


@torch.no_grad()
def observe(net: nn.Module, x: torch.Tensor, device: torch.device, amp: bool) -> dict[str, str]:
    """{module name: the dtype it computed in} for one forward of ``x`` under ``-amp``'s autocast:
    a conv/linear/BatchNorm's output dtype, an ASA's or a neuron's input dtype (their state and
    top-k are computed in it). Training mode is kept; for the run log and the tests."""
    ctx = autocast(device, amp, net)          # gives the network its float32 regions first
    seen, handles = {}, []
    for n, m in net.named_modules():
        if isinstance(m, (ASA, SpikingNeuron)):
            handles.append(m.register_forward_pre_hook(
                lambda mod, a, n=n: seen.__setitem__(n, _name(a[0].dtype))))
        elif isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            handles.append(m.register_forward_hook(
                lambda mod, a, out, n=n: seen.__setitem__(n, _name(out.dtype))))
    try:
        with ctx:
            net(x)
    finally:
        for h in handles:
            h.remove()
    return seen
