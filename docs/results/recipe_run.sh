#!/usr/bin/env bash
# Issue 32's study: one seed of one route, 60 epochs, with averages of G over a range of horizons carried in the
# same run (benchmarks/ema_variants.py; an average never changes training), then the full protocol
# (src/eval.py) on the checkpoints kept every 10 epochs: the raw G and the run's own average at epochs 10..60,
# every other average at 20..60. The measurements (not the checkpoints) are copied to
# docs/results/runs/recipe/<route>/seed<S>.
#
#   bash docs/results/recipe_run.sh adam 330        # optimizer=adam
#   bash docs/results/recipe_run.sh momentum 330    # the paper's momentum SGD (today's default)
#
# One CPU thread (OMP_NUM_THREADS=1, nice), the default precision (trainer.precision=auto: the bf16 fast path on a
# CPU with AMX), logger=csv (logging changes no update).
set -euo pipefail
cd "$(dirname "$0")/../.."
route=$1 seed=$2 epochs=${3:-60}
run=outputs/recipe/$route/seed$seed
out=docs/results/runs/recipe/$route/seed$seed
export OMP_NUM_THREADS=1 PYTHONPATH=benchmarks
# Half-lives in G updates (an epoch is 500): the run's own average is decay 0.995, ramp-up 0.05 (138, a quarter
# of an epoch); min(693, 0.05 n); min(6931, 0.05 n) (1,500 at epoch 60); min(6931, r n) for r = 0.25 and 0.5 (the
# full 6,931, about 14 epochs, from epoch 55 and 28); a constant 6,931 started at G update 15,000 (epoch 30).
variants='{d0.999_r0.05: {decay: 0.999, rampup: 0.05}, d0.9999_r0.05: {decay: 0.9999, rampup: 0.05}, d0.9999_r0.25: {decay: 0.9999, rampup: 0.25}, d0.9999_r0.5: {decay: 0.9999, rampup: 0.5}, d0.9999_from15000: {decay: 0.9999, rampup: null, start: 15000}}'
optimizer=$([ "$route" = adam ] && echo optimizer=adam || echo optimizer=momentum)
if [ ! -f "$run/checkpoints/epoch$(printf %04d $((epochs - 1)))"-*.ckpt ] 2>/dev/null; then
  resume=()
  [ -e "$run/checkpoints/last.ckpt" ] && resume=("ckpt_path=$run/checkpoints/last.ckpt")
  nice python src/train.py seed="$seed" "$optimizer" trainer.max_epochs="$epochs" test_after_fit=false \
    trainer.enable_progress_bar=false logger=csv callbacks.checkpoint.every_n_epochs=10 \
    callbacks.checkpoint.save_top_k=-1 hydra.run.dir="$run" "${resume[@]}" ${EXTRA:-} \
    "callbacks.extra=[{_target_: ema_variants.AverageVariants, variants: $variants}]"
fi
names=$(python - <<PY
import yaml; print(" ".join(yaml.safe_load("""$variants""")))
PY
)
for ((e = 10; e <= epochs; e += 10)); do
  tag=$(printf %04d $((e - 1))) dir=$(printf epoch_%04d "$e")
  ckpt=$(ls "$run"/checkpoints/epoch"$tag"-*.ckpt)
  [ -f "$run/eval/$dir/quality.json" ] || nice python src/eval.py ckpt_path="$ckpt" logger=none hydra.run.dir="$run/eval/$dir"
  ((e >= 20)) || continue
  for name in $names; do
    [ -f "$run/eval_variants/$name/$dir/quality.json" ] && continue
    python benchmarks/ema_variants.py swap "$ckpt" "$run/ema_variants/epoch$tag.pt" "$name" "$run/swapped.ckpt"
    nice python src/eval.py ckpt_path="$run/swapped.ckpt" logger=none hydra.run.dir="$run/eval_variants/$name/$dir"
    rm "$run/swapped.ckpt"
  done
done
mkdir -p "$out"
(cd "$run" && find . \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.jsonl' -o -name '*.yaml' \
  -o -name train.log -o -path "./samples/epoch_00$epochs.png" -o -path "./samples_ema/epoch_00$epochs.png" \
  -o -path "*/figures/figure_2.png" \) -type f -exec cp --parents {} "$OLDPWD/$out/" \;)
