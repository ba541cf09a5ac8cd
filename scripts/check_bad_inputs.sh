#!/usr/bin/env bash
# Bad inputs and faults through the CLI (issue 12): prints a Markdown table
# (case, command, exit code, first line of the message, traceback yes/no). About 1 min on 2 cores.
set -u
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1
W=$(mktemp -d /tmp/bad.XXXX)
M="mstdiff"
python - "$W" <<'PY'
import sys, torch, numpy as np
from pathlib import Path
from mstdiff.data.synthetic import synthetic_city
w = Path(sys.argv[1])
ds = synthetic_city(n_users=8, n_stations=14, days=1, seed=0)
ds.save(w / "ds")
class P:
    def __reduce__(self):
        return (exec, (f"open({str(w / 'PWNED')!r}, 'w').close()",))
for name in ["model.pt", "checkpoint.pt", "vqvae.pt", "transition.pt", "tucker.ckpt.pt"]:
    torch.save({"kind": "mstdiff-model", "x": P()}, w / f"evil_{name}")
torch.save({"a": torch.ones(100000)}, w / "good.pt")
b = (w / "good.pt").read_bytes()
(w / "trunc_model.pt").write_bytes(b[: len(b) // 3])
(w / "empty_model.pt").write_bytes(b"")
(w / "text_model.pt").write_text("this is not a model\n")
(w / "afile").write_text("x")
(w / "bad.yaml").write_text("train:\n  epochs: 2\n  lr: \"fast\"\n")
(w / "broken.yaml").write_text("train: {epochs: 2\n")
(w / "nl.yaml").write_text("data: {source: synthetic}\ntrain:\n  epochs: 1\n")
PY
row() {  # case, command...
    local case="$1"; shift
    local out rc
    out=$("$@" 2>&1); rc=$?
    local first
    first=$(printf "%s\n" "$out" | grep -E "^(error|Error)" | head -1 | cut -c1-170); [ -z "$first" ] && first=$(printf "%s\n" "$out" | grep -v -E "^\s*$|INFO|WARNING|it/s|step/s" | head -1 | cut -c1-170)
    local tb="no"; printf '%s' "$out" | grep -q Traceback && tb="YES"
    printf '| %s | `%s` | %s | %s | %s |\n' "$case" "$(echo "$*" | sed "s#$W#W#g" | cut -c1-120)" "$rc" "$(echo "$first" | sed "s#$W#W#g; s#|#/#g")" "$tb"
}
echo "| case | command | exit | first line of the message | traceback |"
echo "|---|---|---:|---|---|"
row "pickle payload as model.pt" $M generate --model $W/evil_model.pt --like $W/ds --n 2 --out $W/g1
mkdir -p $W/kgrun && $M kg build $W/ds --out $W/kgrun/kg >/dev/null 2>&1; cp $W/evil_tucker.ckpt.pt $W/kgrun/.emb.checkpoint.pt
row "pickle payload as TuckER resume checkpoint" $M kg embed $W/kgrun/kg --out $W/kgrun/emb -o epochs=1
mkdir -p $W/resume && cp $W/evil_checkpoint.pt $W/resume/checkpoint.pt
$M kg embed $W/kgrun/kg --out $W/kgrun/emb2 -o epochs=1 >/dev/null 2>&1; $M kg transition $W/kgrun/emb2 --out $W/kgrun/tr >/dev/null 2>&1
row "pickle payload as transition" $M train --train $W/ds --transition $W/evil_transition.pt --out $W/t0
row "pickle payload as VQ-VAE file" $M train --train $W/ds --transition $W/kgrun/tr --vqvae $W/evil_vqvae.pt --out $W/t1
row "pickle payload as training checkpoint (--resume)" $M train --train $W/ds --transition $W/kgrun/tr --out $W/resume --resume --set model.denoiser.use_vqvae=false
echo "| payload marker file created by any case above | | | $( [ -e $W/PWNED ] && echo 'YES: PAYLOAD RAN' || echo 'no (none ran)') | |"
row "truncated model.pt" $M generate --model $W/trunc_model.pt --like $W/ds --n 2 --out $W/g3
row "empty model.pt" $M generate --model $W/empty_model.pt --like $W/ds --n 2 --out $W/g4
row "text file as model.pt" $M generate --model $W/text_model.pt --like $W/ds --n 2 --out $W/g5
row "tensor file that is not a model" $M generate --model $W/good.pt --like $W/ds --n 2 --out $W/g6
row "model path missing" $M generate --model $W/nothere --like $W/ds --n 2 --out $W/g7
row "generate --batch-size 0" $M generate --model $W/good.pt --like $W/ds --n 2 --batch-size 0 --out $W/g8
row "generate --n 0" $M generate --model $W/good.pt --like $W/ds --n 0 --out $W/g9
row "train.lr: \"fast\" in a file" $M run $W/bad.yaml --out $W/r1
row "--set train.batch_size=abc" $M run configs/demo.yaml --out $W/r2 --set train.batch_size=abc
row "--set train.lr=-1" $M run configs/demo.yaml --out $W/r3 --set train.lr=-1
row "--set train.device=cuda (no CUDA)" $M run configs/demo.yaml --out $W/r4 --set train.device=cuda
row "--set model.denoiser.dropout=1.5" $M run configs/demo.yaml --out $W/r5 --set model.denoiser.dropout=1.5
row "--set unknown key" $M run configs/demo.yaml --out $W/r6 --set train.learning_rate=0.1
row "--set without =" $M run configs/demo.yaml --out $W/r7 --set train.lr
row "YAML syntax error" $M run $W/broken.yaml --out $W/r8
row "config path is a directory" $M run configs --out $W/r9
row "data.split not summing to 1" $M run configs/demo.yaml --out $W/r10 --set "data.split=[0.5,0.6,0.1]"
row "kg.transition.num_steps set" $M run configs/demo.yaml --out $W/r11 --set kg.transition.num_steps=10
row "unknown model in a benchmark" $M benchmark configs/benchmark_smoke.yaml --out $W/b1 --set "models=[mstdiff, foo+markov]"
row "generate.sampling with an unknown option" $M run configs/demo.yaml --out $W/r12 --set generate.sampling.temp=1
row "--out is an existing file (prepare)" $M prepare --source synthetic --out $W/afile
row "--out inside a file (run)" $M run configs/demo.yaml --out $W/afile/run
row "--out on a read-only file system (/sys)" $M prepare --source synthetic --out /sys/mstdiff-out
row "train --out inside a file" $M train --train $W/ds --transition $W/kgrun/tr --out $W/afile/t
row "truncated checkpoint.pt (--resume)" bash -c "mkdir -p $W/rs2 && cp $W/trunc_model.pt $W/rs2/checkpoint.pt && $M train --train $W/ds --transition $W/kgrun/tr --out $W/rs2 --resume --set model.denoiser.use_vqvae=false"
row "evaluate --out is a file" $M evaluate --real $W/ds --generated $W/ds --out $W/afile
echo '{"broken": ' > $W/ds2.json; cp -r $W/ds $W/dsb; cp $W/ds2.json $W/dsb/meta.json
row "corrupt meta.json of a dataset" $M info $W/dsb
# kill -9 of a stage, then the same stage again
python -c "
import os
from mstdiff.io import atomic_dir
with atomic_dir('$W/killed') as tmp:
    (tmp / 'half').write_text('x'); os.kill(os.getpid(), 9)" 2>/dev/null
before=$(ls -a $W | grep -c partial)
$M prepare --source synthetic --out $W/killed -o n_users=5 -o n_stations=14 >/dev/null 2>&1
after=$(ls -a $W | grep -c partial)
echo "| stage killed with kill -9, then run again | \`prepare --out W/killed\` (after kill -9 inside atomic_dir) | 0 | partial dirs before: $before, after: $after | no |"
rm -rf "$W"
