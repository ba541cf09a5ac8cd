#!/usr/bin/env bash
# Re-evaluation of the committed Shanghai benchmark's generated sets with the issue-13 protocol.
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository root
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
RUN=runs/bench-sh
OUT="${OUT:-runs/evaluation}"
mkdir -p "$OUT"
python benchmarks/evaluation_controls.py --run $RUN --out $OUT/controls --seed 0
GEN=""
for m in mstdiff mstdiff-paper mstdiff-traffic+markov csdi+timegeo dit+markov csdi+difftraj; do
  GEN="$GEN --generated $m=$RUN/models/$m/generated"
done
CTRL="--generated copy-train=$OUT/controls/copy-train --generated real-val=$OUT/controls/real-val --generated iid-visits=$OUT/controls/iid-visits"
/usr/bin/time -v python -m mstdiff evaluate --real $RUN/split/test --reference $RUN/split/train \
  --train $RUN/split/train $GEN $CTRL --draws 5 --seed 0 --out $OUT/eval-sh --overwrite \
  > $OUT/eval-sh.log 2> $OUT/eval-sh.err
# the same without a reference: user-disjoint halves of the test split (n ≈ 196)
python -m mstdiff evaluate --real $RUN/split/test $GEN $CTRL --draws 5 --seed 0 --no-plots \
  --out $OUT/eval-sh-halves --overwrite > $OUT/eval-sh-halves.log 2> $OUT/eval-sh-halves.err
# a real set prepared separately (one day file, its own 1,831-station table) against the models'
# 2,047-station sets: stations matched by id (prepared beforehand with
#   mstdiff prepare --source shanghai-telecom --raw $OUT/raw616 --out $OUT/real-6-16)
python -m mstdiff evaluate --real $OUT/real-6-16 $GEN --draws 5 --seed 0 --no-plots \
  --out $OUT/eval-6-16 --overwrite > $OUT/eval-6-16.log 2> $OUT/eval-6-16.err
echo done
