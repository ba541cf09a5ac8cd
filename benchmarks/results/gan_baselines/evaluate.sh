#!/bin/sh
# evaluate every generated set of the committed Shanghai benchmark plus the GAN rows, test split
cd "$(dirname "$0")/../../.."  # the repository root
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
R="${RUN:-runs/bench-sh}"
G=""
for m in mstdiff mstdiff-paper mstdiff-traffic+markov csdi+timegeo dit+markov csdi+difftraj mshgan+markov adaptive+markov adaptive+replay; do
  G="$G --generated $m=$R/models/$m/generated"
done
/usr/bin/time -v python -m mstdiff evaluate --real $R/split/test $G --out $R/evaluate-gan --seed 0 --no-plots --overwrite
