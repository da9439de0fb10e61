#!/bin/bash
# Submit a job array of experiment-script runs: one line of LIST = the arguments of one run.
#
#   bash slurm/submit_array.sh SCRIPT LIST [JOB_NAME [more sbatch flags ...]]
#   e.g. bash slurm/submit_array.sh experiments/fc_mnist.py slurm/lists/fc_mnist.txt fc_mnist
#
# Each element runs `srun python SCRIPT <line>` with FGEXP_RUN_TASKS ranks (one GPU each) and
# FGEXP_TIME_RUN; job and log names encode the line (slurm/lib.sh, fgexp_label). Write lines
# with `printf '%q '` if an argument holds spaces. SBATCH=echo (or DRY_RUN=1) prints the sbatch
# command instead of submitting. Cluster values come from slurm/cluster.env.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/slurm/lib.sh"
fgexp_enter "$root"

script=${1:-}; list=${2:-}
if [[ -z "$script" || -z "$list" ]]; then
    echo "usage: bash slurm/submit_array.sh SCRIPT LIST [JOB_NAME]" >&2; exit 2
fi
[[ -f "$script" ]] || { echo "error: no script $script" >&2; exit 2; }
[[ -s "$list" ]] || { echo "error: list $list is missing or empty" >&2; exit 2; }
name=${3:-$(basename "$script" .py)}
shift $(( $# < 3 ? $# : 3 ))  # what is left goes to sbatch (e.g. --parsable, --dependency=...)
sbatch_cmd=${SBATCH:-sbatch}
[[ "${DRY_RUN:-0}" == 1 ]] && sbatch_cmd=echo
mapfile -t common < <(fgexp_sbatch_common)
count=$(grep -c . "$list")
if [[ "$count" != "$(wc -l < "$list")" ]]; then
    echo "error: $list has empty lines; one run per line, no blanks" >&2; exit 2
fi
mkdir -p "$FGEXP_LOG_DIR"

$sbatch_cmd "${common[@]}" --job-name="$name" --array="0-$((count - 1))%$FGEXP_MAX_PARALLEL" \
    --time="$FGEXP_TIME_RUN" --nodes=1 --ntasks="$FGEXP_RUN_TASKS" \
    --output="$FGEXP_LOG_DIR/%x_%A_%a.out" \
    "$@" slurm/array.sbatch "$script" "$list"
