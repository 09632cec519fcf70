#!/usr/bin/env bash
# One seed of a setting as a user runs it (`python src/train.py seed=S <overrides>`), EPOCHS epochs (60), with the
# checkpoints of every EVERY-th epoch (10) kept, then the full protocol (src/eval.py) on each: raw G and its
# average. The measurements (not the checkpoints) are copied to docs/results/runs/<name>/seed<S>.
#
#   bash docs/results/default_run.sh adam_ema 340                          # Table 1: the default
#   EPOCHS=200 EVERY=20 bash docs/results/default_run.sh long_default 350  # how far the default goes
#   EPOCHS=300 EVERY=20 bash docs/results/default_run.sh long_mnist 351 experiment=mnist
#
# Extra arguments are overrides of train.py. OMP_NUM_THREADS CPU threads (1 unless set), nice; the default precision
# (trainer.precision=auto: the bf16 fast path on a CPU with AMX, fp32 on one without); logger=csv (logging
# changes no update). A run stopped part-way resumes from its last.ckpt when the same command is given again.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1 seed=$2
shift 2
epochs=${EPOCHS:-60} every=${EVERY:-10}
run=outputs/results/$name/seed$seed
out=docs/results/runs/$name/seed$seed
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if ! ls "$run/checkpoints/epoch$(printf %04d $((epochs - 1)))"-*.ckpt >/dev/null 2>&1; then
  resume=()
  [ -e "$run/checkpoints/last.ckpt" ] && resume=("ckpt_path=$run/checkpoints/last.ckpt")
  nice python src/train.py seed="$seed" "$@" trainer.max_epochs="$epochs" test_after_fit=false \
    trainer.enable_progress_bar=false logger=csv callbacks.checkpoint.every_n_epochs="$every" \
    callbacks.checkpoint.save_top_k=-1 hydra.run.dir="$run" "${resume[@]}"
fi
for ((e = every; e <= epochs; e += every)); do
  ckpt=$(ls "$run"/checkpoints/epoch"$(printf %04d $((e - 1)))"-*.ckpt)
  dir=$(printf epoch_%04d "$e")
  [ -f "$run/eval/$dir/quality.json" ] || nice python src/eval.py ckpt_path="$ckpt" logger=none hydra.run.dir="$run/eval/$dir"
done
last=$(printf epoch_%04d.png "$epochs")
mkdir -p "$out"
(cd "$run" && find . \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.yaml' -o -name train.log \
  -o -path "./samples/$last" -o -path "./samples_ema/$last" -o -path "*/figures/figure_2.png" \) -type f \
  -exec cp --parents {} "$OLDPWD/$out/" \;)
