#!/usr/bin/env bash
# Run the node pack in a real, headless ComfyUI on the CPU and submit the shipped workflows plus
# negative cases through the HTTP API. Everything ComfyUI writes goes to a throw-away $WORK folder.
#
#   tests/comfy/run_headless.sh /path/to/ComfyUI /path/to/venv/bin/python
#
# Exit status: the number of failed checks (0 = all passed). Images land in $WORK/out/.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
COMFY=${1:-${COMFYUI_PATH:?give the ComfyUI checkout as \$1 or COMFYUI_PATH}}
PY=${2:-${COMFY_PYTHON:-python}}
PORT=${PORT:-8199}
WORK=${WORK:-$(mktemp -d /tmp/vpg-comfy.XXXXXX)}
URL=http://127.0.0.1:$PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$WORK/custom_nodes" "$WORK/out"
ln -sfn "$REPO" "$WORK/custom_nodes/vpg-pipelines"
"$PY" "$REPO/tests/comfy/make_standin_models.py" "$WORK/models/vpg"

cd "$COMFY"
PYTHONUNBUFFERED=1 "$PY" main.py --cpu --listen 127.0.0.1 --port "$PORT" --base-directory "$WORK" \
    --database-url sqlite:///:memory: > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null' EXIT
for _ in $(seq 1 300); do
    curl -sf "$URL/system_stats" > /dev/null && break
    kill -0 $SERVER_PID 2>/dev/null || { echo "server exited"; tail -40 "$WORK/server.log"; exit 99; }
    sleep 1
done
grep -A3 "Import times for custom nodes" "$WORK/server.log"
cd "$REPO"

FAILED=0
check() {  # check NAME ARGS...: one submit.py run
    local name=$1; shift
    echo "== $name"
    if "$PY" tests/comfy/submit.py "$URL" "$@"; then echo "PASS $name"; else echo "FAIL $name"; FAILED=$((FAILED + 1)); fi
}
DEMO=workflows/vpg_demo_cfg_prefix.json
check "demo CFG + Prefix Guidance" "$DEMO" --out "$WORK/out/demo"
check "demo side by side" workflows/vpg_demo_side_by_side.json --out "$WORK/out/side_by_side"
check "VAR workflow (stand-in official files)" workflows/vpg_var_d16.json --set '2.classes="0, 3, 7"' \
    --out "$WORK/out/var_standin"
check "Cancel mid-run leaves no output" "$DEMO" --set 5.batch_size=64 --set 5.seed=1 --interrupt-after 1.5
check "same run uncancelled (how long Cancel cut short)" "$DEMO" --set 5.batch_size=64 --set 5.seed=2
check "missing model file" workflows/vpg_var_d16.json --no-check --set '1.model_name="var_d30.pth"' \
    --expect-error "was not found in the models/vpg folder"
check "unsupported pipeline folder" "$DEMO" --no-check --set '1.model_name="broken/model_index.json"' \
    --expect-error "which this node pack cannot load"
check "wrong socket type" "$DEMO" --set '5.conditioning=["3", 0]' --expect-error "return_type_mismatch"
check "scale index out of range" "$DEMO" --set '4.scales="2, 9"' --expect-error "entries must be in [0, 5]"
check "unknown class name" "$DEMO" --set '2.classes="face-hapy"' --expect-error "Did you mean"
check "official checkpoint without its VAE" workflows/vpg_var_d16.json --set '1.vae_file="none"' \
    --expect-error "also pick the VAR VQVAE file"

echo "server log: $WORK/server.log; images: $WORK/out; failed checks: $FAILED"
exit $FAILED
