"""The five hemorrhage subtypes, in the class order the detector and the label masks use.

Label masks store 0 for background and ``index + 1`` for a subtype; detector classes are ``index``.
BHX spells the subtypes capitalised ("Intraparenchymal", ...), which ``subtype_index`` accepts too.
"""

SUBTYPES: tuple[str, ...] = (
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "epidural",
)

ABBREVIATIONS: dict[str, str] = {
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
    "epidural": "EDH",
}


def subtype_index(name: str) -> int:
    """Detector class index of a subtype name (case-insensitive, full name or abbreviation)."""
    key = name.strip().lower()
    for index, subtype in enumerate(SUBTYPES):
        if key in (subtype, ABBREVIATIONS[subtype].lower()):
            return index
    raise ValueError(f"unknown hemorrhage subtype {name!r}; expected one of {', '.join(SUBTYPES)}")
