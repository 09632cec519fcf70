"""What a GPU would do differently, checked on the CPU: fp16 and CUDA graphs refused, the fast path for CPUs only,
32-true in full fp32 and the precision line saying whether TF32 is on, evaluation noise that does not depend on
the device. (What only a GPU can show is benchmarks/device_check.sh's: docs/speed.md.)"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from omegaconf import OmegaConf

from advnets import precision
from advnets.config import check_config
from advnets.errors import UserError
from advnets.module import GAN
from advnets.seeds import EVAL_SAMPLES, SAMPLES, derive_seed
from conftest import compose

TINY = [
    "model.generator.layers=[{units: 16, activation: relu, irange: 0.05}]",
    "model.discriminator.layers=[{units: 8, pieces: 2, irange: 0.05}]",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.accelerator=gpu", "trainer.precision=16-mixed"],
        ["trainer.accelerator=gpu", "trainer.precision=16"],  # Lightning's alias of 16-mixed
        ["trainer=ddp", "trainer.precision=16-mixed"],
        ["trainer.accelerator=cpu", "trainer.precision=16-true"],  # fp16 weights: fp16 anywhere
    ],
)
def test_fp16_is_refused_where_it_would_train_in_fp16(overrides):
    """Refused by the config check, before anything is built (and before the check that the GPU exists: the same
    line on a machine with or without one)."""
    with pytest.raises(UserError) as e:
        check_config(compose(*overrides))
    assert str(e.value).startswith(f"{overrides[-1]} trains in fp16 (trainer.accelerator=")
    assert str(e.value).endswith("use trainer.precision=bf16-mixed or 32-true") and "\n" not in str(e.value)


def test_fp16_amp_is_refused_on_a_gpu_chosen_by_auto_and_accepted_on_a_cpu(monkeypatch):
    """trainer.accelerator=auto is a GPU where there is one; on a CPU 16-mixed runs as bf16-mixed and is accepted."""
    check_config(compose("trainer.precision=16-mixed", "trainer.accelerator=cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_config(compose("trainer.precision=16-mixed"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match=r"^trainer.precision=16-mixed trains in fp16 \(trainer.accelerator=auto\)"):
        check_config(compose("trainer.precision=16-mixed"))


def test_an_unknown_precision_is_one_line():
    with pytest.raises(UserError, match=r"^trainer.precision=17: "):
        check_config(compose("trainer.precision=17"))


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_compile_modes_are_refused(mode):
    with pytest.raises(UserError, match=rf"^model.compile={mode} captures CUDA graphs, .*model.compile=true"):
        check_config(compose(f"model.compile={mode}"))
    check_config(compose("model.compile=max-autotune-no-cudagraphs"))  # other modes as before


def test_the_fast_path_is_for_cpus_and_bf16_mixed_on_a_gpu_is_autocast():
    assert precision.wants_fast_path("bf16-mixed", torch.device("cpu"))
    assert not precision.wants_fast_path("bf16-mixed", torch.device("cuda", 0))
    assert not precision.wants_fast_path("32-true", torch.device("cpu"))


@pytest.fixture
def fp32_switches():
    """torch's fp32 precision switches as they were, restored after the test."""
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    before = [s.fp32_precision for s in switches]
    yield switches
    for s, value in zip(switches, before):
        s.fp32_precision = value


def test_32_true_is_fp32_on_gpus_and_the_precision_line_says_whether_tf32_is_on(fp32_switches):
    matmul, conv, _ = fp32_switches
    conv.fp32_precision = "tf32"  # cuDNN's default: TF32 convolutions on Ampere and later
    level, line = precision.precision_line("32-true", "gpu")
    assert (level, line) == (logging.INFO, "precision: 32-true; TF32 on: fp32 matmuls and convolutions may run in TF32")
    precision.fp32_means_fp32()  # what train.py and eval.py do first
    assert all(s.fp32_precision == "ieee" for s in fp32_switches) and not precision.tf32_on()
    assert precision.precision_line("32-true", "gpu") == (logging.INFO, "precision: 32-true; TF32 off")
    assert precision.precision_line("bf16-mixed", "gpu") == (
        logging.INFO,
        "precision: bf16-mixed (Lightning's autocast: bf16 matmuls on fp32 weights; the fast path is for CPUs); TF32 off",
    )
    assert "TF32" not in precision.precision_line("32-true", "cpu")[1]  # a CPU has none


def uniform_noise(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """model.noise=uniform as it was drawn before evaluation noise moved to CPU generators, written out."""
    return (torch.rand(n, dim, generator=generator) * 2 - 1) * math.sqrt(3.0)


def test_evaluation_samples_on_the_cpu_are_the_draws_they_were():
    """The samples the per-epoch estimates (EVAL_SAMPLES) and the figures (SAMPLES) score, and eval.py's (a generator
    seeded with `seed`), on the CPU: G of the noise the CPU generator of the same seed drew before, so no CPU number
    of docs/results.md changes."""
    module = GAN(OmegaConf.to_container(compose(*TINY, "seed=3", "model.ema_decay=0.5"), resolve=True))
    seed = int(module.cfg.seed)
    for salt in (EVAL_SAMPLES, SAMPLES):
        expected = module.generator(uniform_noise(7, 100, torch.Generator().manual_seed(derive_seed(seed, 0, salt))))
        gen = module.sample_generator(salt) if salt == EVAL_SAMPLES else None
        assert torch.equal(module.sample(7, gen), expected)
    for which in module.generators:
        expected = module.generator_for(which)(uniform_noise(7, 100, torch.Generator().manual_seed(seed)))
        assert torch.equal(module.sample(7, torch.Generator().manual_seed(seed), which=which), expected)


def test_evaluation_noise_is_drawn_by_cpu_generators_on_any_device(monkeypatch):
    """On a module that is not on the CPU (the meta device stands in for a GPU here: torch has no generator for it,
    as it has another for CUDA), the evaluation's and the figures' noise is drawn by CPU generators and moved;
    a generator of the device's is refused by GAN.sample."""
    import advnets.module

    drawn_by = []

    def draw_noise(n, dim, kind, generator, device):
        drawn_by.append((generator.device.type, torch.device(device).type))
        return real_draw_noise(n, dim, kind, generator, device)

    real_draw_noise = advnets.module.draw_noise
    monkeypatch.setattr(advnets.module, "draw_noise", draw_noise)
    module = GAN(OmegaConf.to_container(compose(*TINY, "model.ema_decay=0.5"), resolve=True)).to("meta")
    assert module.device.type == "meta"
    for which in module.generators:
        x = module.sample(5, module.sample_generator(EVAL_SAMPLES), batch=2, which=which)  # the per-epoch estimates
        assert x.device.type == "meta" and x.shape == (5, 1, 28, 28)
    module.sample(5)  # Figures 2 and 3
    module.noise(5, torch.Generator().manual_seed(0))  # eval.py's and Figure 3's
    assert drawn_by and set(drawn_by) == {("cpu", "cpu")}
    with pytest.raises(ValueError, match="GAN.sample draws from a CPU generator"):
        module.sample(5, CudaGeneratorStandIn())


class CudaGeneratorStandIn:
    """What GAN.sample reads of a CUDA generator, which cannot be made on this machine."""

    device = torch.device("cuda", 0)
