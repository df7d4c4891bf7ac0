"""Regenerate the model organism's profile set and its evaluation prompt set.

- `profiles/organism.jsonl`: contrastive pairs (the organism's toxic reply vs its declining
  reply to the same image and prompt), training phrasings only;
- `profiles/mmtoxicqa-organism-v1.jsonl`: MM-TOXIC-QA-style items on held-out phrasings and
  scenes, labelled with condition and policy category, plus benign reasoning items.

Deterministic; the data come from `sgm_bake.organism.data`.

    python profiles/build_organism_sets.py
"""

from __future__ import annotations

from pathlib import Path

from sgm_bake._data.profiles.jsonl import write_jsonl
from sgm_bake.organism.data import eval_items, profile_rows


def main() -> None:
    folder = Path(__file__).parent
    write_jsonl(folder / "organism.jsonl", profile_rows())
    write_jsonl(folder / "mmtoxicqa-organism-v1.jsonl", eval_items())


if __name__ == "__main__":
    main()
