"""The fast path's compiled updates (model.compile_updates, advnets/updates.py) against the eager updates they
replace, on a real Trainer and the real optimisers: every update of a fit over an epoch boundary, D's without the
average and G's with it, replayed eagerly from the same weights, gradients and state; the casts it leaves in the
cache; and a resume in the middle of an epoch."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets import precision
from advnets.data import EpochBatchSampler, TensorBatches
from advnets.module import GAN
from conftest import bare_trainer, compose
from test_fast_path import NETS

SMALL = [
    *NETS,
    # A short horizon, so that the average moves visibly in a few updates.
    "model.ema_decay=0.9",
    "model.ema_rampup=0.5",
    "model.compile_updates=true",
]
BATCH, BATCHES, EPOCHS = 8, 3, 2
# Inductor contracts a * b + c into one fused multiply-add and divides by multiplying by a reciprocal, so each
# value can differ from the eager update's in its last bits: at most this many float32 ulps of the largest
# magnitude among the value before and after the update and the update's own terms (measured: 0-2). The terms
# count where they outweigh the weight: the momentum's w + (mu v - lr g) with mu v and lr g larger than w and
# cancelling moves w by their rounding, not by w's (measured before they counted: 11 ulps of a weight of 5e-6).
ULPS = 8


def ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.finfo(torch.float32).eps * x.abs().clamp_min(torch.finfo(torch.float32).tiny)


def assert_within_ulps(what: str, got: torch.Tensor, expected: torch.Tensor, before: torch.Tensor, *terms) -> None:
    scale = torch.maximum(ulp(expected), ulp(before))
    for term in terms:
        scale = torch.maximum(scale, ulp(term))
    worst = float(((got - expected).abs() / scale).max())
    assert worst <= ULPS, f"{what}: {worst:.1f} ulps from the eager update"


class UpdateRecorder(pl.Callback):
    """Around each optimiser step: the net's weights, gradients and optimiser state before, the same after, and
    G's average before and after."""

    def __init__(self):
        self.steps = []

    def on_train_start(self, trainer, module):
        nets = {"D": module.discriminator, "G": module.generator}
        for name, opt in zip("DG", trainer.optimizers):

            def pre(o, args, kwargs, name=name):
                self._before = self.snapshot(module, nets[name], o)

            def post(o, args, kwargs, name=name):
                self.steps.append((name, trainer.current_epoch + 1, self._before, self.snapshot(module, nets[name], o)))

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)

    @staticmethod
    def snapshot(module, net, opt):
        return {
            "params": [p.detach().clone() for p in net.parameters()],
            "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
            "state": copy.deepcopy(opt.state_dict()),
            "average": [p.detach().clone() for p in module.generator_ema.generator.parameters()],
            "g_updates": module.g_updates,
        }


class SaveAt(pl.Callback):
    """A checkpoint at the end of batch `batch` (1-based) of epoch `epoch`, where a preemption saves one
    (advnets.guards.PreemptionHandler); the fit goes on."""

    def __init__(self, path, epoch: int, batch: int):
        self.path, self.epoch, self.batch = path, epoch, batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (trainer.current_epoch + 1, batch_idx + 1) == (self.epoch, self.batch):
            trainer.save_checkpoint(self.path)


def fit(root, optimizer: str, ckpt_path=None, callbacks=()):
    cfg = compose(*SMALL, f"optimizer={optimizer}", output_dir=root)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    recorder = UpdateRecorder()
    x = torch.rand(BATCH * BATCHES, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    trainer = bare_trainer(root, max_epochs=EPOCHS, precision="bf16-mixed", callbacks=[recorder, *callbacks])
    trainer.fit(
        module,
        train_dataloaders=TensorBatches(x, EpochBatchSampler(len(x), BATCH, seed=0, shuffle=True)),
        ckpt_path=ckpt_path,
    )
    return trainer, recorder


def eager_step(optimizer: str, cfg, net_name: str, before: dict):
    """The eager update of the same optimiser class from `before`: (weights, state) after it."""
    from advnets.optim import build_optimizer

    params = [torch.nn.Parameter(p.clone()) for p in before["params"]]
    for p, g in zip(params, before["grads"]):
        p.grad = g
    opt_cfg = cfg.optimizer
    opt = build_optimizer(params, opt_cfg, opt_cfg.get("d_lr" if net_name == "D" else "g_lr"))
    opt.load_state_dict(copy.deepcopy(before["state"]))
    opt.step()
    return [p.detach() for p in params], opt.state_dict()


@pytest.fixture(scope="module", params=["momentum", "adam"])
def compiled_fit(request, tmp_path_factory):
    trainer, recorder = fit(tmp_path_factory.mktemp(f"compiled_{request.param}"), request.param)
    return request.param, trainer, recorder


@pytest.mark.slow
def test_every_compiled_update_is_the_eager_update_within_a_few_ulps(compiled_fit):
    """Both nets' updates of a 2-epoch fit (D's alone, G's with its average) against the eager optimiser's step
    from the same weights, gradients and state: weights, velocities or moments within ULPS, Adam's step counts and
    the momentum's update counts equal; and G's average where beta_n puts it."""
    optimizer, trainer, recorder = compiled_fit
    module = trainer.lightning_module
    assert all(opt.compiled_update is not None and not opt.compiled_update.eager for opt in trainer.optimizers)
    assert [(net, epoch) for net, epoch, _, _ in recorder.steps] == [
        (net, e) for e in range(1, EPOCHS + 1) for _ in range(BATCHES) for net in "DG"
    ]
    for i, (net, epoch, before, after) in enumerate(recorder.steps):
        weights, state = eager_step(optimizer, module.cfg, net, before)
        lr = before["state"]["param_groups"][0]["lr"]
        for j, (p_got, p_want, p_before) in enumerate(zip(after["params"], weights, before["params"])):
            assert not torch.equal(p_got, p_before), (i, net)  # the update moved every tensor
            # The update's terms: lr g, and the momentum's velocity before it (times mu < 1).
            terms = [lr * before["grads"][j], before["state"]["state"].get(j, {}).get("velocity", p_before)]
            assert_within_ulps(f"step {i} ({net}, epoch {epoch}) weights", p_got, p_want, p_before, *terms)
        got, want = after["state"], state
        assert got["param_groups"] == want["param_groups"], (i, net)
        for k, s in want["state"].items():
            for key, value in s.items():
                if key == "step":
                    assert torch.equal(got["state"][k][key], value)
                else:
                    assert_within_ulps(
                        f"step {i} {net} {key}",
                        got["state"][k][key],
                        value,
                        before["state"]["state"].get(k, {}).get(key, value),
                    )
        if net == "G":
            n = after["g_updates"] + 1  # the module counts the update once its step is done
            weight = module.generator_ema.weight(n)
            for a_got, a_before, p_new in zip(after["average"], before["average"], after["params"]):
                assert_within_ulps(f"step {i} average", a_got, torch.lerp(a_before, p_new, weight), a_before)
                assert not torch.equal(a_got, a_before)
        else:
            assert all(torch.equal(a, b) for a, b in zip(after["average"], before["average"]))  # D's step: untouched


@pytest.mark.slow
def test_the_compiled_update_leaves_each_new_weights_cast_in_the_cache(compiled_fit):
    """After the fit, each layer's cached bf16 cast is that of its current weights, keyed on their current value,
    and differentiable into them: the next forward pass casts nothing."""
    _, trainer, _ = compiled_fit
    module = trainer.lightning_module
    linears = [m for net in (module.generator, module.discriminator) for m in net.modules() if hasattr(m, "weight")]
    assert linears
    for layer in linears:
        for name in ("weight", "bias"):
            param = getattr(layer, name)
            key, cast = precision._casts[layer][name]
            assert key == (param._version, param.data_ptr())
            assert torch.equal(cast, param.detach().to(torch.bfloat16))
            (grad,) = torch.autograd.grad(cast.float().sum(), param)
            assert torch.equal(grad, torch.ones_like(param))
            with precision.bf16_matmuls():
                assert precision.cast(layer, name) is cast


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_compiled_updates_resume_bit_for_bit_in_the_middle_of_an_epoch(tmp_path, optimizer):
    """Checkpointed at the end of batch 2 of epoch 2 and resumed from there: the same weights, average, casts and
    optimiser state as the fit that went on, bit for bit."""
    straight, _ = fit(tmp_path / "straight", optimizer, callbacks=[SaveAt(tmp_path / "mid.ckpt", 2, 2)])
    ckpt = torch.load(tmp_path / "mid.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["counters"] == {"d_updates": BATCHES + 2, "g_updates": BATCHES + 2}
    resumed, recorder = fit(tmp_path / "resumed", optimizer, ckpt_path=tmp_path / "mid.ckpt")
    assert [(net, epoch) for net, epoch, _, _ in recorder.steps] == [("D", 2), ("G", 2)] * (BATCHES - 2)
    a, b = straight.lightning_module, resumed.lightning_module
    assert (b.d_updates, b.g_updates) == (a.d_updates, a.g_updates) == (EPOCHS * BATCHES, EPOCHS * BATCHES)
    assert b.optimizers()[0].optimizer.compiled_update is not None
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    for opt_a, opt_b in zip(straight.optimizers, resumed.optimizers):
        assert opt_a.state_dict()["param_groups"] == opt_b.state_dict()["param_groups"]
        for s_a, s_b in zip(opt_a.state.values(), opt_b.state.values()):
            for name, value in s_a.items():
                assert torch.equal(value, s_b[name]), name
    layer = b.generator.net[0]
    assert torch.equal(precision._casts[layer]["weight"][1], a.generator.net[0].weight.detach().to(torch.bfloat16))


def test_compile_updates_is_eager_off_the_fast_path_and_with_max_col_norm(tmp_path, caplog):
    import logging

    from advnets.updates import attach

    for overrides, why in (
        (["trainer.precision=32-true"], "not on the fast path"),
        (["model.max_col_norm=1.0"], "model.max_col_norm rescales the weights after it"),
    ):
        cfg = compose(*SMALL, *overrides, output_dir=tmp_path)
        module = GAN(OmegaConf.to_container(cfg, resolve=True))
        module.fast_path = "32-true" not in overrides[0]
        d_opt, g_opt = (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1) for _ in range(2))
        with caplog.at_level(logging.INFO, logger="advnets.updates"):
            attach(module, d_opt, g_opt)
        assert not hasattr(d_opt, "compiled_update") and not hasattr(g_opt, "compiled_update")
        assert f"model.compile_updates: the eager update is used ({why})" in caplog.text
