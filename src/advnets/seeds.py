"""Seeds derived from integers: the same in every process, so ranks and resumed runs draw what they should."""

from __future__ import annotations

import hashlib

import torch

# The salts that keep a run's random streams apart: derive_seed(seed, rank, *salt) with one of these (or a
# (epoch, batch) pair: that batch's noise) draws numbers no other stream draws.
SAMPLES = -1  # GAN.sample() without a generator of its own (e.g. Figures 2 and 3)
EVAL_SAMPLES = -2  # the samples the per-epoch Parzen estimate and sample quality score
DROPOUT_MASKS = 7  # after (epoch, batch): the global generator that batch's dropout masks come from


def derive_seed(*parts: int) -> int:
    """A 62-bit seed from integers, the same in every process (unlike hash() of mixed tuples)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def seed_global_generator(seed: int, device: torch.device) -> None:
    """Seeds the global generator that ops on `device` draw from (dropout masks). On a CPU only the CPU's, to the
    state torch.manual_seed gives it: torch.manual_seed also seeds CUDA's, XPU's and MTIA's, and while they are not
    initialised it queues each seeding with a record of the caller's stack: 0.9 ms a call from the module's
    on_train_batch_start, every batch (1-2% of a step), measured."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
