#!/usr/bin/env bash
# The core-issue benchmark set on the embedded model (writes JSON under bench/results/).
# Long: about an hour on a 2-core CPU.  Usage: bash bench/run_core.sh [N_SEQ]
set -euo pipefail
cd "$(dirname "$0")/.."
N_SEQ=${1:-60}
DATA=${KEDIT_DATA_DIR:-../shared/data}/counterfact/counterfact-edit.json
mkdir -p bench/results
python bench/value_speed.py --n 10 --out bench/results/value_speed.json
python bench/speed.py --n 20 --out bench/results/speed.json
for m in memit alphaedit lyaplock ft; do
  kedit --quiet bench --method "$m" --data "$DATA" --n "$N_SEQ" --batch-size 20 --mode sequential \
        --out "bench/results/seq-$m" --no-progress --no-save-edits
done
