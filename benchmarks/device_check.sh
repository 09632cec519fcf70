#!/usr/bin/env bash
# The GPU run in one command: GPU-only tests, the training throughput benchmark on the GPU (and the fast
# path's rows: fp32, bf16-mixed, torch.compile, CUDA graphs, in D+G updates per second), as many
# epochs of experiment=mnist (the official schedule, with the EMA of G) as fit, then the full Parzen
# protocol of Table 1 for G and its EMA. Every figure is printed; at most about 16 minutes.
#
#   bash benchmarks/device_check.sh --prepare   # here, with the package registry: wheels + MNIST into
#                                               # benchmarks/device/ (git-ignored, about 12 MiB)
#   bash benchmarks/device_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/device_check.sh --cpu-smoke # the same steps on this CPU, tiny (checks the script)
#
# The GPU machine has PyTorch, Lightning, torchvision and torchmetrics but no hydra-core, omegaconf or
# wandb, and no package registry: the wheels in benchmarks/device/wheels are installed from there
# (nothing is downloaded), and every run logs to CSV only. Budget in seconds: TRAIN_SECONDS (240).
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

SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START )) s] $*"; }

stamp "machine"
$PY - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
PY
if [ $SMOKE = 0 ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU here; run with --cpu-smoke to check the script on a CPU"
    exit 2
fi

stamp "packages (installed from $WHEELS when missing; no network)"
for module in hydra omegaconf yaml pytest pytorch_lightning; do
    if ! $PY -c "import $module" 2>/dev/null; then
        case $module in hydra) pkg=hydra-core;; yaml) pkg=PyYAML;; pytorch_lightning) pkg=pytorch-lightning;; *) pkg=$module;; esac
        $PY -m pip install --quiet --no-index --find-links "$WHEELS" "$pkg" || { echo "error: cannot install $pkg from $WHEELS: run --prepare first"; exit 2; }
    fi
done
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export WANDB_MODE=disabled
mkdir -p "$OUT"
DATA_DIR=$DATA
[ -d "$DATA_DIR/MNIST/raw" ] || DATA_DIR=data  # --cpu-smoke without --prepare: the usual data folder

if [ $SMOKE = 1 ]; then
    ACCEL=cpu; TRAIN_SECONDS=${TRAIN_SECONDS:-20}
    BENCH=(--tiny --device cpu); TRAIN_EXTRA=(trainer.limit_train_batches=10 parzen.val_samples=200 parzen.test_samples=500)
    TESTS=(tests/test_parzen.py -k "cuda or brute")
    FAST=(--device cpu --iters 5 --warmup 3 --repeats 1)
else
    ACCEL=gpu; TRAIN_SECONDS=${TRAIN_SECONDS:-240}
    BENCH=(--device cuda --iters 500 --repeats 1); TRAIN_EXTRA=()
    TESTS=(tests/test_parzen.py -k cuda)
    FAST=(--device cuda --iters 300 --warmup 30 --repeats 1)
fi

stamp "GPU-only tests"
$PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -3

stamp "training throughput (the paper's Algorithm 1 through the project, and the plain loops)"
timeout 150 $PY benchmarks/train_throughput.py "${BENCH[@]}" --data-dir "$DATA_DIR" --logger csv 2>&1 | grep -E "^(device|\([abc]\)|a/b|peak)"

stamp "the fast path: the defaults (Algorithm 1, k=1, R1, EMA of G) in fp32, bf16-mixed, compiled, both, and bf16-mixed with the compiled updates"
# D+G updates per second of each, with its ratio to fp32, then a profile of the fastest; the compiled rows
# once with torch.compile's default mode and once with reduce-overhead (CUDA graphs). A row that fails
# (e.g. CUDA graphs refused by manual optimisation) prints its error and the next one still runs.
for mode in default reduce-overhead; do
    [ $mode = default ] && MODE_ARGS=() || MODE_ARGS=(--compile-mode "$mode")
    timeout 240 $PY benchmarks/train_throughput.py --fast-path "${FAST[@]}" "${MODE_ARGS[@]}" --data-dir "$DATA_DIR" \
        --logger csv > "$OUT/fast_path_$mode.log" 2>&1
    echo "torch.compile mode $mode: exit status $? (log: $OUT/fast_path_$mode.log)"
    grep -aE "^(fast-path|the defaults|profile)|Error" "$OUT/fast_path_$mode.log" | head -20
    [ $SMOKE = 1 ] && break  # reduce-overhead is for CUDA
done

stamp "experiment=mnist for ${TRAIN_SECONDS} s (official schedule, EMA of G), then the full protocol"
RUN=$OUT/mnist
rm -rf "$RUN"
$PY src/train.py experiment=mnist logger=csv "paths.data_dir=$DATA_DIR" "hydra.run.dir=$RUN" \
    trainer.accelerator=$ACCEL "trainer.max_time=$(printf "00:%02d:%02d:%02d" $((TRAIN_SECONDS / 3600)) $((TRAIN_SECONDS % 3600 / 60)) $((TRAIN_SECONDS % 60)))" trainer.enable_progress_bar=false \
    "${TRAIN_EXTRA[@]}" > "$OUT/train.log" 2>&1
echo "train.py exit status $? (log: $OUT/train.log)"
$PY - "$RUN" <<'PY'
import csv, sys
from pathlib import Path
rows = list(csv.DictReader(open(next(Path(sys.argv[1]).glob("csv/version_*/metrics.csv")))))
for r in rows:
    if r.get("val/parzen_ll"):
        print(f"epoch {int(r['epoch']) + 1:3d}: G updates {float(r['val/g_updates']):7.0f}  val/parzen_ll "
              f"{float(r['val/parzen_ll']):7.1f}  val/ema_parzen_ll {float(r.get('val/ema_parzen_ll') or 'nan'):7.1f}")
for r in rows:
    if r.get("test/parzen_ll"):
        print(f"full protocol: G {float(r['test/parzen_ll']):.1f} +- {float(r['test/parzen_se']):.1f} "
              f"(sigma {float(r['test/parzen_sigma']):.4f}); EMA of G {float(r['test/ema_parzen_ll']):.1f} +- "
              f"{float(r['test/ema_parzen_se']):.1f} (sigma {float(r['test/ema_parzen_sigma']):.4f})")
times = [float(r["train/elapsed_s"]) for r in rows if r.get("train/elapsed_s")]
epochs = [int(r["epoch"]) for r in rows if r.get("val/parzen_ll")]
if times and epochs:
    print(f"{len(epochs)} epochs in {max(times):.0f} s of training")
PY
stamp "done"
