"""Adding to a baked folder after the bake: the model card rendered again from the record, and
an evaluation's figures with their chart. Here, above the record and beside the card, so that
the record never imports what renders it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sgm_bake.publish.card import CARD_FILE, write_card, write_plots
from sgm_bake.record.schema import BakeRecord, Evaluation
from sgm_bake.record.store import read_record, record_files


def rewrite_card(folder: Path, record: BakeRecord, written: Iterable[str] = ()) -> None:
    """Re-render the model card from the record, then record the card and the other files the
    calling command wrote (`written`), and nothing else."""
    write_card(folder, record)
    record_files(folder, record, [CARD_FILE, *written])


def record_evaluation(folder: Path, report_name: str, data: Mapping[str, Any]) -> BakeRecord:
    """Add an evaluation report's figures to a baked folder's record, chart and card. The report
    (`report_name`, written by the caller) and the files drawn here are recorded; the caller
    checked the folder with `require_intact` before it wrote the report."""
    record = read_record(folder)
    record.evaluation = Evaluation.of_report(report_name, data)
    written = write_plots(folder, record)
    if (folder / report_name).is_file():  # the report the caller wrote into the folder
        written.append(report_name)
    rewrite_card(folder, record, written)
    return record
