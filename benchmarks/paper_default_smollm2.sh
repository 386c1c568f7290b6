#!/usr/bin/env bash
# The paper's default federated protocol (the paper's README: 20 clients, 2 sampled, 20 rounds, 10 local
# steps, batch 16, AdamW 5e-4, top-K 32, two rank-32 alpha-64 q/v LoRAs, EEQA on) on the embedded
# SmolLM2-135M, 2 CPU cores: builds the two LoRAs (cpu-mini zh and code skills), runs SmartFed on
# cpu_mini.zh_code_gap, records time per round in benchmarks/results/fed_round_smollm2.json.
# Usage: bash benchmarks/paper_default_smollm2.sh [OUT_DIR]   (rerun to resume)
set -euo pipefail
OUT=${1:-runs/paper_default}
SF=.venv/bin/smartfed
for skill in zh code; do
  if [ ! -f "$OUT/lora_$skill/adapter_model.safetensors" ]; then
    $SF pool train --model_name_or_path default --dtype bfloat16 --dataset "cpu_mini.skill.$skill" --rank 32 \
      --alpha 64 --max_steps 60 --batch_size 4 --learning_rate 2e-3 \
      --output_dir "$OUT/lora_$skill" --no_progress
  fi
done
ARGS=(--model_name_or_path default --dtype bfloat16 --lora_pool "$OUT/lora_zh,$OUT/lora_code"
      --task cpu_mini.zh_code_gap --num_clients 20 --sample_clients 2 --num_rounds 20
      --local_steps 10 --batch_size 16 --learning_rate 5e-4 --topk_experts 32 --enable_eeqa
      --max_new_tokens 40 --eval_limit 50 --output_dir "$OUT/run")
RESUME=()
[ -f "$OUT/run/checkpoint/latest.json" ] && RESUME=(--resume)
$SF train "${ARGS[@]}" "${RESUME[@]}"
.venv/bin/python benchmarks/fed_round_smollm2.py "$OUT/run" \
  --command "smartfed train ${ARGS[*]}" --out benchmarks/results/fed_round_smollm2.json \
  --note "paper-default protocol on SmolLM2-135M bf16, 2 cores; LoRAs: smartfed pool train r=32 alpha=64 q/v, 60 steps batch 4 on cpu_mini.skill.zh / skill.code"
