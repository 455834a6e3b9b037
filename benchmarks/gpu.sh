#!/usr/bin/env bash
# The GPU checks of issues 4 and 13, as one prepared run: installs nothing, needs a CUDA
# PyTorch with tqdm, matplotlib, pyyaml and pillow (all on the lent H200 machine), and the four
# Fashion-MNIST files in $DATA (carry them: cp /usr/share/datasets/fashion-mnist/*.gz .data/fm/).
# Prints a short table last. Usage: DATA=.data/fm bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
DATA=${DATA:-.data/fm}
RESULTS=${OUT:-/tmp}/gpu-check
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__)' | tee -a "$RESULTS/gpu.txt"

resnets() { python3 -m resnets.cli "$@"; }
resnets bench --device cuda --data-dir "$DATA" --steps 100 --json > "$RESULTS/bench-eager.json"
resnets bench --device cuda --data-dir "$DATA" --steps 100 --compile --json > "$RESULTS/bench-compiled.json"
resnets bench --device cuda --data-dir "$DATA" --steps 30 --precision fp32 --no-channels-last --json \
    > "$RESULTS/bench-fp32-nchw.json"
# The chapter's 5-epoch experiment end to end (data loading and evaluation included).
start=$(date +%s.%N)
resnets train --device cuda --data-dir "$DATA" --compile --out "$RESULTS/chapter" --quiet \
    | tee "$RESULTS/chapter.txt"
end=$(date +%s.%N)
echo "$start $end" > "$RESULTS/chapter-wall.txt"
# The fast recipe (94% in 5 minutes on 2 CPU cores), tested every epoch for its time to 94%.
resnets train --recipe fast --device cuda --data-dir "$DATA" --eval-every 1 --out "$RESULTS/fast" \
    --quiet | tee "$RESULTS/fast.txt"

python3 - "$RESULTS" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
print("\n| measurement | train img/s | eval img/s (folded) | peak GiB |")
print("|---|---:|---:|---:|")
for name in ("fp32-nchw", "eager", "compiled"):
    r = json.loads((d / f"bench-{name}.json").read_text())
    print(f"| bench {name} ({r['precision']}) | {r['train_images_per_sec']:.0f} | "
          f"{r['eval_images_per_sec']:.0f} ({r.get('eval_folded_images_per_sec') or 0:.0f}) | "
          f"{r['peak_memory_bytes'] / 2**30:.2f} |")
s = json.loads((d / "chapter" / "summary.json").read_text())
start, end = map(float, (d / "chapter-wall.txt").read_text().split())
print(f"| chapter, 5 epochs: wall {end - start:.1f} s (training loop {s['total_seconds']:.1f} s), "
      f"test acc {s['final_test_acc']:.4f} | | | {s['peak_memory_bytes'] / 2**30:.2f} |")
import csv
rows = list(csv.DictReader((d / "fast" / "metrics.csv").open()))
hit = next((r for r in rows if r["test_acc"] and float(r["test_acc"]) >= 0.94), None)
when = f"94% at {float(hit['elapsed']):.1f} s (epoch {hit['epoch']})" if hit else "94% not reached"
print(f"| fast recipe, 12 epochs: {when}, final {float(rows[-1]['test_acc']):.4f} after "
      f"{float(rows[-1]['elapsed']):.1f} s | | | |")
PY
