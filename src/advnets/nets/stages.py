"""TFD stage 2: new layers in front of a stage-1 generator whose trained layers are loaded from its checkpoint.

The stage-2 config lists the new layers first, then stage 1's: the last len(stage-1 layers) linear
layers of the new generator (the output layer included) take the checkpoint's values, the new front
layers keep their fresh init, and the output bias is not re-initialised from the data marginals.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from advnets.checkpoints import load_checkpoint
from advnets.errors import UserError


def init_from(generator_cfg) -> str | None:
    """`generator.init_from`: the stage-1 checkpoint, required where the config marks it mandatory (???)."""
    from omegaconf import DictConfig, OmegaConf

    missing = (
        isinstance(generator_cfg, DictConfig)
        and "init_from" in generator_cfg.keys()  # `in` skips ???
        and OmegaConf.is_missing(generator_cfg, "init_from")
    )
    value = None if missing else generator_cfg.get("init_from")
    if missing or value == "???":
        raise UserError(
            "model.generator.init_from must name a stage-1 checkpoint: "
            "model.generator.init_from=<stage 1 run>/checkpoints/last.ckpt"
        )
    return value or None


def load_generator_tail(generator: nn.Module, ckpt_path: str) -> int:
    """Copy the checkpoint's generator linear layers into the last ones of `generator`; returns how many."""
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise UserError(f"model.generator.init_from: stage-1 checkpoint not found: {path}")
    state = load_checkpoint(path)["state_dict"]  # weights_only: never runs pickled code
    prefix = "generator.net."
    old = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
    linears = [m for m in generator.net if isinstance(m, nn.Linear)]
    old_linears = [i for i in old if f"{prefix}{i}.weight" in state]
    if not old_linears or len(old_linears) > len(linears):
        raise UserError(f"{path} holds {len(old_linears)} generator layers; this generator has {len(linears)}")
    with torch.no_grad():
        for layer, i in zip(linears[len(linears) - len(old_linears) :], old_linears):
            weight, bias = state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"]
            if weight.shape != layer.weight.shape:
                raise UserError(
                    f"{path}: generator layer {i} has shape {tuple(weight.shape)}, the stage-2 "
                    f"generator expects {tuple(layer.weight.shape)}"
                )
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    generator.output_bias_from_marginals = False  # the loaded output bias stays
    return len(old_linears)
