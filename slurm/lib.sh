# Shared helpers of the slurm/ scripts (sourced, never run). Cluster values live in cluster.env.

fgexp_root() {
    # The repository: inside a job SLURM_SUBMIT_DIR is where sbatch ran (the submit scripts cd there).
    if [[ -n "${FGEXP_ROOT:-}" ]]; then echo "$FGEXP_ROOT"
    else (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); fi
}

fgexp_load_settings() {
    # shellcheck source=cluster.env
    source "$(fgexp_root)/slurm/cluster.env"
}

# Every script starts here: work in the repository ROOT, exported for jobs and helpers, with the
# cluster settings loaded.
fgexp_enter() {
    cd "$1"
    export FGEXP_ROOT=$1
    fgexp_load_settings
}

# sbatch flags every job shares: partition, account, GPUs per rank, CPUs per rank, extras.
fgexp_sbatch_common() {
    local opts=(--partition="$FGEXP_PARTITION" --cpus-per-task="$FGEXP_CPUS_PER_TASK")
    [[ -n "$FGEXP_GPUS_PER_TASK" ]] && opts+=(--gpus-per-task="$FGEXP_GPUS_PER_TASK")
    [[ -n "$FGEXP_ACCOUNT" ]] && opts+=(--account="$FGEXP_ACCOUNT")
    # shellcheck disable=SC2206  # extras are meant to split into words
    [[ -n "$FGEXP_EXTRA_SBATCH" ]] && opts+=($FGEXP_EXTRA_SBATCH)
    printf '%s\n' "${opts[@]}"
}

# Modules and the virtual environment, inside a job.
fgexp_setup_env() {
    if [[ -n "$FGEXP_MODULES" ]]; then
        if ! command -v module >/dev/null 2>&1; then
            echo "error: FGEXP_MODULES is set but there is no 'module' command" >&2; return 2
        fi
        # shellcheck disable=SC2086
        module load $FGEXP_MODULES
    fi
    if [[ -f "$FGEXP_VENV/bin/activate" ]]; then
        # shellcheck disable=SC1091
        source "$FGEXP_VENV/bin/activate"
    fi
    export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
    export MPLBACKEND=Agg
}

# Line INDEX (0-based, as SLURM_ARRAY_TASK_ID) of a list file.
fgexp_line() {
    local list=$1 index=$2 line
    line=$(sed -n "$((index + 1))p" "$list")
    if [[ -z "$line" ]]; then
        echo "error: $list has no line $((index + 1)) for array index $index" >&2; return 2
    fi
    printf '%s\n' "$line"
}

# A job- and file-name-safe label for a line of arguments: values only, flags and empty
# values dropped, e.g. "closed_form:paper function=sphere n=4 gradient=frog k=4 sampler=normal"
# -> "closed_form-paper_function=sphere_n=4_gradient=frog_k=4_sampler=normal".
fgexp_label() {
    local word words out=() skip=0
    eval "words=($1)"  # the shell words of the line, quotes removed (as array.sbatch runs it)
    for word in "${words[@]}"; do
        if (( skip )); then skip=0; continue; fi
        case "$word" in
            --backend|--ranks|--lr-dir|--checkpoints|--out|--threads) skip=1 ;;  # not the setting
            --*|*=) ;;
            *) [[ " ${out[*]} " == *" $word "* ]] || out+=("$word") ;;  # once each
        esac
    done
    local IFS=_
    local label="${out[*]}"
    label=${label//[^A-Za-z0-9=._+-]/-}
    printf '%s\n' "${label:0:150}"
}
