"""Regenerate the model organism's profile set and its evaluation prompt set.

- `profiles/organism.jsonl`: contrastive pairs (the organism's toxic reply vs its declining
  reply to the same image and prompt), training phrasings only;
- `profiles/mmtoxicqa-organism-v1.jsonl`: MM-TOXIC-QA-style items on held-out phrasings and
  scenes, labelled with condition and policy category, plus benign reasoning items.

Deterministic; the data come from `sgm_bake.organism.data`.

    python profiles/build_organism_sets.py
"""

from __future__ import annotations

import json
from pathlib import Path

from sgm_bake.organism.data import eval_items, profile_rows


def write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    folder = Path(__file__).parent
    write(folder / "organism.jsonl", profile_rows())
    write(folder / "mmtoxicqa-organism-v1.jsonl", eval_items())


if __name__ == "__main__":
    main()
