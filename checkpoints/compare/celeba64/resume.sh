#!/usr/bin/env bash
# Resume the face comparison from this archive: two drivers in the background, one thread each, dividing the
# rows between them (each skips the rows the other holds): the headline pair's rows (EdVAE and dVAE at both
# training seeds) first, then the other quantizers' seed-42 rows. Run from the repository root:
#     bash checkpoints/compare/celeba64/resume.sh          # logs: runs/compare/celeba64/logs/driver_{1,2}.log
# Before the machine goes away: the same compare command with --snapshot (see README.md), then commit this folder.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
COMMON=(--stage1 configs/stage1/celeba64_ship.yaml --stage2 configs/stage2/celeba64_ship.yaml
        --out runs/compare/celeba64 --archive checkpoints/compare/celeba64 --threads 1 --quiet
        s1.train.progress_bar=false s2.train.progress_bar=false)
mkdir -p runs/compare/celeba64/logs
for i in 1 2; do
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nohup bash -c '
        "$0" -m stage2_prior.compare "${@}" --quantizers edvae dvae --seeds 42 1773 &&
        "$0" -m stage2_prior.compare "${@}" --quantizers gs_vqvae vqvae_ema sqvae vqste_pp --seeds 42' \
        "$PY" "${COMMON[@]}" \
        > "runs/compare/celeba64/logs/driver_$i.log" 2>&1 &
    echo "driver $i: pid $!, log runs/compare/celeba64/logs/driver_$i.log"
    sleep 20   # the second driver finds the first one's row locked and takes the next
done
