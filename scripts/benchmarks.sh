#!/usr/bin/env bash
# Regenerate docs/BENCHMARKS.md (tables) and docs/img/*.png (plots) on this machine.
# Builds the FlashHead model directories once into ~/.cache/flashhead/bench-models (or $FLASHHEAD_BENCH_DIR).
# Usage: bash scripts/benchmarks.sh [smollm2-135m gemma-3-270m]
#        SKIP_EVAL=1 bash scripts/benchmarks.sh   (speed only: keeps docs/bench/eval-*.json as they are)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
MODELS=${*:-smollm2-135m gemma-3-270m}
WORK=${FLASHHEAD_BENCH_DIR:-$HOME/.cache/flashhead/bench-models}
RAW=docs/bench
mkdir -p "$WORK" docs/img "$RAW"
declare -A PROBES=([smollm2-135m]=64,128,192,256,288,512,1024 [gemma-3-270m]=128,256,384,768,1024,1536)
for m in $MODELS; do
  dir="$WORK/$m-flashhead"
  [ -f "$dir/flash_head_assets/flashhead.json" ] || flashhead build "$m" -o "$dir"
  default=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['config']['probes'])" "$dir/flash_head_assets/flashhead.json")
  [ -n "${SKIP_EVAL:-}" ] || flashhead eval "$dir" --domain prose --probes "${PROBES[$m]},$default" --max-positions 4096 --prompts 8 --new-tokens 24 \
    --json --plot "docs/img/eval-$m.png" > "$RAW/eval-$m.json"
  flashhead bench "$dir" --batch 1,4,16,64,256 --repeats 20 --new-tokens 32 --decode-repeats 3 \
    --json --plot "docs/img/bench-$m.png" > "$RAW/bench-$m.json"
  # llama.cpp: dense vs FlashHead vs verified decoding (exact), then the exact mode on two languages
  # no calibration source covers, then the check's cost per position and llama.cpp's settings
  flashhead bench "$dir" --backend llamacpp --gguf "$m" --batch 1,4,8 --exact --audit 64 --new-tokens 128 \
    --decode-repeats 3 --json > "$RAW/llamacpp-$m.json"
  for d in polish chinese; do
    flashhead bench "$dir" --backend llamacpp --gguf "$m" --batch 1 --exact --new-tokens 128 --decode-repeats 3 \
      --domain "$d" --json > "$RAW/exact-$m-$d.json"
  done
  # context-aware probes: the suite with and without them (in-domain), then the languages check
  e=$(python -c "from flashhead.core.context import default_for; print(default_for($default))")
  [ "$m" = gemma-3-270m ] && n=1024 || n=2048
  [ -n "${SKIP_EVAL:-}" ] || { flashhead eval "$dir" --suite --prompts 0 --max-positions $n --context-probes 0 --json \
      > "$RAW/suite-context-$m-e0.json"
    flashhead eval "$dir" --suite --prompts 0 --max-positions $n --json > "$RAW/suite-context-$m.json"
    [ "$m" != gemma-3-270m ] || flashhead eval "$dir" --languages --context-probes 0,$e --max-positions 1024 --json \
      > "$RAW/languages-$m.json"; }
  # leave one domain out: a build per suite domain that never saw it, at the default's probes, with
  # and without the context probes (benchmarks/left_out.py; ~25 minutes per model on 2 cores)
  [ -n "${SKIP_EVAL:-}" ] || python benchmarks/left_out.py "$m" "$dir" --json "$RAW/left-out-$m.json"
  # beside llama.cpp's own quantizations of the same GGUF (SmolLM2: Gemma's package ships its
  # Q4_K_M only), the default build and one that never saw licences
  if [ "$m" = smollm2-135m ] && [ -z "${SKIP_EVAL:-}" ]; then
    flashhead eval "$dir" --backend llamacpp --quantizations q8_0,q4_k_m --json > "$RAW/quant-$m.json"
    left="$WORK/$m-flashhead-nolegal"
    [ -f "$left/flash_head_assets/flashhead.json" ] || flashhead build "$m" -o "$left" \
      --calibrate-on prose docs code german russian chat spanish italian self
    flashhead eval "$left" --backend llamacpp --domain legal --quantizations q8_0,q4_k_m --json \
      > "$RAW/quant-$m-legal-left-out.json"
    python benchmarks/quantizations.py "$RAW/quant-$m.json" "$RAW/quant-$m-legal-left-out.json" --into docs/FIDELITY.md
  fi
  python benchmarks/dense_check.py "$m" --json "$RAW/dense-check-$m.json"
  python benchmarks/llamacpp_settings.py "$m" --json "$RAW/llamacpp-settings-$m.json"
  if [ "$m" = gemma-3-270m ]; then
    # flashhead serve (FlashHead, exact, dense) against llama-cpp-python's own server (its extra, here only)
    pip install -q "llama-cpp-python[server]==$(python -c 'import llama_cpp; print(llama_cpp.__version__)')"
    python benchmarks/serve.py "$m" --dir "$dir" --json "$RAW/serve-$m.json"
    python benchmarks/serve.py --render "$RAW/serve-$m.json" --into docs/SERVE.md
  fi
done
# the Amdahl report (transformers fp32/bf16, vLLM-CPU bf16; batch 1) on the same directories
FLASHHEAD_DENSE_RULE=0 python benchmarks/amdahl.py --json "$RAW/amdahl.json" \
  --dir $(for m in $MODELS; do printf '%s=%s ' "$m" "$WORK/$m-flashhead"; done)
# the CPU step: native kernels against torch's ops (fp32, bf16), and int4 against int8 stage 1
for dt in float32 bfloat16; do
  python benchmarks/native_step.py $(for m in $MODELS; do printf '%s ' "$WORK/$m-flashhead"; done) --batch 1 4 16 \
    --dtype $dt --json "$RAW/native-step-$dt.json"
done
for m in $MODELS; do python benchmarks/int4_stage1.py "$WORK/$m-flashhead" --json "$RAW/int4-stage1-$m.json"; done
[ -n "${SKIP_EVAL:-}" ] || { [ ! -f "$RAW/languages-gemma-3-270m.json" ] || python benchmarks/languages.py "$RAW/languages-gemma-3-270m.json" --into docs/FIDELITY.md
  python benchmarks/languages.py --into docs/FIDELITY.md --suite $(for m in $MODELS; do
    printf '%s=%s,%s ' "$m" "$RAW/suite-context-$m-e0.json" "$RAW/suite-context-$m.json"; done); }
[ -n "${SKIP_EVAL:-}" ] || python benchmarks/left_out.py --into docs/FIDELITY.md --table $(for m in $MODELS; do
  printf '%s ' "$RAW/left-out-$m.json"; done)
python benchmarks/render_benchmarks.py $MODELS > docs/BENCHMARKS.md
python benchmarks/llamacpp_tables.py --into docs/LLAMACPP.md --check-into docs/KERNELS.md
echo "wrote docs/BENCHMARKS.md"
