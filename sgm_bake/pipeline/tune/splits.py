"""The profile set cut once into profiling, tuning and report parts (seeded, stratified by
label): units are scored on the first, trials measured on the second, and the choice reported on
the third, which the search never sees."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from sgm_bake.datasets.profile_set import MIN_PER_CLASS, ProfileSet
from sgm_bake.errors import SGMError
from sgm_bake.pipeline.tune.options import DEFAULT_FRACTIONS

# Rows of each class every split needs: AUROC needs both classes on the profiling split (the
# profile set's own minimum); harm and KL need at least two rows each on the other two.
SPLIT_MINIMUM = {"profile": MIN_PER_CLASS, "tune": 2, "report": 2}


@dataclass(frozen=True)
class Splits:
    """The profile set cut in three disjoint, label-stratified parts."""

    profile: ProfileSet
    tune: ProfileSet
    report: ProfileSet
    seed: int
    fractions: tuple[float, float, float]

    def describe(self) -> dict[str, Any]:
        parts = {"profile": self.profile, "tune": self.tune, "report": self.report}
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            **{
                name: {"toxic": part.counts()[0], "non_toxic": part.counts()[1]}
                for name, part in parts.items()
            },
        }


def _allocation(count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    tune = math.floor(count * fractions[1])
    report = math.floor(count * fractions[2])
    return count - tune - report, tune, report


def minimum_rows_per_class(fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> int:
    """The fewest rows of each label that leave every split its minimum."""
    count = 1
    while True:
        profile, tune, report = _allocation(count, fractions)
        if (
            profile >= SPLIT_MINIMUM["profile"]
            and tune >= SPLIT_MINIMUM["tune"]
            and report >= SPLIT_MINIMUM["report"]
        ):
            return count
        count += 1


def split_profile_set(
    profile_set: ProfileSet, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> Splits:
    """Split a profile set (seeded, stratified by label) into profiling, tuning and report parts.

    Each label's rows are shuffled with their own seeded generator and cut by the fractions;
    every part keeps the set's row order. Sets too small to give every part its minimum are
    refused."""
    minimum = minimum_rows_per_class(fractions)
    toxic, benign = profile_set.counts()
    if min(toxic, benign) < minimum:
        raise SGMError(
            f"profile set {profile_set.name} has {toxic} toxic and {benign} non-toxic rows; "
            f"tuning splits it into profiling, tuning and report parts and needs at least "
            f"{minimum} rows of each label: use a larger set"
        )
    chosen: dict[str, list[int]] = {"profile": [], "tune": [], "report": []}
    for label in (1, 0):
        indices = [i for i, s in enumerate(profile_set.samples) if s.label == label]
        random.Random(seed * 2 + label).shuffle(indices)
        profile, tune, _ = _allocation(len(indices), fractions)
        chosen["profile"] += indices[:profile]
        chosen["tune"] += indices[profile : profile + tune]
        chosen["report"] += indices[profile + tune :]
    for name in ("tune", "report"):
        prompted = [i for i in chosen[name] if profile_set.samples[i].label == 1]
        prompted = [i for i in prompted if profile_set.samples[i].prompt]
        if len(prompted) < SPLIT_MINIMUM[name]:
            raise SGMError(
                f"the {name} split of {profile_set.name} has {len(prompted)} toxic rows with a "
                "prompt; harm is measured on the replies to those prompts, so give the toxic "
                "rows a `prompt` field"
            )

    def part(name: str) -> ProfileSet:
        rows = tuple(profile_set.samples[i] for i in sorted(chosen[name]))
        digest = hashlib.sha256(
            f"{profile_set.sha256}:{name}:{seed}:{fractions}".encode()
        ).hexdigest()
        return ProfileSet(f"{profile_set.name}[{name}]", digest, rows)

    return Splits(part("profile"), part("tune"), part("report"), seed, fractions)
