"""Tables 7 and 8 beside the paper: each has one paper data set, whatever data set ours ran on.

Their settings per profile (``configs/extra_tables.yaml``) are read by :mod:`greenkd_utils.settings.extra_tables`.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from greenkd_utils.paper import reference


def compare_with_paper_dataset(
    ours: pd.DataFrame,
    table: str,
    metrics: Mapping[str, str],
    paper_dataset: str,
    keys: Iterable[str] = ("method",),
    extra_match: Iterable[str] = (),
) -> pd.DataFrame:
    """:func:`reference.compare_with_paper` against the paper's ``paper_dataset`` column.

    Tables 7 (Tiny ImageNet) and 8 (CIFAR-10) each have one paper data set, which is not
    the one ``PAPER_DATASET_FOR`` maps the demo's digits to; the ``dataset`` column keeps ours.
    """
    if ours.empty:
        return pd.DataFrame()
    renamed = ours.assign(our_dataset=ours["dataset"], dataset=paper_dataset)
    out = reference.compare_with_paper(
        renamed, table, metrics, keys=("our_dataset",) + tuple(keys), extra_match=tuple(extra_match)
    )
    return out.rename(columns={"our_dataset": "dataset"})
