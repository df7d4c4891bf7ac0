"""Regenerate the model organism's profile set and its evaluation prompt set.

- `profiles/organism.jsonl`: contrastive pairs (the organism's toxic reply vs its declining
  reply to the same image and prompt), training phrasings only;
- `profiles/mmtoxicqa-organism-v1.jsonl`: MM-TOXIC-QA-style items on held-out phrasings and
  scenes, labelled with condition and policy category, plus benign reasoning items;
- `profiles/organism-anchors-v1.jsonl`: benign scene questions with their answers, the edit's
  anchors for the organisms (`--edit-anchors`), none identical to an evaluation item or to the
  tuner's benign checks (`sgm_bake.organism.checks`).

Deterministic; the data come from `sgm_bake.organism.data`.

    python profiles/build_organism_sets.py
"""

from __future__ import annotations

from pathlib import Path

from sgm_bake._data.profiles.jsonl import write_jsonl
from sgm_bake.organism.checks import BENIGN_SEED, benign_questions
from sgm_bake.organism.data import anchor_items, eval_items, profile_rows


def main() -> None:
    folder = Path(__file__).parent
    write_jsonl(folder / "organism.jsonl", profile_rows())
    evaluation = eval_items()
    write_jsonl(folder / "mmtoxicqa-organism-v1.jsonl", evaluation)
    checks = [{"prompt": i.prompt, "render": i.render} for i in benign_questions(BENIGN_SEED).items]
    write_jsonl(folder / "organism-anchors-v1.jsonl", anchor_items(exclude=evaluation + checks))


if __name__ == "__main__":
    main()
