"""The one table helper and the adaptive units every command prints with."""

from __future__ import annotations

import pytest

from sgm_bake.text import format_bytes, format_count, table


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (950, "950"),
        (1_200, "1.20K"),
        (1_235_040, "1.24M"),
        (13_350_000, "13.3M"),
        (7_063_000_000, "7.06B"),
        (88_590_000_000, "88.6B"),
        (470_000_000_000, "470B"),
    ],
)
def test_counts_use_k_m_b(count, text):
    assert format_count(count) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [(512, "512 B"), (196_608, "192 KiB"), (4_940_160, "4.71 MiB"), (85_899_345_920, "80.0 GiB")],
)
def test_bytes_use_binary_units(count, text):
    assert format_bytes(count) == text


def test_table_aligns_figures_right_and_text_left():
    lines = table(
        ("stage", "host peak", "GPUs", "note"),
        [("bake", "392 MiB", 0, "streamed"), ("verify --full", "1.20 GiB", 12, "-")],
    )
    assert lines == [
        "stage          host peak  GPUs  note",
        "bake             392 MiB     0  streamed",
        "verify --full   1.20 GiB    12  -",
    ]
    assert all(line == line.rstrip() for line in lines)


def test_table_refuses_a_short_row():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table(("a", "b", "c"), [("1", "2")])
