"""Command line shared by fc_mnist.py and resnet_vit.py: flags -> NetConfig -> runs -> CSV.

Both scripts are the same experiment with different presets (fgexp.nn.runs.NetConfig).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import _common

# Flags that set the NetConfig field of their name (--epochs sets max_epochs, its dest).
FIELDS = ("models", "datasets", "widths", "vit_patch", "seeds", "mode", "perturbation",
          "max_epochs", "patience", "batch_size", "train_limit", "eval_limit", "lr", "lr_table",
          "lr_rule", "data_root", "activity_tangents")


def parser(description: str, presets: dict, name: str):
    from fgexp.directional import MODES, PERTURBATIONS
    from fgexp.nn.activity import SCHEMES
    from fgexp.paper import GRADIENTS, MODELS
    p = _common.make_parser(description, presets)
    p.add_argument("--models", type=_common.str_list, help=f"comma list: {', '.join(MODELS)}")
    p.add_argument("--datasets", type=_common.str_list,
                   help="comma list: mnist, cifar10 (torchvision), mnist5k (offline), synthetic")
    p.add_argument("--widths", type=_common.int_list, help="FC hidden widths, e.g. 256,1024; the ViT's hidden size "
                   "(ResNet18 has none)")
    p.add_argument("--vit-patch", type=int, help="the ViT's patch size in pixels (default: the "
                   "preset's; the paper's is 4); must divide the image size")
    p.add_argument("--gradients", type=_common.str_list,
                   help=f"comma list of {', '.join(GRADIENTS)}, each optionally ':k' "
                        "(e.g. bp,fg-mean:1,frog:4); labels without ':k' take --k, or k = 1")
    p.add_argument("--k", type=_common.int_list,
                   help="tangent counts for labels without ':k'; alone, every forward gradient "
                        "of the preset takes them (bp stays)")
    p.add_argument("--seeds", type=_common.int_list, help="e.g. 0,1,2")
    p.add_argument("--mode", choices=MODES,
                   help="forward: forward-mode AD; simulated: backprop then project (paper)")
    p.add_argument("--perturbation", choices=PERTURBATIONS)
    p.add_argument("--activity-tangents", choices=SCHEMES,
                   help="activity tangent scheme (docs/network_gradients.md); default: the "
                        "preset's, else each model's own (independent with BatchNorm)")
    p.add_argument("--epochs", dest="max_epochs", type=int, help="maximum epochs per run")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs")
    p.add_argument("--batch-size", type=int, help="training batch (default 64 MNIST, 128 CIFAR)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--eval-limit", type=int, help="... and N validation and N test images")
    p.add_argument("--lr", type=_common.positive_float,
                   help="one learning rate for every run (skips the table)")
    p.add_argument("--lr-table", help=f"LR table (default: the preset's, results/lrs/{name}.csv)")
    p.add_argument("--lr-rule", help="forward-gradient rates from this rule of fgexp.lr.rules "
                   "(isotropic, same-as-bp) applied to bp's rate in the LR table "
                   "(docs/lr_rules.md)")
    p.add_argument("--data-root", help="torchvision data root (MNIST/raw, cifar-10-batches-py)")
    p.add_argument("--download", action="store_true", help="let torchvision download data")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--checkpoints", help="per-run checkpoint directory (default "
                                         f"scratch/checkpoints/{name}); deleted when a run ends")
    p.add_argument("--runs-per-batch", type=int,
                   help="FC runs of one width trained together on one device as one batched "
                        "model (fgexp.nn.batched; default 4, about the CPU optimum; a GPU takes "
                        "all 24 runs of a width). With --list-runs: one line per batch (whole "
                        "gradients, all seeds) instead of one per run")
    p.add_argument("--list-runs", action="store_true",
                   help="print one line of arguments per run (a SLURM array list), then exit")
    return p


def run_lines(args, cfg, runs) -> list[str]:
    """One argument line per run: the preset, the run's sweep point and the passed-through
    options (for slurm/submit_array.sh; labels come from the values)."""
    import shlex
    lines = []
    for r in runs:
        point = ["--preset", args.preset, "--models", r.model, "--datasets", r.dataset,
                 *(["--widths", str(r.width)] if r.width else []),
                 "--gradients", r.gradient + (f":{r.k}" if r.k else ""), "--seeds", str(r.seed)]
        lines.append(shlex.join([*point, *kept_options(args)]))
    return lines


def kept_options(args) -> list[str]:
    """The options every listed line passes through."""
    keep = []
    for flag, value in (("--out", args.out), ("--data-root", args.data_root),
                        ("--lr-table", args.lr_table), ("--lr-rule", args.lr_rule),
                        ("--vit-patch", args.vit_patch),
                        ("--epochs", args.max_epochs),
                        ("--mode", args.mode), ("--perturbation", args.perturbation),
                        ("--activity-tangents", args.activity_tangents)):
        if value is not None:
            keep += [flag, str(value)]
    return keep


def batch_lines(args, cfg) -> list[str]:
    """--list-runs with --runs-per-batch N: one line per model shape and chunk of whole
    gradients (all seeds each), at most N runs a line (at least one gradient), for one SLURM
    task per device."""
    import shlex

    from fgexp.nn import runs as nets
    per_line = max(1, args.runs_per_batch // len(cfg.seeds))
    lines = []
    for m in cfg.models:
        for d in cfg.datasets:
            for w in nets.widths_of(cfg, m):
                for i in range(0, len(cfg.gradients), per_line):
                    point = ["--preset", args.preset, "--models", m, "--datasets", d,
                             *(["--widths", str(w)] if w else []),
                             "--gradients", ",".join(cfg.gradients[i:i + per_line]),
                             "--seeds", ",".join(map(str, cfg.seeds)),
                             "--runs-per-batch", str(args.runs_per_batch)]
                    lines.append(shlex.join([*point, *kept_options(args)]))
    return lines


def config_from(args, preset):
    """The preset with the given flags; --gradients and --k follow fgexp.paper.with_k."""
    from fgexp.paper import with_k
    given = {f: tuple(v) if isinstance(v, list) else v
             for f, v in _common.given(args, FIELDS).items()}
    if args.gradients is not None or args.k is not None:
        given["gradients"] = with_k(args.gradients, args.k, preset.gradients)
    if args.download:
        given["download"] = True
    return dataclasses.replace(preset, **given)


def pick_device(name: str | None):
    """--device as a torch device (default cuda when available); UsageError if unusable."""
    import torch
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise _common.UsageError(f"--device {name!r}: not a torch device (e.g. cpu, cuda, "
                                 "cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _common.UsageError(f"--device {name}: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise _common.UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                                 "device(s)")
    return device


def run(argv, description: str, presets: dict, name: str) -> int:
    args = parser(description, presets, name).parse_args(argv)
    _common.setup_torch(args.threads)
    from tqdm import tqdm

    from fgexp.nn import runs as nets
    from fgexp.results import RunDir, probe_writable, remove_stale_temporaries
    cfg = config_from(args, presets[args.preset])
    nets.validate(cfg)
    if cfg.perturbation == "activity":
        from fgexp.nn.activity import check_models_scheme
        check_models_scheme(cfg.models, cfg.activity_tangents)
    if cfg.lr is None:
        _common.check_table(cfg.lr_table, "--lr-table")
    if args.runs_per_batch is not None and args.runs_per_batch < 1:
        raise _common.UsageError(f"--runs-per-batch must be >= 1 (R >= 1), got "
                                 f"{args.runs_per_batch}")
    if args.list_runs:
        lines = (batch_lines(args, cfg) if args.runs_per_batch
                 else run_lines(args, cfg, nets.runs(cfg)))
        print("\n".join(lines))
        return 0
    device = pick_device(args.device)
    rd = RunDir(args.out, name, {**nets.config_record(cfg), "preset": args.preset},
                nets.COLUMNS, nets.KEY_COLUMNS, timing_columns=nets.TIMING_COLUMNS).check()
    ckpt_dir = Path(args.checkpoints or f"scratch/checkpoints/{name}")
    probe_writable(ckpt_dir, "checkpoint directory")
    remove_stale_temporaries(ckpt_dir)
    todo = [r for r in nets.runs(cfg) if r.cell_id not in rd.done()]
    lrs = nets.learning_rates(cfg, f"{name}:{args.preset}", todo)
    data = {d: nets.load_data(cfg, d) for d in dict.fromkeys(r.dataset for r in todo)}
    rd.start(args.preset)
    ckpts = {r: nets.checkpoint_for(ckpt_dir, r, cfg, lrs[r], rd.dir, device) for r in todo}

    def store(r, rows):
        rd.write_cell(r.cell_id, rows)
        ckpts[r].path.unlink(missing_ok=True)

    batched = [r for r in todo if nets.batchable(r, cfg)]
    per_batch = args.runs_per_batch or (4 if device.type == "cpu" else len(batched) or 1)
    for batch in tqdm(nets.batches_of(batched, per_batch), desc=f"{name} batches",
                      unit="batch", disable=args.no_progress or not batched):
        nets.train_batch(batch, cfg, data[batch[0].dataset], lrs, [ckpts[r] for r in batch],
                         device, progress=not args.no_progress, on_end=store)
    for r in tqdm([r for r in todo if r not in batched], desc=name, unit="run",
                  disable=args.no_progress or len(batched) == len(todo)):
        store(r, nets.run_rows(r, cfg, data[r.dataset], lrs[r], ckpts[r], device,
                               progress=not args.no_progress))
    rd.finish()
    print(f"{name}: {len(todo)} runs trained, results in {rd.csv_path}", file=sys.stderr)
    return 0
