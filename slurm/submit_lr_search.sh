#!/bin/bash
# Write the settings list of an LR-search task and submit it to SLURM.
#
#   bash slurm/submit_lr_search.sh TASK [lr_search.py flags ...]      (make slurm-lr-search TASK=...)
#
# TASK is a task name with an optional preset, e.g. closed_form:paper or fc_mnist:paper; the
# flags select settings (--select n=64) or change the search (--evaluations 200); they go both
# to the listing and to every job. Default (MODE=array): one array element per setting, each a
# Propulate search on one node with FGEXP_RANKS ranks and one GPU per rank; the list is
# $FGEXP_LIST_DIR/lr_<task>.txt. MODE=single: one job (slurm/lr_search.sbatch) that searches
# every selected setting in turn. SBATCH=echo (or DRY_RUN=1) prints the sbatch command instead
# of submitting; the list is written either way. Cluster values come from slurm/cluster.env.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/slurm/lib.sh"
fgexp_enter "$root"

task=${1:-}
if [[ -z "$task" || "$task" == -* ]]; then
    echo "usage: bash slurm/submit_lr_search.sh TASK [lr_search.py flags]  (TASK e.g. closed_form:paper)" >&2
    exit 2
fi
shift
sbatch_cmd=${SBATCH:-sbatch}
[[ "${DRY_RUN:-0}" == 1 ]] && sbatch_cmd=echo
python=${FGEXP_PYTHON:-$FGEXP_VENV/bin/python}
[[ -x "$python" ]] || python=python3
mode=${MODE:-array}
name="lr_${task//[^A-Za-z0-9_-]/-}"
mapfile -t common < <(fgexp_sbatch_common)
mkdir -p "$FGEXP_LOG_DIR" "$FGEXP_LIST_DIR"

if [[ "$mode" == single ]]; then
    "$python" experiments/lr_search.py --task "$task" "$@" --list-settings >/dev/null  # validate
    exec $sbatch_cmd "${common[@]}" --job-name="$name" --time="$FGEXP_TIME_LR" \
        --ntasks="$FGEXP_RANKS"\
        --output="$FGEXP_LOG_DIR/%x_%j.out" slurm/lr_search.sbatch --task "$task" "$@"
elif [[ "$mode" != array ]]; then
    echo "error: MODE must be array or single, got '$mode'" >&2; exit 2
fi

# One line per setting: the full lr_search.py arguments of that array element.
list="$FGEXP_LIST_DIR/$name.txt"
selections=$("$python" experiments/lr_search.py --task "$task" "$@" --list-settings)
extra=$(printf '%q ' "$@")
prefix="--backend propulate --task $(printf '%q' "$task") --ranks $FGEXP_RANKS"
prefix+=" --lr-dir $(printf '%q' "$FGEXP_LR_DIR") --checkpoints $(printf '%q' "$FGEXP_CHECKPOINTS")"
while IFS= read -r selection; do
    printf '%s %s %s\n' "$prefix" "$selection" "${extra% }"
done <<< "$selections" | sed 's/ *$//' > "$list.tmp"
mv "$list.tmp" "$list"
count=$(wc -l < "$list")
echo "wrote $count setting(s) to $list" >&2

$sbatch_cmd "${common[@]}" --job-name="$name" --array="0-$((count - 1))%$FGEXP_MAX_PARALLEL" \
    --time="$FGEXP_TIME_LR" --nodes=1 --ntasks="$FGEXP_RANKS" \
    --output="$FGEXP_LOG_DIR/%x_%A_%a.out" \
    slurm/array.sbatch experiments/lr_search.py "$list"
