"""Validate the learning-rate rules (fgexp.lr.rules) against every searched LR table.

    python experiments/lr_rules.py                      (make lr-rules)

Writes, under --out: closed_form_<rule>.csv (an LR table of each rule's rates, read by
experiments/closed_form.py --lr-table for the outcome run), predictions.csv (from our tables,
results/lrs/*.csv, source 'ours') and paper_lrs_predictions.csv (from the authors' published
rates, --paper-lrs, paper Appendix B, source 'authors': a table of its own, never mixed into
ours), one row per forward-gradient setting and rule: searched rate, bp's rate, predicted rate;
and validation.csv (the fraction within 2x and 10x per source and function or model).
No training: only model builds, to count a network's activations.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import _common

from fgexp.lr import rules
from fgexp.lr.table import read_table
from fgexp.results import git_commit
from fgexp.store import atomic_write_text, rows_to_csv

OUR_TABLES = ("closed_form", "fc_mnist", "resnet_vit")
AUTHOR_FILES = ("math", "math__custom_tangents", "fc_nns", "sota_nns")


def _authors(paper_dir: Path) -> dict[str, list[dict]]:
    """Authors' rows per table; the cone file needs math.csv's bp, so files share a table."""
    by_table: dict[str, list[dict]] = {}
    for name in AUTHOR_FILES:
        with open(paper_dir / f"{name}.csv", newline="", encoding="utf-8") as fh:
            table, rows = rules.authors_rows(name, list(csv.DictReader(fh)))
        by_table.setdefault(table, []).extend(rows)
    return by_table


@_common.cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr-dir", default="results/lrs", help="our searched LR tables")
    parser.add_argument("--paper-lrs", default="../shared/reference/paper_lrs",
                        help="the authors' published rates (math.csv, fc_nns.csv, ...)")
    parser.add_argument("--out", default="results/lr_rules", help="where the CSVs go")
    args = parser.parse_args(argv)
    lr_dir, paper_dir, out = Path(args.lr_dir), Path(args.paper_lrs), Path(args.out)
    for path in [lr_dir / f"{t}.csv" for t in OUR_TABLES] + \
            [paper_dir / f"{f}.csv" for f in AUTHOR_FILES]:
        if not path.is_file():
            raise _common.UsageError(f"no {path}; see docs/lr_rules.md")
    preds = []
    for table in OUR_TABLES:
        preds += rules.predictions(read_table(lr_dir / f"{table}.csv"), table, "ours")
    for table, rows in _authors(paper_dir).items():
        preds += rules.predictions(rows, table, "authors")
    out.mkdir(parents=True, exist_ok=True)
    # The closed-form rates of each rule as an LR table, for the outcome run (docs/lr_rules.md).
    closed = read_table(lr_dir / "closed_form.csv")
    for rule in rules.RULES:
        atomic_write_text(out / f"closed_form_{rule}.csv",
                          rows_to_csv(rules.predicted_table(closed, "closed_form", rule),
                                      list(closed[0])))
    # The authors' rates stay in a table of their own, labelled, apart from ours.
    for name, source in (("predictions.csv", "ours"), ("paper_lrs_predictions.csv", "authors")):
        atomic_write_text(out / name, rows_to_csv([p for p in preds if p["source"] == source],
                                                  rules.PREDICTION_COLUMNS))
    atomic_write_text(out / "validation.csv",
                      rows_to_csv(rules.fractions(preds), rules.VALIDATION_COLUMNS))
    manifest = {"command": "make lr-rules", "git_commit": git_commit(),
                "inputs": [str(lr_dir / f"{t}.csv") for t in OUR_TABLES]
                + [str(paper_dir / f"{f}.csv") for f in AUTHOR_FILES],
                "rules": list(rules.RULES)}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {out / 'predictions.csv'}, {out / 'paper_lrs_predictions.csv'} "
          f"({len(preds)} rows together), {out / 'validation.csv'}")


if __name__ == "__main__":
    sys.exit(main())
