#!/usr/bin/env bash
# What only a GPU can show, in three parts of at most 8 minutes each (a borrowed GPU has about 15 minutes in all,
# its start included), most important first; each figure is printed as soon as it is measured:
#
#   bash benchmarks/device_check.sh --prepare       # here, with the package registry: wheels + MNIST into
#                                                   # benchmarks/device/ (git-ignored, about 12 MiB)
#   bash benchmarks/device_check.sh correctness     # (a) the GPU-only tests, the refusals, a short fit of the
#                                                   #     default, a resume of it, its eval and eval's samples
#                                                   #     against the CPU's (about 5 minutes)
#   bash benchmarks/device_check.sh speed           # (b) D+G updates/s and samples/s of the default at batch 100
#                                                   #     and 1000 in fp32 and bf16-mixed, the step-cost rows, the
#                                                   #     plain loops, several seeds in one process against
#                                                   #     one process a seed (about 6 minutes)
#   bash benchmarks/device_check.sh ddp             # (c) a DDP fit on every GPU, where there are several
#   bash benchmarks/device_check.sh <part> --smoke  # the same steps on this CPU, tiny (checks the script)
#
# The GPU machine has PyTorch, Lightning, torchvision and torchmetrics but no hydra-core, omegaconf or
# wandb, and no package registry: the wheels in benchmarks/device/wheels are installed from there
# (nothing is downloaded), and every run logs to CSV only. docs/speed.md says which item each part shows.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE_DIR=benchmarks/device
WHEELS=$DEVICE_DIR/wheels
DATA=$DEVICE_DIR/data
OUT=${OUT:-$DEVICE_DIR/out}
PY=${PYTHON:-python}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p "$WHEELS" "$DATA/MNIST/raw"
    # hydra-core and pytest with their (small, pure-Python) dependencies as pip resolves them; Lightning
    # without its dependencies (torch is there); then PyYAML's binary wheels for the usual CPython versions.
    $PY -m pip download --quiet -d "$WHEELS" hydra-core pytest
    $PY -m pip download --quiet --no-deps -d "$WHEELS" pytorch-lightning lightning-utilities
    for v in 3.10 3.11 3.12 3.13; do
        $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$v" \
            --platform manylinux2014_x86_64 -d "$WHEELS" PyYAML
    done
    # The offline MNIST copy is one setting, conf/paths/default.yaml's paths.mnist_mirror (ADVNETS_MNIST_MIRROR).
    cp "$($PY -c 'import sys; sys.path.insert(0, "src"); from advnets.config import mnist_mirror; print(mnist_mirror())')"/*.gz "$DATA/MNIST/raw/"
    du -sh "$DEVICE_DIR"
    exit 0
fi

PART=${1:-}
SMOKE=0
[ "${2:-}" = "--smoke" ] && SMOKE=1
case $PART in correctness|speed|ddp) ;; *) echo "error: name a part: correctness, speed or ddp (then --smoke on a CPU)"; exit 2;; esac
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START )) s] $*"; }
# Each step has its own time limit (timeout), so that a part ends within 8 minutes whatever hangs.
limit() { local seconds=$1; shift; timeout --signal=TERM --kill-after=10 "$seconds" "$@"; }

stamp "machine"
$PY - <<'PY'
import torch
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
print(f"torch {torch.__version__}, GPUs: {', '.join(gpus) or 'none'}", flush=True)
PY
if [ $SMOKE = 0 ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU here; run with --smoke to check the script on a CPU"
    exit 2
fi

for module in hydra omegaconf yaml pytest pytorch_lightning; do
    if ! $PY -c "import $module" 2>/dev/null; then
        case $module in hydra) pkg=hydra-core;; yaml) pkg=PyYAML;; pytorch_lightning) pkg=pytorch-lightning;; *) pkg=$module;; esac
        $PY -m pip install --quiet --no-index --find-links "$WHEELS" "$pkg" || { echo "error: cannot install $pkg from $WHEELS: run --prepare first"; exit 2; }
    fi
done
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$OUT"
DATA_DIR=${DATA_DIR:-$DATA}
[ -d "$DATA_DIR/MNIST/raw" ] || DATA_DIR=data  # --smoke without --prepare: the usual data folder (or its mirror)

if [ $SMOKE = 1 ]; then
    ACCEL=cpu; DEVICE=cpu
    FIT=(trainer.limit_train_batches=5 parzen.val_samples=200 parzen.test_samples=200 quality.val_samples=200
         quality.test_samples=200 dataset.parzen_val_select=100 dataset.parzen_val_points=100)
    EVAL_SAMPLES=500
    SMALL=(--iters 5 --warmup 2); LARGE=(--batch 500 --iters 5 --warmup 2); PLAIN=(--tiny)
    STACKED=(--smoke); STACKED_SEEDS="2"
else
    ACCEL=gpu; DEVICE=cuda
    FIT=(trainer.limit_train_batches=300 parzen.val_samples=1000 parzen.test_samples=2000 quality.val_samples=1000
         quality.test_samples=2000)
    EVAL_SAMPLES=2000
    # The first batches of every run are untimed warm-up (CUDA's start, cuBLAS's heuristics, allocations).
    SMALL=(--iters 300 --warmup 30); LARGE=(--batch 1000 --iters 40 --warmup 10); PLAIN=(--iters 500)
    STACKED=(--iters 200 --warmup 20 --repeats 1); STACKED_SEEDS="4 8"
fi
COMMON=(logger=csv "paths.data_dir=$DATA_DIR" trainer.enable_progress_bar=false)

if [ $PART = correctness ]; then
    stamp "(a) GPU-only tests (skipped on a CPU) and the CPU tests of what differs on a GPU"
    limit 80 $PY -m pytest -q -p no:cacheprovider tests/test_parzen.py tests/test_devices.py \
        tests/test_configs.py -k "cuda or trainer_builds or fp16 or tf32 or fast_path or noise or draws" 2>&1 | tail -4

    stamp "(a) refused in one line: fp16 on a GPU, CUDA graphs"
    for bad in "trainer.precision=16-mixed" "model.compile=reduce-overhead"; do
        # trainer.accelerator=gpu with --smoke too: the refusal comes before the check that the GPU exists.
        limit 25 $PY src/train.py "${COMMON[@]}" trainer.accelerator=gpu "$bad" "hydra.run.dir=$OUT/refused" 2>&1 \
            | grep -E "^error: " | cut -c1-160
    done

    stamp "(a) a short fit of the default (${FIT[0]}), then its numbers"
    RUN=$OUT/fit; rm -rf "$RUN"
    limit 110 $PY src/train.py "${COMMON[@]}" trainer.accelerator=$ACCEL trainer.max_epochs=1 "${FIT[@]}" \
        "hydra.run.dir=$RUN" > "$OUT/fit.log" 2>&1
    echo "train.py exit status $? (log: $OUT/fit.log)"
    head -1 "$RUN/train.log" 2>/dev/null  # the precision line: bf16 or fp32, TF32 on or off
    $PY - "$RUN" <<'PY'
import csv, sys
from pathlib import Path
rows = list(csv.DictReader(open(next(Path(sys.argv[1]).glob("csv/version_*/metrics.csv")))))
last = {k: v for r in rows for k, v in r.items() if v}
for key in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/elapsed_s", "val/parzen_ll",
            "val/ema_parzen_ll", "test/parzen_ll", "test/ema_parzen_ll", "test/fid", "test/classes_covered"):
    print(f"{key:22} {float(last[key]):10.4f}" if key in last else f"{key:22} missing")
PY

    stamp "(a) a resume of that run for a second epoch"
    limit 80 $PY src/train.py "${COMMON[@]}" trainer.accelerator=$ACCEL trainer.max_epochs=2 "${FIT[@]}" \
        test_after_fit=false "ckpt_path=$RUN/checkpoints/last.ckpt" > "$OUT/resume.log" 2>&1
    echo "train.py (resumed) exit status $? (log: $OUT/resume.log)"
    $PY -c "import torch, sys; c = torch.load(sys.argv[1], map_location='cpu', weights_only=True); print('counters after the resume:', c['counters'], 'epoch', c['epoch'])" "$RUN/checkpoints/last.ckpt"

    stamp "(a) eval.py on that checkpoint ($EVAL_SAMPLES samples), then its samples on $DEVICE against the CPU's"
    limit 80 $PY src/eval.py "ckpt_path=$RUN/checkpoints/last.ckpt" "paths.data_dir=$DATA_DIR" logger=none \
        n_samples=$EVAL_SAMPLES quality.kid_subsets=10 device=$DEVICE "hydra.run.dir=$OUT/eval" 2>&1 | grep -E "^\| (Adv|True)"
    limit 30 $PY - "$RUN/checkpoints/last.ckpt" "$DEVICE" <<'PY'
import sys
import torch
from advnets.module import GAN
from advnets.seeds import EVAL_SAMPLES
ckpt, device = sys.argv[1], sys.argv[2]
out = {}
for where in ("cpu", device):
    module = GAN.load_from_checkpoint(ckpt, map_location=where, weights_only=True).eval()
    z = module.noise(1000, module.sample_generator(EVAL_SAMPLES))
    out[where] = (z.cpu(), module.sample(1000, module.sample_generator(EVAL_SAMPLES)).cpu())
(z_cpu, x_cpu), (z_dev, x_dev) = out["cpu"], out[device]
print(f"evaluation noise on {device} the CPU's: {torch.equal(z_cpu, z_dev)}; samples' largest difference "
      f"{(x_cpu - x_dev).abs().max():.2e} (fp32 rounding)")
PY
fi

if [ $PART = speed ]; then
    # Each row is printed as soon as it is measured ("run: ..."), the medians after.
    for size in SMALL LARGE; do
        declare -n ARGS=$size
        stamp "(b) the default in fp32 and bf16-mixed, ${ARGS[*]}"
        limit 110 $PY benchmarks/train_throughput.py --fast-path --precisions --device $DEVICE --repeats 1 "${ARGS[@]}" \
            --data-dir "$DATA_DIR" --logger none 2>&1 | grep -E "^(device|run:|fast-path|the defaults)|Error"
    done
    stamp "(b) the step's costs (fused Adam, lazy R1, no R1) in the auto precision, batch 100"
    limit 110 $PY benchmarks/train_throughput.py --step-costs --device $DEVICE --repeats 1 "${SMALL[@]}" \
        --data-dir "$DATA_DIR" --logger none 2>&1 | grep -E "^(run:|step-costs|the defaults)|Error"
    stamp "(b) Algorithm 1 through the project against the plain loops"
    limit 80 $PY benchmarks/train_throughput.py --device $DEVICE --repeats 1 "${PLAIN[@]}" --data-dir "$DATA_DIR" \
        --logger csv 2>&1 | grep -E "^(\([abc]\)|a/b|peak)|Error"
    # Issue 45 item 4: where one seed of these small nets leaves the GPU idle, S seeds stacked (torch.func, vmap) in
    # one process against S processes of one seed on the same GPU (the functional step, then the project's eager one).
    for seeds in $STACKED_SEEDS; do
        stamp "(b) $seeds seeds stacked in one process against $seeds processes of one seed"
        limit 120 $PY benchmarks/stacked_seeds.py --device $DEVICE --seeds-per-process "$seeds" "${STACKED[@]}" 2>&1 \
            | grep -E "^(device|\([abc]\)|a/b)|Error"
    done
fi

if [ $PART = ddp ]; then
    GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
    if [ $SMOKE = 0 ] && [ "$GPUS" -lt 2 ]; then
        stamp "(c) skipped: $GPUS GPU here (DDP needs several)"
        exit 0
    fi
    STRATEGY=trainer=ddp; [ $SMOKE = 1 ] && STRATEGY=trainer=ddp_cpu
    stamp "(c) $STRATEGY: a short fit on every device, then a resume"
    RUN=$OUT/ddp; rm -rf "$RUN"
    limit 200 $PY src/train.py "${COMMON[@]}" $STRATEGY trainer.max_epochs=1 "${FIT[@]}" "hydra.run.dir=$RUN" \
        > "$OUT/ddp.log" 2>&1
    echo "train.py exit status $? (log: $OUT/ddp.log)"
    grep -aE "precision:|test/parzen_ll|Error" "$OUT/ddp.log" | head -5
    limit 150 $PY src/train.py "${COMMON[@]}" $STRATEGY trainer.max_epochs=2 "${FIT[@]}" test_after_fit=false \
        "ckpt_path=$RUN/checkpoints/last.ckpt" > "$OUT/ddp_resume.log" 2>&1
    echo "train.py (resumed) exit status $? (log: $OUT/ddp_resume.log)"
    $PY -c "import torch, sys; c = torch.load(sys.argv[1], map_location='cpu', weights_only=True); print('counters after the resume:', c['counters'])" "$RUN/checkpoints/last.ckpt"
fi
stamp "done"
