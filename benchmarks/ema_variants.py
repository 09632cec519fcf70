"""Study tool: several averages of G kept side by side in one run, scored every epoch like val/ema_fid.

An average never changes training (D sees the raw G only), so one run can carry many and compare them
on the same G trajectory and the same noise. Each variant is advnets.ema.GeneratorEMA with its own decay
and ramp-up, and an optional start: until G update `start`, the variant is G itself; after it, the
average of the updates since (ramp-up counted from `start`), i.e. "average only the later part".

Used through the config's callbacks.extra, with benchmarks/ on the path:

    PYTHONPATH=benchmarks python src/train.py ... \
        'callbacks.extra=[{_target_: ema_variants.AverageVariants, variants: {d0.99: {decay: 0.99, rampup: 0.05}}}]'

After every validation it appends one line per variant to <run>/ema_variants.jsonl: epoch (1-based),
g_updates, FID, KID and classes covered on the val/* samples (quality.val_samples of the same noise as
val/fid and val/ema_fid, so the three differ by the weights only). Not saved in checkpoints: a variant
added on resume starts from G there (with a ramp-up it has forgotten nothing that mattered: its half-life
after n updates is at most r * n).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from advnets.ema import GeneratorEMA
from advnets.seeds import EVAL_SAMPLES


class AverageVariants(pl.Callback):
    def __init__(self, variants: dict):
        self.specs = {
            str(name): (float(v["decay"]), v.get("rampup"), int(v.get("start", 0))) for name, v in variants.items()
        }
        self.averages: dict[str, GeneratorEMA] = {}
        self._seen_updates = -1

    def on_fit_start(self, trainer, module) -> None:
        self.averages = {
            name: GeneratorEMA(module.generator, decay, rampup) for name, (decay, rampup, _) in self.specs.items()
        }
        self._seen_updates = module.g_updates
        self._offsets = {name: module.g_updates for name in self.specs}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = module.g_updates
        if n == self._seen_updates:
            return
        self._seen_updates = n
        for name, average in self.averages.items():
            start = max(self.specs[name][2], self._offsets[name])
            if n <= start:
                average.reset(module.generator)
            else:
                average.update(module.generator, n - start)

    def on_train_epoch_end(self, trainer, module) -> None:
        # The variants' weights at the epochs whose checkpoints are kept (callbacks.checkpoint.every_n_epochs),
        # so that `swap` below can put one in a checkpoint's EMA for the full protocol (src/eval.py).
        every = int(module.cfg.callbacks.checkpoint.every_n_epochs or 0)
        epoch = trainer.current_epoch + 1
        if self.averages and every and epoch % every == 0:
            folder = Path(trainer.default_root_dir) / "ema_variants"
            folder.mkdir(exist_ok=True)
            states = {name: average.generator.state_dict() for name, average in self.averages.items()}
            torch.save(states, folder / f"epoch{epoch - 1:04d}.pt")

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not self.averages:
            return
        quality = module.evaluation.quality.get("val")
        datamodule = trainer.datamodule
        if quality is None or datamodule is None:
            return
        quality.to(module.device)
        if not quality.has_real:
            quality.update_real(datamodule.splits["valid"])
        n = int(module.cfg.quality.val_samples)
        lines = []
        for name, average in self.averages.items():
            gen = module.sample_generator(EVAL_SAMPLES)
            net = average.generator
            was_training = net.training
            net.eval()
            samples = torch.cat([net(module.noise(min(2000, n - i), gen)) for i in range(0, n, 2000)])
            net.train(was_training)
            quality.update_fake(samples)
            result = quality.compute()
            quality.reset()
            lines.append(
                {
                    "variant": name,
                    "epoch": trainer.current_epoch + 1,
                    "g_updates": module.g_updates,
                    "fid": result.fid,
                    "kid": result.kid,
                    "classes_covered": result.classes_covered,
                    "class_kl": result.class_kl,
                }
            )
        with open(Path(trainer.default_root_dir) / "ema_variants.jsonl", "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


def swap(checkpoint: str, variants: str, name: str, out: str) -> None:
    """A copy of `checkpoint` whose EMA G is the variant `name` of `variants` (an ema_variants/epochNNNN.pt of
    the same run and epoch): src/eval.py's EMA row is then that variant's (its label keeps the run's own
    model.ema_* values; the folder name says which variant it is)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = torch.load(variants, map_location="cpu")[name]
    for key, value in state.items():
        ckpt["state_dict"][f"generator_ema.generator.{key}"] = value
    torch.save(ckpt, out)


def per_epoch(run: Path) -> dict[str, dict[int, tuple[float, int]]]:
    """generator -> epoch -> (val FID, classes covered): `raw` and `ema` (the run's own average, val/fid and
    val/ema_fid of its CSV logs) and each variant of its ema_variants.jsonl."""
    import csv

    found: dict[str, dict[int, tuple[float, int]]] = {"raw": {}, "ema": {}}
    for metrics in sorted(run.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        for row in csv.DictReader(metrics.open()):
            if row.get("val/fid") and row.get("val/ema_fid"):
                epoch = int(row["epoch"]) + 1
                found["raw"][epoch] = (float(row["val/fid"]), round(float(row["val/classes_covered"])))
                found["ema"][epoch] = (float(row["val/ema_fid"]), round(float(row["val/ema_classes_covered"])))
    if (run / "ema_variants.jsonl").is_file():
        for line in (run / "ema_variants.jsonl").open():
            d = json.loads(line)
            found.setdefault(d["variant"], {})[d["epoch"]] = (d["fid"], d["classes_covered"])
    return found


def summary(runs: list[Path], from_epoch: int = 12, covered_from: int = 20, at=(12, 20, 30, 40, 60)) -> str:
    """Per generator over the runs (seeds): val FID at some epochs (mean +- s.e.), the epochs from `from_epoch` on
    at which its FID is above the raw G's, and the runs in which it covers 10/10 digits at every epoch from
    `covered_from` on (issue 22's test of an average)."""
    import math
    import statistics

    data = [per_epoch(r) for r in runs]
    names = [n for n in data[0] if all(n in d for d in data)]
    head = "| generator | " + " | ".join(f"FID @{e}" for e in at) + f" | epochs >= {from_epoch} with FID above G's |"
    head += f" runs with 10/10 from epoch {covered_from} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in names:
        cells = []
        for e in at:
            v = [d[name][e][0] for d in data if e in d[name]]
            se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
            cells.append(f"{statistics.mean(v):.1f} ± {se:.1f}" if v else "-")
        above = total = covered = 0
        for d in data:
            epochs = [e for e in d[name] if e >= from_epoch and e in d["raw"]]
            total += len(epochs)
            # The CSV holds float32s: G's own FID read from there and from the JSON lines differs in the 7th digit.
            above += sum(d[name][e][0] > d["raw"][e][0] * (1 + 1e-6) for e in epochs)
            covered += all(c == 10 for e, (_, c) in d[name].items() if e >= covered_from)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {above} of {total} | {covered} of {len(data)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 6 and sys.argv[1] == "swap":
        swap(*sys.argv[2:])
    elif len(sys.argv) > 2 and sys.argv[1] == "summary":
        print(summary([Path(p) for p in sys.argv[2:]]))
    else:
        sys.exit(
            "usage: python benchmarks/ema_variants.py swap CHECKPOINT VARIANTS_PT NAME OUT_CKPT\n"
            "       python benchmarks/ema_variants.py summary RUN_DIR..."
        )
