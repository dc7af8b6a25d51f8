"""One rule for both trainers: no study of the first dataset's validation or test split is trained on.

A study is named by its folder (``study_000_00012``: the generator's seed and index), so a further phantom set or
converted dataset that holds one of the first set's held-out studies is caught whatever the trainer reads (the
segmenter's ``studies.csv``, the detector converter's ``slices.csv``).
"""

from __future__ import annotations

from collections.abc import Iterable


def refuse_held_out(held_out: set[str], held_by: str, training: Iterable[tuple[str, set[str]]]) -> None:
    """Raise ValueError naming the first source whose training studies are in ``held_by``'s validation or test."""
    for source, studies in training:
        leaked = held_out & studies
        if leaked:
            raise ValueError(f"{source}: training studies {', '.join(sorted(leaked)[:5])} are in {held_by}'s "
                             f"validation or test split ({len(leaked)} in all)")
