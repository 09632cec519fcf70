"""The fast path: the fully connected nets' matmuls in bf16 on fp32 master weights (trainer.precision=bf16-mixed).

Inside `bf16_matmuls()` the layers of advnets.nets.mlp run their matmuls in bf16, with fp32
accumulation (oneDNN; AMX on CPUs that have it, tensor cores on GPUs), and everything else stays as it is:
the weights, their gradients, the optimisers, the EMA of G, the losses, the R1 penalty and the nets'
outputs are fp32. What makes it faster than autocast:

- Each weight is cast to bf16 once per value it takes (`cast`: the cast is cached, keyed on the
  parameter's version counter, which every in-place update moves on), not once per forward pass: in one
  Algorithm 1 iteration D's weights serve three forward passes and R1's double backward, G's two.
- Activations stay bf16 between layers (no cast back and forth around every matmul).
- The layers' backward is their own (`_Linear`): the weight gradient gy^T x multiplies a row-major copy of gy^T,
  not autograd's transposed view, which oneDNN's bf16 matmul runs two to three times slower; and R1's pass for
  D's input gradient computes no weight gradients (autograd's own matmul backward skips them too).
- Dropout masks come from 16 random bits per unit, four units per 64-bit draw (`cheap_dropout`), not from
  `bernoulli_`, which draws one random number per unit.
- The maxout max keeps its argmax (`torch.max`), whose backward is one scatter; `amax`'s compares and
  divides to share the gradient between ties (which bf16 rounding makes common).

Evaluation (Parzen, FID/KID, samples) runs outside the context, in fp32. The module turns the context on
around its training step when the Trainer's precision is bf16-mixed and it trains on a CPU
(advnets.module.GAN.fast_path); the conv nets' conv layers keep Lightning's autocast. On a GPU bf16-mixed is
Lightning's autocast alone (bf16 matmuls on fp32 weights): the fast path's layouts and casts were measured on
CPUs only. docs/speed.md has the measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

_on = False  # a plain global, not a thread-local: torch.compile guards on it (and recompiles when it changes)
DTYPE = torch.bfloat16
_casts: WeakIdKeyDictionary = WeakIdKeyDictionary()  # layer -> {name: ((version, data pointer), bf16 cast)}
FAST_PRECISION = "bf16-mixed"  # the Trainer precision that turns the fast path on
AUTO = "auto"  # trainer.precision's default (ours, not Lightning's): resolve_precision


def enabled() -> bool:
    """Whether the layers run the fast path here (inside `bf16_matmuls()`)."""
    return _on


@contextmanager
def bf16_matmuls(on: bool = True) -> Iterator[None]:
    global _on
    previous, _on = _on, on
    try:
        yield
    finally:
        _on = previous


def cast(layer: nn.Module, name: str) -> Tensor:
    """layer.<name> in bf16, differentiable (gradients reach the fp32 parameter), made once per value.

    The cast is made with grad mode on even under no_grad (the D step's G forward), so that the G step's
    forward, which reuses it, still reaches G's weights. The casts live here, keyed weakly on the layer (a
    cast refers to its parameter, never to the layer, so they go with the layer), not in the layer: it can
    still be deep-copied (a cast is not a graph leaf)."""
    param = getattr(layer, name)
    if torch.compiler.is_compiling():  # inside a compiled graph the cast is one more fused op
        return param.to(DTYPE)
    key = (param._version, param.data_ptr())
    casts = _casts.setdefault(layer, {})
    hit = casts.get(name)
    if hit is None or hit[0] != key:
        with torch.enable_grad():
            hit = casts[name] = (key, param.to(DTYPE))
    return hit[1]


def put_cast(layer: nn.Module, name: str, param: Tensor, copy: Tensor) -> None:
    """Take `copy`, a bf16 copy of layer.<name> (`param`) made elsewhere (the compiled update of advnets.updates
    makes it with the update), as that value's cast: differentiable as `cast`'s is, its gradient reaching `param`."""
    with torch.enable_grad():
        _casts.setdefault(layer, {})[name] = ((param._version, param.data_ptr()), _Precast.apply(param, copy))


class _Precast(torch.autograd.Function):
    """`copy` as param.to(bf16) would be: the same values, its gradient cast back to param's dtype."""

    @staticmethod
    def forward(ctx, param: Tensor, copy: Tensor) -> Tensor:
        ctx.dtype = param.dtype
        return copy

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.to(ctx.dtype), None


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """layer(x) in bf16 on the fast path (output bf16), as nn.Linear elsewhere."""
    if not enabled():
        return F.linear(x, layer.weight, layer.bias)
    weight, bias = cast(layer, "weight"), cast(layer, "bias") if layer.bias is not None else None
    if torch.compiler.is_compiling():  # Inductor chooses its own matmul layouts
        return F.linear(x.to(DTYPE), weight, bias)
    return _Linear.apply(x.to(DTYPE), weight, bias)


def _transposed_mm(a: Tensor, b: Tensor) -> Tensor:
    """a^T b, with a^T copied row-major first: oneDNN's bf16 matmul runs two to three times slower when its
    first operand is a transposed view, which is what autograd's weight gradient gy^T x multiplies (the batch,
    the contraction, is the leading dimension of both); the copy costs far less (docs/speed.md). cuBLAS takes the
    transposed view as it is."""
    return a.t().mm(b) if a.is_cuda else a.t().contiguous().mm(b)


def _computes_gradient_of(tensor: Tensor) -> bool:
    """Inside a backward pass: whether this pass wants `tensor`'s gradient. R1's pass (autograd.grad w.r.t. D's
    input) does not want the weights': a custom Function is called for every input, so it must skip them itself,
    as autograd's own matmul backward does."""
    return torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(tensor).node)


class _Linear(torch.autograd.Function):
    """x w^T + b in bf16, whose weight gradient is a `_transposed_mm` and whose input gradient, when R1
    differentiates it again (create_graph), is an `_InputGradient`: the same layout for its weight gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        # grad_y is bf16, as the output is: autograd casts a gradient to its tensor's dtype.
        x, weight, bias = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _InputGradient.apply(grad_y, weight) if torch.is_grad_enabled() else grad_y.mm(weight)
        if ctx.needs_input_grad[1] and _computes_gradient_of(weight):
            grad_weight = _transposed_mm(grad_y, x)
        if ctx.needs_input_grad[2] and _computes_gradient_of(bias):
            grad_bias = grad_y.sum(0)
        return grad_x, grad_weight, grad_bias


class _InputGradient(torch.autograd.Function):
    """grad_y w, the input gradient of `_Linear`, differentiable once more (R1's penalty on D's input gradient)."""

    @staticmethod
    def forward(ctx, grad_y: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(grad_y, weight)
        return grad_y.mm(weight)

    @staticmethod
    def backward(ctx, grad_grad_x: Tensor):
        grad_y, weight = ctx.saved_tensors
        grad_grad_y = grad_grad_x.mm(weight.t()) if ctx.needs_input_grad[0] else None
        grad_weight = (
            _transposed_mm(grad_y, grad_grad_x) if ctx.needs_input_grad[1] and _computes_gradient_of(weight) else None
        )
        return grad_grad_y, grad_weight


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout, with the masks of `cheap_dropout` on the fast path."""
    if not enabled():
        return F.dropout(x, p, training)
    return fast_path_dropout(x, p, training)


def fast_path_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """The fast path's dropout: `cheap_dropout` in training, x itself otherwise."""
    return cheap_dropout(x, p) if training and p else x


def cheap_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout (training mode) with masks from 16 random bits per unit, four units per 64-bit draw of the global
    generator, which the module reseeds every batch (so a resumed run draws the same masks).

    A unit is dropped when its 16-bit draw is below round(p * 2^16); kept units are scaled by the inverse of
    the keep probability that threshold gives (p = 0.2: drop probability 0.1999969, not 0.2)."""
    drop_below = round(p * 65536)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-2^15, 2^15)
    keep = draws >= drop_below - 32768
    return x * keep.to(x.dtype).mul_(65536 / (65536 - drop_below))


def maxout(pre: Tensor, units: int, pieces: int) -> Tensor:
    """The max over each contiguous group of `pieces` of the (batch, units * pieces) pre-activations."""
    if not enabled():
        return pre.view(pre.shape[0], units, pieces).amax(-1)
    return fast_path_maxout(pre, units, pieces)


def fast_path_maxout(pre: Tensor, units: int, pieces: int) -> Tensor:
    """The fast path's maxout: torch.max, whose backward is one scatter to the kept argmax."""
    return pre.view(pre.shape[0], units, pieces).max(-1).values


def fp32(y: Tensor) -> Tensor:
    """A net's output in fp32 on the fast path (the losses, R1 and the samples stay fp32); as it is elsewhere."""
    return y.float() if y.dtype == DTYPE else y


def wants_fast_path(precision: str | int | None, device: torch.device) -> bool:
    """Whether training steps on `device` at this Trainer precision take the fast path: bf16-mixed on a CPU. On a
    GPU bf16-mixed is Lightning's autocast (the fast path was measured on CPUs only; docs/speed.md)."""
    return str(precision) == FAST_PRECISION and device.type == "cpu"


# The precisions that train in fp16, which this project refuses (advnets.config.check_precision): G's gradient
# w.r.t. its samples and R1's input gradient are taken with torch.autograd.grad outside Lightning's loss scaling,
# where they underflow fp16, and the simultaneous step updates the scaler between D's step and G's.
FP16_PRECISIONS = ("16-mixed", "16-true")


def fp32_means_fp32() -> None:
    """fp32 matmuls and convolutions in full fp32 on GPUs: cuDNN runs fp32 convolutions in TF32 (10 mantissa bits)
    by default on Ampere and later, so 32-true would not be the fp32 the CPU runs. (torch's own fp32_precision
    switches, not the legacy allow_tf32 flags: torch refuses a mix of the two.) Nothing changes on a CPU."""
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"


def tf32_on() -> bool:
    """Whether fp32 matmuls or convolutions on a GPU may run in TF32 (the precision line says so)."""
    return "tf32" in (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str | int | None, accelerator: str, model: str) -> str | None:
    """trainer.precision as the Trainer runs it, which is then what the Trainer gets, so that the run's first log
    line, its module's hparams and its loggers' config say what ran. `auto`: bf16-mixed (the fast path) for the
    fully connected nets (model=maxout) on a CPU with bf16 matrix units, where it was measured to pay and to train
    as well as fp32 (docs/speed.md); 32-true elsewhere: GPUs, the conv nets and CPUs that emulate bf16 (not
    measured to pay, or measured not to). Any other value is Lightning's, in Lightning's own name for it
    (lightning_precision_name), and on a CPU fp16 AMP (16-mixed) is bf16-mixed, as Lightning runs it there (it has
    no fp16 AMP on a CPU; its Trainer would convert it with a warning)."""
    if str(precision) == AUTO:
        fast = model == "maxout" and not on_gpu(accelerator) and cpu_bf16_units() is not None
        return FAST_PRECISION if fast else "32-true"
    from advnets.lightning_internals import lightning_precision_name

    name = lightning_precision_name(precision)
    return FAST_PRECISION if name == "16-mixed" and not on_gpu(accelerator) else name


def cpu_bf16_units() -> str | None:
    """The bf16 matrix instructions this CPU has (AMX-BF16, AVX512-BF16), or None: there oneDNN emulates bf16
    matmuls, which are then much slower than fp32 (on an AVX2-only AMD EPYC, 1.5 against 40 GFLOP/s for a
    100 x 1200 by 1200 x 1200 matmul on one thread: docs/speed.md)."""
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX-BF16"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def precision_line(precision: str | None, accelerator: str, asked: str | int | None = None) -> tuple[int, str]:
    """The log level and line that say which precision a run trains in: `precision`, what resolve_precision made of
    trainer.precision=`asked` (the line says so where they differ), and, on a CPU, whether the fast path suits this
    CPU: a warning when bf16-mixed runs on a CPU without bf16 matrix units."""
    fast = str(precision) == FAST_PRECISION  # on a GPU: autocast, on a CPU: the fast path
    source = _source(precision, asked)
    if on_gpu(accelerator):
        what = " (Lightning's autocast: bf16 matmuls on fp32 weights; the fast path is for CPUs)" if fast else ""
        tf32 = "TF32 on: fp32 matmuls and convolutions may run in TF32" if tf32_on() else "TF32 off"
        return logging.INFO, f"precision: {precision or '32-true'}{what}{source}; {tf32}"
    units = cpu_bf16_units()
    if fast and units is None:
        return logging.WARNING, (
            f"precision: bf16-mixed on a CPU without bf16 matrix units ({torch.backends.cpu.get_cpu_capability()})"
            f"{source}: its bf16 matmuls are emulated and far slower than fp32; trainer.precision=32-true is faster here"
        )
    if fast:
        return logging.INFO, f"precision: bf16-mixed, the fast path (this CPU has {units}){source}"
    if str(asked) == AUTO:
        why = "the fast path is measured on the fully connected nets only" if units else "no bf16 matrix units here"
        return logging.INFO, f"precision: 32-true (fp32){source} ({why})"
    fp32 = " (fp32)" if precision in (None, "32-true") else ""
    hint = f"; this CPU has {units}: trainer.precision=bf16-mixed is the faster bf16 path" if units else ""
    return logging.INFO, f"precision: {precision or '32-true'}{fp32}{source}{hint}"


def _source(precision: str | None, asked: str | int | None) -> str:
    """The precision line's account of how trainer.precision=`asked` became `precision`, where it is not that value
    as given: chosen by `auto`, or Lightning's name for it (an alias such as bf16; fp16 AMP on a CPU)."""
    if str(asked) == AUTO:
        return f", chosen by trainer.precision={AUTO}"
    if asked is None or str(asked) == str(precision):
        return ""
    # Of Lightning's values, only fp16 AMP (16-mixed, or its alias 16) becomes bf16-mixed: on a CPU.
    fp16_on_cpu = (
        " on a CPU (it has no fp16 AMP there)" if str(precision) == FAST_PRECISION and str(asked)[:2] == "16" else ""
    )
    return f", as Lightning runs trainer.precision={asked}{fp16_on_cpu}"


__all__ = [
    "bf16_matmuls",
    "cast",
    "cheap_dropout",
    "cpu_bf16_units",
    "dropout",
    "enabled",
    "fp32",
    "fp32_means_fp32",
    "linear",
    "maxout",
    "precision_line",
    "put_cast",
    "resolve_precision",
    "tf32_on",
    "wants_fast_path",
]
