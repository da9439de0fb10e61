"""What every figure shares: gradient colours, labels and order, the provenance stamp, saving.

Importing this module selects matplotlib's Agg backend: figures are only ever written to files.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fgexp import paper  # noqa: E402

# One colour and label per gradient, shared by every figure (paper notation).
GRADIENT_STYLE = {
    "bp": ("black", "BP"),
    "fg-mean": ("tab:blue", "FG mean"),
    "fg-sum": ("tab:orange", "FG sum"),
    "fg-mean-normalized": ("tab:green", "FG mean (normalized)"),
    "fg-sum-normalized": ("tab:olive", "FG sum (normalized)"),
    "frog": ("tab:red", "FROG (projection)"),
}
# Legends and tables list gradients in the paper's order: bp, FG mean, FROG, then the rest.
GRADIENT_ORDER = tuple(paper.GRADIENTS)


def gradient_rank(gradient: str) -> int:
    """Position of a gradient label in GRADIENT_ORDER; unknown labels go last."""
    return GRADIENT_ORDER.index(gradient) if gradient in GRADIENT_ORDER else len(GRADIENT_ORDER)


def gradient_colour(gradient: str) -> str:
    return GRADIENT_STYLE.get(gradient, ("tab:gray", gradient))[0]


def gradient_name(gradient: str) -> str:
    return GRADIENT_STYLE.get(gradient, ("", gradient))[1]


def read_manifest(path: Path | str) -> dict | None:
    """A run directory's manifest, None when it is missing; ValueError naming a malformed one."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: malformed manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: malformed manifest (expected a JSON object)")
    return manifest


def provenance(manifest_path: Path | str) -> str:
    """One line naming the preset, machine and commit that made a CSV (from its manifest)."""
    m = read_manifest(manifest_path)
    if m is None:
        return f"source: {Path(manifest_path).name} missing"
    env = m.get("environment", {})
    commit = str(m.get("git_commit", "unknown"))[:12]
    return (f"preset {m.get('preset')} | {env.get('device', 'cpu')}, {env.get('cpu_count')} cores"
            f" | commit {commit} | {str(m.get('ended') or m.get('started'))[:10]}")


def stamp(fig: plt.Figure, text: str) -> None:
    """Put a provenance line in the bottom-right corner of a figure."""
    fig.text(0.995, 0.003, text, ha="right", va="bottom", fontsize=6, color="0.4")


def save(fig: plt.Figure, figures_dir: Path | str, stem: str) -> list[Path]:
    """Write FIG as PDF and PNG; returns the paths."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = [figures_dir / f"{stem}.pdf", figures_dir / f"{stem}.png"]
    # No creation date: replotting unchanged CSVs leaves the committed PDFs byte-identical.
    fig.savefig(paths[0], bbox_inches="tight", metadata={"CreationDate": None})
    fig.savefig(paths[1], bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency)."""
    def cell(v):
        return floatfmt.format(v) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
