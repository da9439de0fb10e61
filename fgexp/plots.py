"""The plotting stage: one function per figure or table, DataFrame in, matplotlib Figure out.

Nothing here computes results: figures are rebuilt from the CSVs under results/. Means,
spreads and confidence intervals are computed here, and always shown with n.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# One colour and label per gradient, shared by every figure (paper notation).
GRADIENT_STYLE = {
    "bp": ("black", "BP"),
    "fg-mean": ("tab:blue", "FG mean"),
    "fg-sum": ("tab:orange", "FG sum"),
    "fg-mean-normalized": ("tab:green", "FG mean (normalized)"),
    "fg-sum-normalized": ("tab:olive", "FG sum (normalized)"),
    "frog": ("tab:red", "FROG (projection)"),
}


def provenance(manifest_path: Path | str) -> str:
    """One line naming the preset, machine and commit that made a CSV (from its manifest)."""
    path = Path(manifest_path)
    if not path.exists():
        return f"source: {path.name} missing"
    m = json.loads(path.read_text())
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
    fig.savefig(paths[0], bbox_inches="tight")
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
