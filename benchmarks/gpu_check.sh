#!/usr/bin/env bash
# The prepared GPU check (issue 16): at most 9 minutes on one H200. Run it first whenever a GPU is lent.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # on a CPU: every step at a smoke budget, nothing committed
#
# 1. the GPU tests, each file in its own process (a CUDA error in one cannot poison the next);
# 2. benchmarks/speed.py --device cuda --cuda-graphs --compare-pyro-elbo --epoch;
# 3. CoHiClust on MNIST at a reduced budget (0.1 of the paper's 200 + 100 epochs: 20 SimCLR + 10 tree
#    epochs, pruning from tree epoch 3) for {R1 depth-decayed, uniform} x {official SimCLR, our digits}
#    augmentations. The two runs with the same augmentation share one SimCLR pretraining
#    (benchmarks/reproduce.py caches it), so this is 2 pretrainings and 4 tree phases.
# Results go to benchmarks/results/ (JSON + Markdown; a log of this run in gpu_check_<stamp>.log).
# Every step has its own time limit, capped by what is left of a 530-second total, so one slow step
# cannot eat the others' share of the 9 minutes (a step with under 10 s left is skipped and counted failed).
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
PYTHON="${PYTHON:-python}"
[[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
RESULTS=benchmarks/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
if (( DRY_RUN )); then
  RESULTS=$(mktemp -d)/results
  DEVICE=cpu
  export OMP_NUM_THREADS=1
else
  DEVICE=cuda
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device visible; use --dry-run on a CPU" >&2; exit 2; }
fi
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check_${STAMP}.log"
FAILED=()
DEADLINE=$((SECONDS + 530))
SCALE=0.1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2; shift 2
  local started=$SECONDS left=$((DEADLINE - SECONDS))
  (( DRY_RUN )) && left=3600 limit=3600  # a dry run on a shared CPU is not held to the GPU's clock
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    echo "== $name: skipped, ${left}s of the total left" | tee -a "$LOG"; FAILED+=("$name"); return
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started))s" | tee -a "$LOG"
  (( rc == 0 )) || FAILED+=("$name")
}

# 1. GPU tests, one process per file (on a CPU they only collect: they skip without CUDA) ----------------
for file in tests/test_gpu.py tests/test_deepect.py tests/test_cohiclust.py; do
  if (( DRY_RUN )); then
    step "collect $file" 300 "$PYTHON" -m pytest -q --collect-only "$file"
  else
    # test_gpu.py entirely; in the model files the tests that need CUDA (their names say so)
    selection=() limit=90
    [[ $file != tests/test_gpu.py ]] && selection=(-k "gpu or cuda") limit=45
    step "test $file" $limit "$PYTHON" -m pytest -q -rs "${selection[@]}" "$file"
  fi
done

# 2. speed ----------------------------------------------------------------------------------------------
if (( DRY_RUN )); then
  step speed 600 "$PYTHON" benchmarks/speed.py --device cpu --threads 1 --hidden-dims 16 --steps 2 --warmup 1 \
    --paths 8 --depths 3 --clusters 2 --leaves 2 --cohiclust-depths 2 --cohiclust-backbone small_cnn \
    --compare-pyro-elbo --batch-size 64 --epoch --epoch-batch-sizes 5000 --out "$RESULTS/speed_dry_run.json"
else
  step speed 120 "$PYTHON" benchmarks/speed.py --device cuda --cuda-graphs --compare-pyro-elbo --epoch \
    --out "$RESULTS/speed_h200_check.json"
fi

# 3. CoHiClust on MNIST: {R1 depth-decayed, uniform} x {official, ours} ----------------------------------
if (( DRY_RUN )); then
  budget=(--scale 0.01 --n 256 --set backbone=small_cnn --set prune_start=0 --set depth=2 --set n_leaves=3
          --set batch_size=64 --threads 1)
else
  budget=(--scale $SCALE --set prune_start=3)
fi
for augment in simclr digits; do
  limit=75  # the first run of an augmentation also pretrains; the second reuses that pretraining
  for r1 in depth_decayed uniform; do
    (( DRY_RUN )) && limit=600
    step "cohiclust r1=$r1 augment=$augment" $limit "$PYTHON" benchmarks/reproduce.py cohiclust mnist \
      --device "$DEVICE" --no-progress "${budget[@]}" --set "r1=$r1" --set "augment=$augment" \
      --workdir "$RESULTS/reproduce_work" \
      --out "$RESULTS/cohiclust_mnist_${DEVICE}_scale${SCALE}_r1-${r1}_aug-${augment}.json"
    limit=45
  done
done

# a summary table of the four CoHiClust runs
"$PYTHON" - "$RESULTS" "$DEVICE" "$SCALE" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
results, device, scale = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lines = ["| R1 | augmentation | ACC | NMI | DP | leaves | tree-phase s |", "|---|---|---|---|---|---|---|"]
for augment in ("simclr", "digits"):
    for r1 in ("depth_decayed", "uniform"):
        path = results / f"cohiclust_mnist_{device}_scale{scale}_r1-{r1}_aug-{augment}.json"
        if not path.exists():
            lines.append(f"| {r1} | {augment} | (no result) | | | | |")
            continue
        row = json.loads(path.read_text())["results"][0]
        lines.append(f"| {r1} | {augment} | {row['acc']:.3f} | {row['nmi']:.3f} | {row['dp']:.3f} | "
                     f"{row['n_leaves']} | {row['seconds']:.0f} |")
table = "\n".join(lines)
(results / f"cohiclust_mnist_{device}_scale{scale}_combinations.md").write_text(
    f"CoHiClust on MNIST (train split) at {scale} of the paper's 200 SimCLR + 100 tree epochs, pruning from "
    "tree epoch 3; paper (full budget): ACC 0.99, NMI 0.97, DP 0.97.\n\n" + table + "\n")
print(table)
EOF

if (( ${#FAILED[@]} )); then
  echo "gpu_check: failed steps: ${FAILED[*]}" | tee -a "$LOG"
  exit 1
fi
echo "gpu_check: all steps passed; results in $RESULTS" | tee -a "$LOG"
