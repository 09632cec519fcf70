"""The fast path (trainer.precision=bf16-mixed, advnets.precision) against fp32, through the real module and Trainer.

A short real fit (both schedules, R1 on with gamma 1, the EMA of G on) records, at every optimiser step,
the gradient the module computed and the weights, batch and noise it computed it from. Each gradient is
compared with an independent float64 computation at those same weights (test_updates.py's method), so a
step's error is that step's own, not the drift of the steps before it.

Tolerances (relative L2 error of the whole gradient of a net): D_TOL = 0.1, G_TOL = 0.15. bf16 keeps 8
significant bits: each matmul input is rounded by up to 2^-9 = 0.2%. Where a gradient is a sum with
cancellation, that rounding error is large relative to the sum: G's gradient passes through D's gradient
with respect to its input (a sum over D's units), and so does R1's part of D's; and bf16 rounding flips
the maxout argmax of near ties. Measured on these small nets (32 G units, 16 maxout units, R1 gamma 1):
D 0.02 at the first step and up to 0.08 at the second, G 0.005-0.1; fp32 is within 1e-5. The checks that
make the tolerances mean something: the gradient is not the fp32 module's bit for bit (the fast path
ran), and leaving R1 out of D's gradient, or taking G's gradient at the other D (the one before D's step
in Algorithm 1, after it in the simultaneous update), is outside twice the tolerance (measured 0.6-2.0).
"""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from advnets import precision
from advnets.data import EpochBatchSampler, TensorBatches
from advnets.module import GAN
from conftest import bare_trainer, compose

GAMMA = 1.0
# Small nets whose D step moves G's gradient visibly (tests/test_compiled_updates.py uses them too).
NETS = [
    "logger=none",
    "model.noise_dim=10",
    "model.generator.layers=[{units:32,activation:relu,irange:0.5}]",
    "model.generator.output.irange=0.5",
    "model.discriminator.layers=[{units:16,pieces:3,irange:0.1},{units:16,pieces:3,irange:0.2}]",
    "model.discriminator.output_irange=0.5",
]
SMALL = [
    *NETS,
    "model.ema_decay=0.5",
    "model.ema_rampup=null",
    f"stabilisers.r1_gamma={GAMMA}",
    # R1 at every D step, as the float64 replay takes it (the default's lazy R1: tests/test_wiring.py).
    "stabilisers.r1_every=1",
    "k=1",
    # The paper's SGD at lr 0.1: one D step moves G's gradient by far more than the tolerance, so a G step taken
    # from the wrong D shows (the default's Adam at 5e-4 barely moves D in two steps).
    "optimizer=momentum",
]
NO_DROPOUT = ["model.discriminator.input_dropout=0", "model.discriminator.hidden_dropout=0"]
D_TOL, G_TOL = 0.1, 0.15
AUTOCAST_G_TOL = 0.25  # bf16-mixed off the fast path (a GPU's): test_bf16_mixed_as_on_a_gpu_is_autocast_...
BATCH, STEPS = 8, 2


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


class StepRecorder(pl.Callback):
    """Events in call order: ("batch", x), ("noise", z), ("D"/"G", {"G": .., "D": .., "grad": ..}) at each step."""

    def __init__(self):
        self.events: list = []
        self.casts_seen = False

    def on_train_start(self, trainer, module):
        nets = {"D": module.discriminator, "G": module.generator}
        for name, opt in zip("DG", trainer.optimizers):
            opt.register_step_pre_hook(
                lambda o, a, k, name=name: self.events.append(
                    (
                        name,
                        {
                            "G": weights(module.generator),
                            "D": weights(module.discriminator),
                            "grad": torch.cat([p.grad.flatten() for p in nets[name].parameters()]),
                        },
                    )
                )
            )

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.events.append(("batch", batch.clone()))

    def on_train_batch_end(self, trainer, module, *args):
        linears = [m for m in module.discriminator.modules() if isinstance(m, torch.nn.Linear)]
        self.casts_seen |= all(m in precision._casts for m in linears)


def fit(tmp_path, schedule: str, precision_: str, *extra: str, dropout=None):
    """Two batches of a real fit; returns (module, recorder). `dropout`: replaces precision.dropout."""
    cfg = compose(*SMALL, f"schedule={schedule}", *extra, output_dir=tmp_path)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    recorder = StepRecorder()
    real_noise = module.noise

    def noise(n, generator=None, device=None):
        z = real_noise(n, generator, device)
        recorder.events.append(("noise", z.clone()))
        return z

    module.noise = noise
    x = torch.rand(BATCH * STEPS, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    trainer = bare_trainer(tmp_path, precision=precision_, callbacks=[recorder])
    real_dropout = precision.dropout
    if dropout is not None:
        precision.dropout = dropout
    try:
        trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(len(x), BATCH, seed=0, shuffle=False)))
    finally:
        precision.dropout = real_dropout
        module.noise = real_noise
    return module, recorder


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    cache = {}

    def get(schedule, precision_, *extra, dropout=None):
        key = (schedule, precision_, extra, dropout)
        if key not in cache:
            cache[key] = fit(tmp_path_factory.mktemp("fit"), schedule, precision_, *extra, dropout=dropout)
        return cache[key]

    return get


def float64_net(net: torch.nn.Module, params: dict) -> torch.nn.Module:
    ref = copy.deepcopy(net).double().eval()  # eval: dropout off (these fits have p = 0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(params[name])
    return ref


def d_gradient(module, g_params, d_params, x, z, r1: bool = True) -> torch.Tensor:
    """d/dD of 0.5 * -(mean log D(x) + mean log(1 - D(G(z)))) + gamma/2 mean ||grad_x D(x)||^2, in float64."""
    g, d = float64_net(module.generator, g_params), float64_net(module.discriminator, d_params)
    with torch.no_grad():
        fake = g(z.double())
    real = x.double().requires_grad_()
    logits = d(real)
    value = 0.5 * (F.softplus(-logits).mean() + F.softplus(d(fake)).mean())
    if r1:
        (grad_x,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        value = value + 0.5 * GAMMA * grad_x.pow(2).flatten(1).sum(1).mean()
    return torch.cat([grad.flatten() for grad in torch.autograd.grad(value, list(d.parameters()))])


def g_gradient(module, g_params, d_params, z) -> torch.Tensor:
    """d/dG of the non-saturating loss -mean log D(G(z)), in float64."""
    g, d = float64_net(module.generator, g_params), float64_net(module.discriminator, d_params)
    value = F.softplus(-d(g(z.double()))).mean()
    return torch.cat([grad.flatten() for grad in torch.autograd.grad(value, list(g.parameters()))])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(actual.double() - expected) / torch.linalg.vector_norm(expected))


def last_before(events: list, kind: str, index: int):
    return [value for name, value in events[:index] if name == kind][-1]


def step_gradients(module, recorder: StepRecorder, schedule: str):
    """(net, the module's gradient, the float64 one, the float64 alternative that must be outside tolerance)."""
    events, rows = recorder.events, []
    for i, (name, state) in enumerate(events):
        if name == "D":
            x, z = last_before(events, "batch", i), last_before(events, "noise", i)
            rows.append(
                (
                    "D",
                    state["grad"],
                    d_gradient(module, state["G"], state["D"], x, z),
                    d_gradient(module, state["G"], state["D"], x, z, r1=False),
                )
            )
        elif name == "G":
            z = last_before(events, "noise", i)
            d_before = last_before(events, "D", i)["D"]  # D as it was at D's step, before it
            right, wrong = (state["D"], d_before) if schedule == "alternating" else (d_before, state["D"])
            rows.append(
                ("G", state["grad"], g_gradient(module, state["G"], right, z), g_gradient(module, state["G"], wrong, z))
            )
    assert [r[0] for r in rows] == ["D", "G"] * STEPS
    return rows


def assert_gradients_match(module, recorder, schedule, reference=None, g_tol=G_TOL) -> None:
    """Every step's gradient within tolerance of float64, the alternative outside it; not fp32's bit for bit."""
    fp32 = step_gradients(*reference, schedule) if reference is not None else None
    for n, (net, got, want, alternative) in enumerate(step_gradients(module, recorder, schedule)):
        tol = D_TOL if net == "D" else g_tol
        assert relative_error(got, want) <= tol, (n, net, relative_error(got, want))
        assert relative_error(alternative, want) > 2 * tol, (n, net, relative_error(alternative, want))
        if fp32 is not None and n == 0:  # the first step starts from the same weights in both fits
            assert not torch.equal(got, fp32[0][1]), "bit for bit the fp32 gradient: the fast path did not run"


# The paper's SGD (SMALL's) and the default's Adam, whose fused kernel does not move the weights' version counters
# that the fast path's bf16 casts are cached on (advnets.optim.Adam moves them): lr large enough that a stale cast
# of the weights before a step is outside the tolerance.
OPTIMIZERS = {"momentum": [], "adam": ["optimizer=adam", "optimizer.lr=0.01"]}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_fast_path_step_gradients_match_float64(fits, schedule, optimizer):
    """bf16-mixed: every D step's gradient (R1's double backward included) and every G step's, at the
    weights they were taken at, against float64; dropout off so that float64 can repeat the forward passes."""
    extra = (*NO_DROPOUT, *OPTIMIZERS[optimizer])
    module, fast = fits(schedule, "bf16-mixed", *extra)
    assert module.fast_path and fast.casts_seen and not precision.enabled()
    assert_gradients_match(module, fast, schedule, reference=fits(schedule, "32-true", *extra))


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_bf16_mixed_as_on_a_gpu_is_autocast_whose_step_gradients_match_float64(tmp_path, schedule, monkeypatch):
    """bf16-mixed where the fast path is off, as on a GPU (advnets.precision.wants_fast_path): Lightning's autocast
    alone (here the CPU's, bf16 as a GPU's), G's sample gradient and R1's input gradient included, within bf16's
    tolerance of float64 and the alternative (the other D, no R1) outside it, and not fp32's gradient bit for bit.
    Autocast rounds more than the fast path (measured: G's gradient 0.09 and 0.16 from float64 at its two steps of
    the alternating fit, the fast path's 0.005 and 0.02): G's tolerance is 0.25, the alternative at least 0.69."""
    import advnets.module

    monkeypatch.setattr(advnets.module, "wants_fast_path", lambda precision_, device: False)
    module, autocast = fit(tmp_path, schedule, "bf16-mixed", *NO_DROPOUT)
    assert not module.fast_path and not autocast.casts_seen
    fp32 = fit(tmp_path, schedule, "32-true", *NO_DROPOUT)
    assert_gradients_match(module, autocast, schedule, reference=fp32, g_tol=AUTOCAST_G_TOL)


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_fp32_step_gradients_match_float64(fits, schedule):
    """The same check on 32-true, far tighter: the reference the fast path is held to is right."""
    module, fp32 = fits(schedule, "32-true", *NO_DROPOUT)
    assert not module.fast_path and not fp32.casts_seen
    for n, (net, got, want, _) in enumerate(step_gradients(module, fp32, schedule)):
        assert relative_error(got, want) <= 1e-5, (n, net, relative_error(got, want))


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_fast_path_with_dropout_matches_fp32_with_the_same_masks(fits, schedule):
    """Dropout on (0.2 on the input, 0.5 on hidden units): the first D step of the fast fit against that of
    an fp32 fit from the same weights that draws the same cheap masks (the module reseeds the global
    generator every batch, so both draw the same bits); fp32 with torch's own masks is far from both."""
    _, fast = fits(schedule, "bf16-mixed")
    _, same_masks = fits(schedule, "32-true", dropout=precision.fast_path_dropout)
    _, torch_masks = fits(schedule, "32-true")
    first_d = [[state["grad"] for name, state in r.events if name == "D"][0] for r in (fast, same_masks, torch_masks)]
    want = first_d[1].double()
    assert relative_error(first_d[0], want) <= D_TOL, relative_error(first_d[0], want)
    assert relative_error(first_d[2], want) > 3 * D_TOL


def test_ema_of_g_stays_fp32_on_the_fast_path(fits):
    """The EMA is fp32 and is exactly the fp32 average (decay 0.5) of the fast fit's G after each G step."""
    module, fast = fits("alternating", "bf16-mixed", *NO_DROPOUT)
    g_states = [state["G"] for name, state in fast.events if name == "G"] + [weights(module.generator)]
    expected = g_states[0]  # G at its first step: the EMA's start (on_fit_start), G's weights before any G step
    for after in g_states[1:]:
        expected = {n: torch.lerp(expected[n], after[n], 0.5) for n in expected}
    for n, p in module.generator_ema.generator.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, expected[n]), n


def compile_available() -> str | None:
    """Why torch.compile (dynamo + AOTAutograd) cannot run here, or None."""
    try:
        torch.compile(lambda t: t * 2, backend="aot_eager")(torch.ones(2, requires_grad=True)).sum().backward()
    except Exception as error:  # e.g. a Python version dynamo does not support yet
        return f"torch.compile unavailable on this platform: {type(error).__name__}: {str(error)[:200]}"
    return None


@pytest.mark.parametrize("precision_", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_compiled_step_gradients_match_float64(fits, schedule, precision_, monkeypatch):
    """model.compile=true (R1 through D's eager forward, every other pass compiled), in fp32 and on the fast
    path, against float64 as above. The backend is aot_eager: the same graph capture and AOTAutograd as
    Inductor (where double backward and retained graphs fail), without Inductor's C++ compilation, which
    takes over a minute here for these nets (benchmarks/train_throughput.py --fast-path times Inductor)."""
    reason = compile_available()
    if reason:
        pytest.skip(reason)
    compile_ = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compile_(self, backend="aot_eager"))
    module, compiled = fits(schedule, precision_, *NO_DROPOUT, "model.compile=true")
    assert module.generator._compiled_call_impl is not None and module.fast_path == (precision_ == "bf16-mixed")
    if precision_ == "bf16-mixed":
        assert_gradients_match(module, compiled, schedule, reference=fits(schedule, "32-true", *NO_DROPOUT))
    else:
        for n, (net, got, want, _) in enumerate(step_gradients(module, compiled, schedule)):
            assert relative_error(got, want) <= 1e-5, (n, net, relative_error(got, want))


def test_weights_are_cast_once_per_value():
    """The bf16 copy is reused until the parameter changes in place, and reaches the parameter's gradient
    even when it was made under no_grad."""
    layer = torch.nn.Linear(3, 2)
    with precision.bf16_matmuls():
        with torch.no_grad():
            first = precision.cast(layer, "weight")
        again = precision.cast(layer, "weight")
        assert again is first and first.dtype == torch.bfloat16 and first.grad_fn is not None
        precision.linear(torch.ones(1, 3), layer).sum().backward()
        assert torch.equal(layer.weight.grad, torch.ones(2, 3))
        with torch.no_grad():
            layer.weight.add_(1.0)
        fresh = precision.cast(layer, "weight")
        assert fresh is not first and torch.equal(fresh, layer.weight.detach().to(torch.bfloat16))
    assert precision.linear(torch.ones(1, 3), layer).dtype == torch.float32  # outside the context: fp32


def _layer_gradients(layer: torch.nn.Linear, x: torch.Tensor, fast: bool):
    """The gradients of an R1-like value, sum(y c) + sum((d sum(y c) / dx)^2), w.r.t. x, the weight and the bias:
    the first-order pass and the second-order one through the input gradient."""
    c = torch.linspace(-1, 1, layer.out_features, dtype=x.dtype)
    x = x.clone().requires_grad_()
    with precision.bf16_matmuls(fast):
        y = precision.fp32(precision.linear(x, layer))
        (grad_x,) = torch.autograd.grad((y * c).sum(), x, create_graph=True)
        value = (y * c).sum() + grad_x.float().pow(2).sum()
        return torch.autograd.grad(value, [x, layer.weight, layer.bias])


@pytest.mark.parametrize("shape", [(7, 5, 3), (100, 784, 1200)])
def test_fast_path_linear_gradients_to_second_order(shape):
    """The fast path's linear layer (its own backward: a row-major gy^T for the weight gradient, and an input
    gradient R1 differentiates again) against autograd's on the same bf16-rounded weights and inputs in float64:
    every gradient within 1% (bf16 rounding of the matmul inputs in the backward), and the input's and weight's
    not bit for bit fp32's."""
    batch, n_in, n_out = shape
    torch.manual_seed(5)
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in)
    got = _layer_gradients(layer, x, fast=True)
    ref = copy.deepcopy(layer).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16))
    want = _layer_gradients(ref, x.to(torch.bfloat16).double(), fast=False)
    fp32 = _layer_gradients(layer, x, fast=False)
    for name, g, w, f in zip(["x", "weight", "bias"], got, want, fp32):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        assert relative_error(g, w) < 0.01, (name, relative_error(g, w))
        if name != "bias":  # batch * c: exact in both
            assert not torch.equal(g, f), name


def test_input_gradient_pass_computes_no_weight_gradients():
    """autograd.grad w.r.t. the input alone (R1's first pass) runs one matmul per layer, the input gradient's;
    a backward to the weights runs two (input and weight), and a weight-only one (the first layer: D's input is
    data) one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
            return func(*args, **(kwargs or {}))

    layer = torch.nn.Linear(6, 4)
    with precision.bf16_matmuls():
        for wrt, expected in (("x", 1), ("all", 2), ("weights", 1)):
            x = torch.randn(3, 6, requires_grad=wrt != "weights")
            y = precision.linear(x, layer).sum()  # the forward's addmm, counted apart
            inputs = {"x": [x], "all": [x, layer.weight], "weights": [layer.weight]}[wrt]
            with CountMatmuls() as counter:
                torch.autograd.grad(y, inputs)
            assert counter.count == expected, (wrt, counter.count)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cheap_dropout_masks(p):
    """Drop rate round(p 2^16) / 2^16 within 5 standard errors over 10^6 units; kept units scaled to keep the
    mean; the same masks after the same seed."""
    torch.manual_seed(3)
    x = torch.ones(1000, 1000)
    y = precision.cheap_dropout(x, p)
    q = round(p * 65536) / 65536
    dropped = float((y == 0).float().mean())
    assert abs(dropped - q) < 5 * (q * (1 - q) / x.numel()) ** 0.5
    assert torch.equal(torch.unique(y), torch.tensor([0.0, 1 / (1 - q)]))
    torch.manual_seed(3)
    assert torch.equal(precision.cheap_dropout(x, p), y)
    # Units of a row are not all kept or all dropped together: each has its own 16 bits.
    assert 0 < float((y[0] == 0).float().mean()) < 1


def fit_epochs(root, epochs: int, ckpt_path=None, optimizer="momentum"):
    """A fast-path fit (dropout, R1 and the EMA of G on) of `epochs` epochs of two batches; returns the Trainer."""
    cfg = compose(*SMALL, f"optimizer={optimizer}", output_dir=root)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    x = torch.rand(BATCH * STEPS, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    trainer = bare_trainer(root, max_epochs=epochs, precision="bf16-mixed")
    trainer.fit(
        module,
        train_dataloaders=TensorBatches(x, EpochBatchSampler(len(x), BATCH, seed=0, shuffle=True)),
        ckpt_path=ckpt_path,
    )
    return trainer


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_fast_path_resumes_bit_for_bit(tmp_path, optimizer):
    """Two epochs straight against one epoch, its checkpoint, and a resumed second epoch: every weight (G, D, the
    EMA), optimiser state (velocities; Adam's moments and step counts) and counter the same bit for bit. The bf16
    casts are remade from the restored weights and the cheap dropout masks come from the per-batch seeds, so
    nothing of the fast path needs saving."""
    straight = fit_epochs(tmp_path / "straight", 2, optimizer=optimizer)
    first = fit_epochs(tmp_path / "first", 1, optimizer=optimizer)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = fit_epochs(tmp_path / "resumed", 2, ckpt_path=tmp_path / "epoch1.ckpt", optimizer=optimizer)
    a, b = straight.lightning_module, resumed.lightning_module
    assert a.fast_path and b.fast_path and (b.d_updates, b.g_updates) == (a.d_updates, a.g_updates) == (4, 4)
    assert not torch.equal(
        first.lightning_module.generator_ema.generator.net[0].weight, a.generator_ema.generator.net[0].weight
    )  # the second epoch moved the EMA
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key
    expected_keys = {"velocity"} if optimizer == "momentum" else {"exp_avg", "exp_avg_sq", "step"}
    for opt_a, opt_b in zip(straight.optimizers, resumed.optimizers):
        assert len(opt_a.state) == len(opt_b.state) > 0
        for p_a, p_b in zip(opt_a.state.values(), opt_b.state.values()):
            assert expected_keys <= p_a.keys() == p_b.keys()
            for name, value in p_a.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(p_b[name])), name


def cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_cpu_bf16_units_reads_this_cpus_flags():
    flags = cpuinfo_flags()
    expected = "AMX-BF16" if "amx_tile" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    assert precision.cpu_bf16_units() == expected


def test_precision_line_warns_where_bf16_is_emulated(monkeypatch):
    import logging

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    level, line = precision.precision_line("bf16-mixed", "cpu")
    assert level == logging.WARNING
    assert line.startswith("precision: bf16-mixed on a CPU without bf16 matrix units (")
    assert line.endswith("trainer.precision=32-true is faster here")
    assert precision.precision_line(None, "cpu") == (logging.INFO, "precision: 32-true (fp32)")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX-BF16")
    assert precision.precision_line("bf16-mixed", "cpu") == (
        logging.INFO,
        "precision: bf16-mixed, the fast path (this CPU has AMX-BF16)",
    )
    assert precision.precision_line("32-true", "cpu") == (
        logging.INFO,
        "precision: 32-true (fp32); this CPU has AMX-BF16: trainer.precision=bf16-mixed is the faster bf16 path",
    )


def test_auto_precision_is_the_fast_path_only_for_the_fully_connected_nets_on_a_cpu_with_bf16_units(monkeypatch):
    import logging

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for units in ("AMX-BF16", "AVX512-BF16", None):
        monkeypatch.setattr(precision, "cpu_bf16_units", lambda units=units: units)
        fast = "bf16-mixed" if units else "32-true"
        assert precision.resolve_precision("auto", "auto", "maxout") == fast
        assert precision.resolve_precision("auto", "cpu", "maxout") == fast
        assert precision.resolve_precision("auto", "cpu", "conv") == "32-true"
        assert precision.resolve_precision("auto", "gpu", "maxout") == "32-true"
        for asked in ("32-true", "bf16-mixed", "64-true", None):
            assert precision.resolve_precision(asked, "cpu", "maxout") == asked  # Lightning's values as they are
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX-BF16")
    assert precision.precision_line("bf16-mixed", "cpu", asked="auto") == (
        logging.INFO,
        "precision: bf16-mixed, the fast path (this CPU has AMX-BF16), chosen by trainer.precision=auto",
    )
    assert precision.precision_line("32-true", "cpu", asked="auto") == (
        logging.INFO,
        "precision: 32-true (fp32), chosen by trainer.precision=auto (the fast path is measured on the fully connected"
        " nets only)",
    )
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    assert precision.precision_line("32-true", "cpu", asked="auto") == (
        logging.INFO,
        "precision: 32-true (fp32), chosen by trainer.precision=auto (no bf16 matrix units here)",
    )


@pytest.mark.parametrize("asked", ["16-mixed", "16", 16, "bf16", "32", 32, "64-true", "16-true", "bf16-mixed"])
def test_a_precision_resolves_to_the_one_lightnings_trainer_runs_and_the_line_names_it(asked, monkeypatch):
    """Lightning runs fp16 AMP on a CPU as bf16-mixed and its aliases (16, bf16, 32) under their full names: the
    Trainer gets, and the run's first line names, that precision, not the value asked for (issue 43: the line said
    `16-mixed (fp32)` while Lightning trained in bf16-mixed)."""
    import logging
    import warnings

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AVX512-BF16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's for the discouraged aliases
        on_cpu = precision.resolve_precision(asked, "cpu", "maxout")
        runs = pl.Trainer(accelerator="cpu", precision=asked, logger=False, enable_checkpointing=False).precision
    assert on_cpu == runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning converts nothing more: no warning about what it runs instead
        assert (
            pl.Trainer(accelerator="cpu", precision=on_cpu, logger=False, enable_checkpointing=False).precision == runs
        )
    level, line = precision.precision_line(on_cpu, "cpu", asked=asked)
    assert level == logging.INFO and line.startswith(f"precision: {runs}")
    assert ("(fp32)" in line) == (runs == "32-true")
    if str(asked) != runs:
        assert f", as Lightning runs trainer.precision={asked}" in line
    if str(asked).startswith("16") and runs == "bf16-mixed":
        assert line == (
            "precision: bf16-mixed, the fast path (this CPU has AVX512-BF16), as Lightning runs "
            f"trainer.precision={asked} on a CPU (it has no fp16 AMP there)"
        )
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)  # where bf16 is emulated: the warning
    if runs == "bf16-mixed":
        assert precision.precision_line(on_cpu, "cpu", asked=asked)[0] == logging.WARNING


def test_trainer_arguments_resolve_auto_and_leave_out_max_time(monkeypatch):
    from advnets.config import trainer_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX-BF16")
    cfg = compose("trainer.max_time=00:01:00:00")
    assert cfg.trainer.precision == "auto"
    args = trainer_arguments(cfg)
    assert args["precision"] == "bf16-mixed" and "max_time" not in args
    assert args.keys() == set(cfg.trainer) - {"max_time"}
    assert trainer_arguments(compose("model=conv", "dataset=cifar10"))["precision"] == "32-true"
    assert trainer_arguments(compose("experiment=figure1"))["precision"] == "32-true"
