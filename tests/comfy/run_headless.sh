#!/usr/bin/env bash
# Run the node pack in a real, headless ComfyUI on the CPU and submit the shipped workflows plus
# negative cases through the HTTP API. Everything ComfyUI writes goes to a throw-away $WORK folder.
#
#   tests/comfy/run_headless.sh /path/to/ComfyUI /path/to/venv/bin/python
#
# Exit status: the number of failed checks (0 = all passed). Images land in $WORK/out/; with THUMBNAILS=DIR
# the thumbnails of the shipped workflows (tests/comfy/make_thumbnails.py) are written to DIR.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
COMFY=${1:-${COMFYUI_PATH:?give the ComfyUI checkout as \$1 or COMFYUI_PATH}}
PY=${2:-${COMFY_PYTHON:-python}}
PORT=${PORT:-8199}
WORK=${WORK:-$(mktemp -d /tmp/vpg-comfy.XXXXXX)}
URL=http://127.0.0.1:$PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$WORK/custom_nodes" "$WORK/out" "$WORK/input"
ln -sfn "$REPO" "$WORK/custom_nodes/vpg-pipelines"
"$PY" "$REPO/tests/comfy/make_standin_models.py" "$WORK/models/vpg"
# the input files the 480p and Interact workflows load: ComfyUI's own example.png (Load Image's default) and,
# as reference.mp4, the 480p fixture's synthetic video (6 s at 24 fps, 80x40)
cp "$COMFY/input/example.png" "$WORK/input/example.png"
cp "$REPO/tests/fixtures/infinity_star_480p/input_video.mp4" "$WORK/input/reference.mp4"

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
check "demo guidance stack: CFG -> IGG -> Prefix Guidance -> SSG" workflows/vpg_demo_guidance_stack.json \
    --out "$WORK/out/guidance_stack"
check "VAR workflow (stand-in official files)" workflows/vpg_var_d16.json --set '2.classes="0, 3, 7"' \
    --out "$WORK/out/var_standin"
check "Cancel mid-run leaves no output" "$DEMO" --set 5.batch_size=64 --set 5.seed=1 --interrupt-after 1.5
check "same run uncancelled (how long Cancel cut short)" "$DEMO" --set 5.batch_size=64 --set 5.seed=2
check "missing model file" workflows/vpg_var_d16.json --no-check --set '1.model_name="var_d30.pth"' \
    --expect-error "was not found in the models/vpg folder"
check "unsupported pipeline folder" "$DEMO" --no-check --set '1.model_name="broken/model_index.json"' \
    --expect-error "which vpg_pipelines cannot load"
check "wrong socket type" "$DEMO" --set '5.conditioning=["3", 0]' --expect-error "return_type_mismatch"
check "scale index out of range" "$DEMO" --set '4.scales="2, 9"' \
    --expect-error "VPG Prefix Guidance: \`scales\` asks for scale 9, but this model has 6 scales (0-5)"
check "scale range far out of range" "$DEMO" --set '4.scales="1-100"' \
    --expect-error "VPG Prefix Guidance: \`scales\` asks for scale 6-100, but this model has 6 scales (0-5)"
check "NaN corruption" "$DEMO" --set 4.corruption=NaN \
    --expect-error "VPG Prefix Guidance: \`corruption\` must be a number in [0, 1], got nan"
check "Guidance Map option off its list" "$DEMO" --set '8.normalize="log"' \
    --expect-error "VPG Guidance Map: \`normalize\` must be one of 'per scale', 'shared', got 'log'"
check "bundled demo with a vae_file" "$DEMO" --set '1.vae_file="vae_ch160v4096z32.pth"' \
    --expect-error "VPG Load Model: the bundled demo brings its own VAE and cannot use \`vae_file\`"
check "truncated safetensors checkpoint" workflows/vpg_var_d16.json --no-check \
    --set '1.model_name="var_d24_truncated.safetensors"' \
    --expect-error "VPG Load Model: \`model_name\` 'var_d24_truncated.safetensors' is truncated or corrupt"
check "pickle that would run code" workflows/vpg_var_d16.json --no-check --set '1.model_name="var_d30_pickle.pth"' \
    --expect-error "VPG Load Model: \`model_name\` 'var_d30_pickle.pth' is a pickle that would call \`posix.system\`"
check "unknown class name" "$DEMO" --set '2.classes="face-hapy"' --expect-error "Did you mean"
check "official checkpoint without its VAE" workflows/vpg_var_d16.json --set '1.vae_file="none"' \
    --expect-error "is an official var checkpoint; also pick its VAE (the VAR VQVAE file"

# Infinity / InfinityStar (node ids: 1 loader, 2 text encode, 3 CFG/APG, 4 prefix, 5 sampler). The official
# workflows load in bf16 (for GPUs); bf16 convolutions on a CPU are very slow, so the stand-ins run in fp32.
INF=workflows/vpg_infinity_2b.json
STAR=workflows/vpg_infinitystar_tiny.json
STAR720=workflows/vpg_infinitystar_720p.json
check "Infinity tiny (saved folder), CFG + Prefix Guidance" workflows/vpg_infinity_tiny.json \
    --out "$WORK/out/infinity_tiny"
check "Infinity tiny, CFG + Prefix Guidance + Accelerate (FastVAR on both blocks, 512x512)" \
    workflows/vpg_infinity_tiny_fastvar.json --out "$WORK/out/infinity_tiny_fastvar"
check "Infinity 2B workflow (stand-in official files + T5 folder)" "$INF" --set '5.size="default"' --set '1.dtype="fp32"' \
    --out "$WORK/out/infinity_2b_standin"
check "InfinityStar tiny (saved folder), APG + Prefix Guidance -> SaveVideo" "$STAR" --out "$WORK/out/star_tiny"
check "InfinityStar 720p workflow (stand-in shard folder + T5 folder)" "$STAR720" \
    --set '1.text_encoder="tiny-t5-d64"' --set '1.dtype="fp32"' --set '5.size="default"' --set 5.num_frames=17 \
    --out "$WORK/out/star_standin"
check "Cancel mid-video leaves no output" "$STAR" --set 5.seed=1 --interrupt-after 2
# 480p and Interact (stand-in shard folders under the released names; the same overrides as the 720p workflow).
# Node ids: 480p as above, 6 Load Image / Load Video; Interact: 1 loader, 2 CFG, 3 prefix, 4 Load Video, 5 sampler.
I2V=workflows/vpg_infinitystar_480p_i2v.json
V2V=workflows/vpg_infinitystar_480p_continuation.json
INTERACT=workflows/vpg_infinitystar_interact.json
STANDIN=(--set '1.text_encoder="tiny-t5-d64"' --set '1.dtype="fp32"')
check "InfinityStar 480p image-to-video workflow (stand-in shard folder, Load Image example.png)" "$I2V" \
    "${STANDIN[@]}" --set '5.size="default"' --out "$WORK/out/star480_i2v_standin"
check "InfinityStar 480p continuation workflow (stand-in, Load Video: 6 s at 24 fps -> 10 s)" "$V2V" \
    "${STANDIN[@]}" --set '5.size="default"' --timeout 1200 --out "$WORK/out/star480_continuation_standin"
check "InfinityStar-Interact workflow (stand-in, Load Video, 3 prompts -> 3 clips)" "$INTERACT" "${STANDIN[@]}" \
    --timeout 1200 --out "$WORK/out/interact_standin"  # ~8 min on 2 shared cores: 3 clips + their decodes
check "Interact: no prompt" "$INTERACT" "${STANDIN[@]}" --set '5.prompts=" \n \n"' \
    --expect-error "VPG Interact Sampler: \`prompts\` is empty; write one prompt per line"
check "Interact Sampler on the 480p model" "$INTERACT" "${STANDIN[@]}" \
    --set '1.model_name="infinitystar_8b_480p_weights"' \
    --expect-error "is not InfinityStar-Interact (kind infinity_star, variant '480p')"
check "Video Sampler on the Interact model" "$V2V" "${STANDIN[@]}" --set '5.size="default"' \
    --set '1.model_name="InfinityStarInteract_24K_iters"' --expect-error "use VPG Interact Sampler"
check "continuation at 5 s" "$V2V" "${STANDIN[@]}" --set '5.size="default"' --set 5.num_frames=81 \
    --expect-error "\`num_frames\` must be 161 (10 s) with \`video\`"
check "Infinity VAE picked as the model" "$INF" --set '1.model_name="infinity_vae_d32reg.pth"' \
    --set '1.vae_file="infinity_2b_reg.pth"' --expect-error "is the infinity VAE: pick the transformer"
check "InfinityStar VAE with the Infinity transformer" "$INF" --set '1.vae_file="infinitystar_videovae.pth"' \
    --expect-error "is not the infinity VAE"
check "T5 of the wrong width" "$INF" --set '1.text_encoder="tiny-t5-d64"' --expect-error "64-channel features"
check "official text model without a T5 folder" "$INF" --set '1.text_encoder="none"' --set '1.dtype="fp32"' \
    --expect-error "pick the T5 folder"
check "Infinity size off the schedules" "$INF" --set '5.size="1000x1000"' --expect-error "\`size\` must be one of the 61 choices in its list"
check "video frame count" "$STAR" --set 5.num_frames=20 --expect-error "must be one of [1, 17"
check "APG on an Infinity model" "$INF" --set '3={"class_type": "VPGAPG", "inputs": {"model": ["1", 0], "cfg": 3.0, "norm_threshold": 0.05}}' \
    --expect-error "takes CFG only"

if grep -q "VPG-PICKLE-PAYLOAD-RAN" "$WORK/server.log"; then echo "FAIL the pickle's payload ran"; FAILED=$((FAILED + 1)); fi
if [ -n "${THUMBNAILS:-}" ]; then  # the workflows' own outputs as their template-browser thumbnails
    "$PY" tests/comfy/make_thumbnails.py "$WORK/out" "$THUMBNAILS"
fi
echo "server log: $WORK/server.log; images: $WORK/out; failed checks: $FAILED"
exit $FAILED
