"""The paper's published numbers (``data_files/reference_numbers.csv``) and side-by-side comparison.

In the demo and smoke profiles the embedded dataset stands in for a paper
dataset (``PAPER_DATASET_FOR``); the comparison says which paper cell a row is
set against, so nobody mistakes a digits number for a CIFAR-10 reproduction.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Dict, Iterable, Mapping, Optional

import pandas as pd

# Which paper column an embedded dataset is shown next to.
PAPER_DATASET_FOR: Dict[str, str] = {"digits": "cifar10", "shapes": "voc"}


@lru_cache(maxsize=1)
def _reference_table() -> pd.DataFrame:
    with resources.files("greenkd_utils").joinpath("data_files", "reference_numbers.csv").open() as f:
        return pd.read_csv(f)


def headline_metrics(score: str = "accuracy_pct") -> Dict[str, str]:
    """Our columns -> the paper's metrics for a table's headline: its ``score`` column (accuracy, or mAP for
    detection), GFLOPs (M), kWh and CO2. The paper's kWh include its PUE, so ours with PUE stand beside them."""
    return {
        score: score,
        "training_gflops_millions": "training_gflops_millions",
        "energy_kwh_pue": "energy_kwh",
        "co2_g": "co2_g",
    }


def load_reference(table: Optional[str] = None) -> pd.DataFrame:
    """The paper's numbers as a long table (table, dataset, teacher, student, loss, method, metric, value, std, note)."""
    df = _reference_table().copy()
    return df if table is None else df[df["table"] == table].reset_index(drop=True)


def paper_value(table: str, dataset: str, method: str, metric: str, loss: Optional[str] = None, **match) -> tuple:
    """(value, std) of one paper cell, NaNs where the paper has none."""
    df = load_reference(table)
    rows = df[(df["dataset"] == PAPER_DATASET_FOR.get(dataset, dataset)) & (df["method"] == method) & (df["metric"] == metric)]
    if loss is not None:
        rows = rows[rows["loss"] == loss]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        return float("nan"), float("nan")
    row = rows.iloc[0]
    return float(row["value"]), float(row["std"])


def compare_with_paper(
    ours: pd.DataFrame,
    table: str,
    metrics: Mapping[str, str] | Iterable[str],
    keys: Iterable[str] = ("dataset", "method"),
    extra_match: Iterable[str] = (),
) -> pd.DataFrame:
    """A long table: for each row of ``ours`` and each metric, our value, the paper's, and ours - paper.

    ``ours`` has one column per metric plus the key columns. ``metrics`` maps our column to the
    paper's metric name (a plain list means the names agree): the paper's kWh include its PUE,
    so ``{"energy_kwh_pue": "energy_kwh"}`` is the like-for-like pairing; ``extra_match`` names further columns (e.g. ``loss``, ``teacher``) that
    must also agree with the paper's row.
    """
    pairs = dict(metrics) if isinstance(metrics, Mapping) else {m: m for m in metrics}
    records = []
    for _, row in ours.iterrows():
        match = {c: row[c] for c in extra_match}
        for metric, paper_metric in pairs.items():
            paper, paper_std = paper_value(table, row["dataset"], row["method"], paper_metric, **match)
            value = float(row[metric])
            record = {k: row[k] for k in keys}
            record.update(match)
            record.update(
                {
                    "paper_dataset": PAPER_DATASET_FOR.get(row["dataset"], row["dataset"]),
                    "metric": metric,
                    "ours": value,
                    "ours_std": float(row.get(f"{metric}_std", float("nan"))),
                    "paper": paper,
                    "paper_std": paper_std,
                    "difference": value - paper,
                    "ratio": value / paper if paper else float("nan"),
                    "energy_source": row.get("energy_source", ""),
                }
            )
            records.append(record)
    return pd.DataFrame.from_records(records)
