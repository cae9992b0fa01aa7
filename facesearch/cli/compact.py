"""`facesearch compact`: merge an index's segments and drop removed faces (also upgrades old indexes).

The work is `facesearch.open(index).compact(...)`; no photo is read or embedded.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from facesearch.cli.options import IndexOpt, JsonOpt, emit, friendly_errors, index_dir


@friendly_errors
def compact(
    index: IndexOpt = None,
    index_type: Annotated[Optional[str], typer.Option("--index-type", help="Rewrite the segments as this type: auto, flat, hnsw or ivf (default: keep the index's).")] = None,
    memory_budget: Annotated[Optional[str], typer.Option("--memory-budget", help="Bytes the search structures may take, e.g. 8G or 512M (default: keep the index's).")] = None,
    target_recall: Annotated[Optional[float], typer.Option("--target-recall", min=0.5, max=1.0, help="Share of the faces near or above the decision threshold the merged segment must find, against exact search, beside identity agreement 0.999 (default: keep the index's).")] = None,
    json_out: JsonOpt = False,
):
    """Merge the index's segments into one, dropping removed faces; choose and tune its type for the whole size."""
    from facesearch.cli.output import format_compact

    emit(run_compact(index_dir(index), index_type=index_type, memory_budget=memory_budget, target_recall=target_recall),
         json_out, format_compact)


def run_compact(index, *, index_type: str | None = None, memory_budget: str | None = None,
                target_recall: float | None = None) -> dict:
    """Compact (and, for an old format, upgrade) the index at `index` (`Gallery.compact`); before and after."""
    from facesearch.api import Gallery

    return Gallery(index).compact(index_type=index_type, memory_budget=memory_budget,
                                  target_recall=target_recall).to_dict()
