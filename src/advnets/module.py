"""The GAN LightningModule: Algorithm 1 (k D-steps, then one G-step) or the official simultaneous update."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor

from advnets.ema import GeneratorEMA
from advnets.lightning_internals import logs_this_step
from advnets.losses import discriminator_loss, generator_loss
from advnets.metrics import build_evaluation
from advnets.nets import apply_max_col_norm, build_discriminator, build_generator
from advnets.nets.stages import init_from, load_generator_tail
from advnets.noise import draw_noise
from advnets.optim import anneal_factor, anneal_lr, apply_config, build_optimizer, start_epoch
from advnets.precision import bf16_matmuls, wants_fast_path
from advnets.seeds import DROPOUT_MASKS, SAMPLES, derive_seed, seed_global_generator
from advnets.stabilisers import build_stabilisers
from advnets.updates import attach as attach_compiled_updates

log = logging.getLogger(__name__)


class GAN(pl.LightningModule):
    """G and D trained against each other with manual optimisation.

    `config` is the whole resolved run config (a plain dict), saved in every checkpoint so that a
    checkpoint alone rebuilds the run (eval.py relies on this).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        # The W&B logger already gets the resolved config as the run config: don't log it twice.
        self.save_hyperparameters(logger=False)
        self.cfg = OmegaConf.create(config)
        self.automatic_optimization = False
        self.shape = tuple(self.cfg.dataset.shape)
        self.k = int(self.cfg.k)
        self.schedule = self.cfg.schedule
        self.generator = build_generator(self.cfg.model, self.shape)
        # TFD stage 2: stage 1's generator layers, loaded when a fresh fit starts (on_fit_start), so that a
        # stage-2 checkpoint loads, evaluates and resumes without the stage-1 file.
        self.init_from = init_from(self.cfg.model.generator)
        self.discriminator = build_discriminator(self.cfg.model, self.shape)
        # Optional (None: off): the averaged G, sampled from beside G; R1 on real data; noise on D's inputs.
        ema_decay = self.cfg.model.get("ema_decay")
        self.generator_ema = (
            GeneratorEMA(self.generator, float(ema_decay), self.cfg.model.get("ema_rampup")) if ema_decay else None
        )
        self.r1, self.instance_noise = build_stabilisers(self.cfg.get("stabilisers") or {})
        compile_ = self.cfg.model.get("compile")
        if compile_:
            # In place (nn.Module.compile): parameter names, and so checkpoints, stay as they are. The G loss's
            # gradient keeps D's graph (retain_graph: the simultaneous update reuses it), which compiled
            # backwards with donated buffers refuse. A string is torch.compile's mode (e.g. reduce-overhead:
            # CUDA graphs).
            torch._functorch.config.donated_buffer = False
            mode = compile_ if isinstance(compile_, str) else None
            self.generator.compile(mode=mode)
            self.discriminator.compile(mode=mode)
        # The grid of samples logged every epoch comes from this z; a buffer, so checkpoints keep it.
        fixed = torch.Generator().manual_seed(int(self.cfg.seed))
        self.register_buffer("fixed_z", self.noise(100, fixed, device="cpu"))
        self.d_updates = 0
        self.g_updates = 0
        # The record of the latest training step, which the train/* logs, the callbacks (advnets.guards) and the
        # progress lines read: d_loss, d_real and d_fake (mean D(x), D(G(z)) over the batch) after each D update,
        # g_loss after each G update, r1_penalty when R1 is on, g_grad_norm at each G update; detached tensors.
        self.step_record: dict[str, Tensor] = {}
        # Parzen and sample grids for images, D* and the JSD for 1-D data: dataset.evaluation says which.
        self.evaluation = build_evaluation(self.cfg, has_ema=self.generator_ema is not None)
        self._noise_gen: torch.Generator | None = None
        self.fast_path = False  # set from the Trainer's precision in setup()
        self._fit_start = time.monotonic()
        self._seconds_before = 0.0  # training_seconds() of the checkpoint resumed from

    # --- noise ---------------------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n noise vectors drawn where `generator` lives (default: this batch's training generator), then moved to
        `device` (default: the module's): a CPU generator draws the same numbers whatever the device trains."""
        generator = generator if generator is not None else self._noise_gen
        z = draw_noise(n, int(self.cfg.model.noise_dim), self.cfg.model.noise, generator, generator.device)
        return z.to(device if device is not None else self.device)

    def seeded_generator(self, *salt: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator on `device` (default: the module's) seeded from (run seed, rank, *salt): every rank draws its own
        noise and a resumed run draws exactly what the uninterrupted run drew. Training noise comes from the
        device's generator (drawn where it is used); evaluation and figures pass device="cpu" (sample_generator)."""
        device = self.device if device is None else device
        return torch.Generator(device=device).manual_seed(derive_seed(int(self.cfg.seed), self.global_rank, *salt))

    def sample_generator(self, *salt: int) -> torch.Generator:
        """The CPU generator evaluation noise is drawn from: the samples scored are the same on every device (a CUDA
        generator draws other numbers than the CPU's, and other ones on other GPU models)."""
        return self.seeded_generator(*salt, device="cpu")

    def generator_for(self, which: str) -> torch.nn.Module:
        """`raw`: G as trained; `ema`: the average of its weights (model.ema_decay)."""
        if which == "raw":
            return self.generator
        if which == "ema" and self.generator_ema is not None:
            return self.generator_ema.generator
        raise ValueError(f"no {which!r} generator in this run (model.ema_decay={self.cfg.model.get('ema_decay')})")

    @property
    def generators(self) -> list[str]:
        """The generators this run has: `raw`, and `ema` when model.ema_decay is set."""
        return ["raw"] + (["ema"] if self.generator_ema is not None else [])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch: int = 2000, which: str = "raw") -> Tensor:
        """n samples from G, or from its average (`which="ema"`), drawn in chunks to bound memory. `generator`: a CPU
        one (default: sample_generator(SAMPLES)), so that the samples do not depend on the device."""
        gen = generator if generator is not None else self.sample_generator(SAMPLES)
        if gen.device.type != "cpu":
            raise ValueError(
                f"GAN.sample draws from a CPU generator (the same samples on every device), got {gen.device}"
            )
        net = self.generator_for(which)
        return torch.cat([net(self.noise(min(batch, n - i), gen)) for i in range(0, n, batch)])

    # --- training ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # trainer.precision=bf16-mixed on a CPU: the training steps take the fast path (advnets.precision), evaluation
        # fp32; on a GPU, Lightning's autocast.
        self.fast_path = wants_fast_path(self.trainer.precision, self.trainer.strategy.root_device)
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and dm is not None and self.d_updates == 0:
            # Checkpoint weights, if any, are loaded after this and overwrite it.
            self.generator.init_output_bias(dm.pixel_mean().to(self.generator.output_layer.bias.device))

    def on_fit_start(self) -> None:
        # Lightning sets trainer.ckpt_path when it restores a checkpoint, after `setup` and before this hook: only
        # here can a fresh fit be told from a resume, whose restored weights and EMA must stay as they are.
        if self.trainer.ckpt_path is None:
            if self.init_from:  # TFD stage 2: stage 1's layers (a resume does not need the stage-1 file)
                load_generator_tail(self.generator, self.init_from)
            if self.generator_ema is not None:
                self.generator_ema.reset(self.generator)

    def configure_optimizers(self):
        opt = self.cfg.optimizer
        d_opt = build_optimizer(self.discriminator.parameters(), opt, opt.get("d_lr"))
        g_opt = build_optimizer(self.generator.parameters(), opt, opt.get("g_lr"))
        attach_compiled_updates(self, d_opt, g_opt)  # model.compile_updates: on the fast path, else nothing
        return [d_opt, g_opt]

    def on_train_start(self) -> None:
        self._fit_start = time.monotonic()
        if self.trainer.ckpt_path is not None:
            # The restored optimisers carry the checkpoint's settings: this command's optimizer.* values win.
            opt = self.cfg.optimizer
            for net, wrapper, lr in (
                ("D", self.optimizers()[0], opt.get("d_lr")),
                ("G", self.optimizers()[1], opt.get("g_lr")),
            ):
                changed = apply_config(wrapper.optimizer, opt, lr)
                if changed:
                    log.info("Resumed %s optimiser with this command's settings: %s", net, ", ".join(changed))

    def on_train_epoch_start(self) -> None:
        for opt in self.optimizers():
            start_epoch(opt.optimizer, self.cfg.optimizer, self.current_epoch + 1)

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        # The batch's noise (and instance noise) and its dropout masks (the global generator) are drawn from
        # seeds of (seed, rank, epoch, batch): every rank draws its own, and a run resumed at any batch,
        # even mid-epoch, draws exactly what the uninterrupted run drew there.
        epoch = self.current_epoch + 1
        self._noise_gen = self.seeded_generator(epoch, batch_idx)
        seed_global_generator(
            derive_seed(int(self.cfg.seed), self.global_rank, epoch, batch_idx, DROPOUT_MASKS), self.device
        )
        anneal_epochs = self.cfg.optimizer.get("anneal_epochs")
        if anneal_epochs:  # a function of the position in training alone, so a resume anneals as the run would
            factor = anneal_factor(
                self.current_epoch + batch_idx / self.trainer.num_training_batches,
                int(self.trainer.max_epochs),
                int(anneal_epochs),
            )
            for opt in self.optimizers():
                anneal_lr(opt.optimizer, factor)

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        d_opt, g_opt = self.optimizers()
        with bf16_matmuls(self.fast_path):
            if self.schedule == "simultaneous":
                self._simultaneous_step(batch, d_opt, g_opt)
            else:
                self._discriminator_step(batch, d_opt)
                if self.d_updates % self.k == 0:
                    self._generator_step(len(batch), g_opt)
        # Only build the metrics dict on the steps Lightning will actually write (log_every_n_steps).
        if logs_this_step(self):
            self._log_train()

    def _discriminator_step(self, real: Tensor, d_opt) -> None:
        """One D ascent step on this fresh real minibatch and freshly drawn noise."""
        with torch.no_grad():
            fake = self.generator(self.noise(len(real)))
        real_logits, fake_logits, d_loss = self._discriminator_loss(real, fake)
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        self._after_update(self.discriminator)
        self.d_updates += 1
        self.step_record.update(
            d_loss=d_loss.detach(),
            d_real=torch.sigmoid(real_logits.detach()).mean(),
            d_fake=torch.sigmoid(fake_logits.detach()).mean(),
        )

    def _discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """D's logits on real and generated data and its loss, with the stabilisers that are on."""
        real, fake = self._d_input(real), self._d_input(fake)
        if self.r1 is not None and self.r1.due(self.d_updates):
            # D called without torch.compile (model.compile): R1 differentiates D's input gradient again, which
            # a compiled forward (AOTAutograd) cannot. `_call_impl` is nn.Module's call as it is before
            # nn.Module.compile, forward hooks included.
            real_logits, penalty = self.r1.logits_and_penalty(self.discriminator._call_impl, real, self.g_updates)
            self.step_record["r1_penalty"] = penalty.detach()
        else:
            real_logits, penalty = self.discriminator(real), 0.0
        fake_logits = self.discriminator(fake)
        loss = discriminator_loss(
            real_logits, fake_logits, float(self.cfg.loss.d_scale), float(self.cfg.loss.get("real_label", 1.0))
        )
        return real_logits, fake_logits, loss + penalty

    def _d_input(self, x: Tensor) -> Tensor:
        """What D sees of a batch: the batch, or the batch plus annealed instance noise."""
        if self.instance_noise is None:
            return x
        return self.instance_noise(x, self.g_updates, self._noise_gen)

    def _generator_step(self, m: int, g_opt) -> None:
        """One G step on m freshly drawn noise vectors."""
        fake = self.generator(self.noise(m))
        g_loss, fake_grad = self._generator_loss_and_grad(fake)
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(fake, fake_grad)
        self._measure_generator_gradient()
        g_opt.step()
        self._after_update(self.generator)
        self.g_updates += 1
        self._update_ema()
        self.step_record["g_loss"] = g_loss.detach()

    def _generator_loss_and_grad(self, fake: Tensor, fake_logits: Tensor | None = None, fake_in: Tensor | None = None):
        """G's loss and its gradient w.r.t. the samples, without computing D's weight gradients.

        The samples enter D as a separate leaf, so backpropagating G's loss through D only reaches
        the samples; `manual_backward(fake, grad)` then carries it into G. D's parameters never
        receive G's gradient (no toggling needed), and D's weight gradients are not computed.
        """
        if fake_logits is None:
            fake_in = fake.detach().requires_grad_()
            fake_logits = self.discriminator(self._d_input(fake_in))
        g_loss = generator_loss(fake_logits, self.cfg.loss.generator)
        (grad,) = torch.autograd.grad(g_loss, fake_in, retain_graph=True)
        return g_loss, grad

    def _simultaneous_step(self, real: Tensor, d_opt, g_opt) -> None:
        """The official code: one forward pass, both gradients at the same parameters and dropout masks."""
        fake = self.generator(self.noise(len(real)))
        fake_in = fake.detach().requires_grad_()
        real_logits, fake_logits, d_loss = self._discriminator_loss(real, fake_in)
        g_loss, fake_grad = self._generator_loss_and_grad(fake, fake_logits, fake_in)
        d_opt.zero_grad(set_to_none=True)
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        self.manual_backward(fake, fake_grad)
        self._measure_generator_gradient()
        d_opt.step()
        g_opt.step()
        self._after_update(self.discriminator)
        self._after_update(self.generator)
        self.d_updates += 1
        self.g_updates += 1
        self._update_ema()
        self.step_record.update(
            d_loss=d_loss.detach(),
            g_loss=g_loss.detach(),
            d_real=torch.sigmoid(real_logits.detach()).mean(),
            d_fake=torch.sigmoid(fake_logits.detach()).mean(),
        )

    def _measure_generator_gradient(self) -> None:
        """train/g_grad_norm, the norm of G's gradient at its latest update (like train/g_loss): it shows
        log(1 - D(G(z))) saturating early in training, the paper's reason for the non-saturating loss
        (docs/theory.md). Measured at every G update: Lightning writes the last value of a step metric into
        every later row, so one measured on logged steps only would show, on a logged step without a G update
        (k > 1), the norm of a G update many steps back."""
        grads = [p.grad for p in self.generator.parameters() if p.grad is not None]
        self.step_record["g_grad_norm"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _after_update(self, net: torch.nn.Module) -> None:
        if self.cfg.model.get("max_col_norm"):
            apply_max_col_norm(net, float(self.cfg.model.max_col_norm))

    def _update_ema(self) -> None:
        if self.generator_ema is not None:
            self.generator_ema.update(self.generator, self.g_updates)

    def _train_metrics(self) -> dict[str, Any]:
        group = self.optimizers()[0].optimizer.param_groups[0]
        momentum = group["momentum"] if "momentum" in group else group["betas"][0]
        metrics = {f"train/{k}": v for k, v in self.step_record.items()}
        metrics.update(
            {
                "train/d_updates": float(self.d_updates),
                "train/g_updates": float(self.g_updates),
                "train/lr": float(group["lr"]),
                "train/momentum": float(momentum),
                "train/elapsed_s": self.training_seconds(),
            }
        )
        return metrics

    def training_seconds(self) -> float:
        """Wall time spent fitting, over this run and the runs it resumed."""
        return self._seconds_before + time.monotonic() - self._fit_start

    def _log_train(self) -> None:
        self.log_dict(self._train_metrics(), on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        # The epoch's last values, whatever log_every_n_steps is: short epochs are logged too. Under DDP,
        # the mean over ranks (the same for the counters, lr and momentum; the global batch's D outputs).
        self.log_dict(self._train_metrics(), on_step=False, on_epoch=True, sync_dist=True)
        self.evaluation.draw(self)

    # --- evaluation: what the data set's config measures and draws (advnets.metrics.build_evaluation) -----------
    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation.update(self, batch, dataloader_idx)

    def test_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation.update(self, batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.evaluation.reset()
            return
        # Every rank computes the same results from gathered states: the mean over ranks is that result.
        self.log_dict(self.evaluation.compute(self, "val"), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.evaluation.compute(self, "test"), sync_dist=True)

    def on_train_end(self) -> None:
        self.evaluation.finish(self)

    # --- checkpoints ---------------------------------------------------------------------------
    # Resuming restores the weights (G's EMA too), both optimisers, Lightning's loop counters and the
    # training loader's position in the epoch (data/batches.py); the noise needs no state (see
    # on_train_batch_start). These counters are the rest.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["counters"] = {"d_updates": self.d_updates, "g_updates": self.g_updates}
        checkpoint["training_seconds"] = self.training_seconds()
        # Lazy R1 logs the latest penalty taken until its next one: kept, so a resumed run logs what the run
        # never stopped logs.
        if "r1_penalty" in self.step_record:
            checkpoint["r1_penalty"] = self.step_record["r1_penalty"].detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counters = checkpoint.get("counters", {})
        self.d_updates = int(counters.get("d_updates", 0))
        self.g_updates = int(counters.get("g_updates", 0))
        self._seconds_before = float(checkpoint.get("training_seconds", 0.0))
        if "r1_penalty" in checkpoint:
            self.step_record["r1_penalty"] = checkpoint["r1_penalty"]
