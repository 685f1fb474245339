#!/usr/bin/env bash
# The CUDA path of cnnkit, end to end, on a machine with a GPU (about 4 minutes on an H200):
#
#     bash benchmarks/cuda_check.sh [DATA_DIR] [OUT_DIR]     # DATA_DIR holds FashionMNIST/raw (../shared/datasets)
#
# Trains to a 1-minute budget on CUDA (bf16 and fp32), a ConvNeXt on the bundled sample, then evaluates (TTA,
# corruptions with BN adaptation), predicts, explains (Grad-CAM, Score-CAM, Eigen-CAM, LRP), exports
# (torch.export and ONNX), benches the run and its .pt2 on CUDA, serves on CUDA and asks the service through `cnnkit predict --url` and
# `cnnkit explain --url`, and drives the service with benchmarks/serve.py's quick load levels. Each step's last
# lines and exit status are printed; OUT_DIR/all.log keeps everything, OUT_DIR/*.json the figures.
set -u
DATA=$(realpath "${1:-../shared/datasets}")
OUT=$(realpath -m "${2:-cuda-check}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && cd "$OUT" || exit 2
step() {
    echo; echo "=== $*"
    local t0=$SECONDS
    "$@" > "$OUT/step.log" 2>&1; local rc=$?
    tail -n 6 "$OUT/step.log" | cut -c1-300; cat "$OUT/step.log" >> "$OUT/all.log"
    echo "--- rc=$rc, $((SECONDS - t0)) s"
}
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" 2>/dev/null \
    || { echo "cuda_check: no CUDA device here"; exit 2; }
python3 - "$DATA" <<'PY'
import gzip, os, sys
import numpy as np
from PIL import Image
raw = gzip.open(os.path.join(sys.argv[1], "FashionMNIST/raw/t10k-images-idx3-ubyte.gz")).read()[16:]
images = np.frombuffer(raw, np.uint8).reshape(-1, 28, 28)
os.makedirs("imgs", exist_ok=True)
for i in range(8):
    Image.fromarray(images[i]).save(f"imgs/{i}.png")
PY
step cnnkit train --data fashion-mnist --data-dir "$DATA" --budget 1m --device cuda --amp auto --out runs/b1m --quiet
step cnnkit train --data fashion-mnist --data-dir "$DATA" --budget 1m --device cuda --amp off --out runs/b1m_off --quiet
grep -A6 budget_plan runs/b1m/config.yaml
step cnnkit train --data sample --model convnext_mini --epochs 3 --device cuda --out runs/cnx --quiet
step cnnkit eval --checkpoint runs/b1m --data fashion-mnist --data-dir "$DATA" --device cuda --tta
step cnnkit eval --checkpoint runs/b1m --data fashion-mnist-c:fog:3 --data-dir "$DATA" --device cuda --adapt bn
step cnnkit predict --checkpoint runs/b1m imgs --device cuda --topk 2
step cnnkit explain imgs --checkpoint runs/b1m --device cuda --method gradcam,scorecam,eigencam,lrp --out maps
step cnnkit export --checkpoint runs/b1m --format torch-export --out b1m.pt2
step cnnkit export --checkpoint runs/b1m --out b1m.onnx
step cnnkit bench runs/b1m b1m.pt2 --device cuda --amp auto --data fashion-mnist --data-dir "$DATA" --repeats 10
cnnkit serve runs/b1m --port 8123 --device cuda > serve.log 2>&1 &
SERVER=$!
for _ in $(seq 60); do
    python3 -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:8123/readyz').status_code != 200)" 2>/dev/null && break
    sleep 1
done
step cnnkit predict --url http://127.0.0.1:8123/v1/models/b1m imgs --topk 2
step cnnkit explain --url http://127.0.0.1:8123/v1/models/b1m imgs/0.png --method gradcam,eigencam --out smaps
kill -TERM $SERVER; wait $SERVER; echo "serve exited with $?"
cd "$REPO" && step python3 -m benchmarks.serve --device cuda --amp auto --quick
cp benchmarks/results/serve_cuda_auto_quick.json "$OUT/" 2>/dev/null
echo; echo "all output: $OUT/all.log"
