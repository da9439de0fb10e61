#!/bin/bash
# Submit every training run of a network experiment as one SLURM job array (one run = one
# (model, data set, width, gradient, k, seed) = one array element, one GPU).
#
#   bash slurm/submit_training.sh fc_mnist   [script flags, e.g. --widths 4096]
#   bash slurm/submit_training.sh resnet_vit [script flags, e.g. --datasets cifar10]
#
# The preset is paper unless the flags name another. Steps: fetch MNIST/CIFAR-10 into
# FGEXP_DATA_ROOT once on this (login) node, so array elements never download at the same time;
# write the list slurm/lists/train_<name>.txt (experiments/<name>.py --list-runs); submit it with
# slurm/submit_array.sh. Finished runs are skipped when an element reruns (their cell shards
# exist), and a killed run resumes from its last epoch checkpoint. Elements share --out (default
# results/): each writes its own cell shards, so no lock is needed (docs/results_store.md).
# SBATCH=echo prints the sbatch command instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/slurm/lib.sh"
fgexp_enter "$root"
: "${FGEXP_DATA_ROOT:=data}"  # torchvision root: MNIST/raw and cifar-10-batches-py

name=${1:-}
case "$name" in
    fc_mnist) datasets="mnist" ;;
    resnet_vit) datasets="mnist cifar10" ;;
    *) echo "usage: bash slurm/submit_training.sh fc_mnist|resnet_vit [script flags]" >&2; exit 2 ;;
esac
shift
python=python3
[[ -x "$FGEXP_VENV/bin/python" ]] && python="$FGEXP_VENV/bin/python"
preset=(--preset paper)
[[ " $* " == *" --preset "* ]] && preset=()

for ds in $datasets; do
    "$python" -c "from fgexp.nn.data import load; load('$ds', '$FGEXP_DATA_ROOT', download=True)"
done
mkdir -p "$FGEXP_LIST_DIR"
list="$FGEXP_LIST_DIR/train_$name.txt"
"$python" "experiments/$name.py" "${preset[@]}" --data-root "$FGEXP_DATA_ROOT" "$@" --list-runs > "$list"
echo "$(wc -l < "$list") runs listed in $list"
bash slurm/submit_array.sh "experiments/$name.py" "$list" "train_$name"
