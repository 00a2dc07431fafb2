"""Which support examples a segmentation uses, chosen from what the person painted, and how to say it.

The support set may hold several structures from several studies (study A's liver, study B's right kidney).
Segmenting study B must use what the person meant, never another structure or another patient's painting
silently:

- the structure follows what was painted last (:func:`preferred_structure`): the label of the support just
  added, or, on switching studies, a structure painted on the study shown;
- the supports of that structure come from the study being segmented first (:func:`choose_supports`):
  supports from other studies are used only when this study has none of that structure, or when the person
  asks for them too; either way the GUI asks for a confirmation (:attr:`SupportChoice.from_other_studies`);
- :meth:`SupportChoice.statement` says it before the run: ``"right kidney, 1 support from this study,
  propagation"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sd_fsmis.core.session.study import Study
from sd_fsmis.core.session.support_set import SupportEntry


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class SupportChoice:
    """The support examples a segmentation of one study would use (``entries``), and where they come from."""

    label_name: str
    entries: tuple[SupportEntry, ...]
    #: how many of ``entries`` lie on the study being segmented
    here: int
    #: the names of the other studies ``entries`` come from (in order of first appearance)
    other_studies: tuple[str, ...]
    #: supports of the same structure on other studies that are not used (this study has its own)
    left_out: int
    #: True when another study's supports are used and at least one of them is of another patient
    other_patient: bool = False

    @property
    def k(self) -> int:
        """K of K-shot."""
        return len(self.entries)

    @property
    def elsewhere(self) -> int:
        """How many of ``entries`` come from other studies."""
        return self.k - self.here

    @property
    def from_other_studies(self) -> bool:
        """True when supports painted on another study would be used (the GUI confirms first)."""
        return self.elsewhere > 0

    def origin(self) -> str:
        """``"from this study"``, ``"from another study (A)"``, or ``"1 from this study, 3 from another
        study (A)"``."""
        kind = "patient" if self.other_patient else "study"
        n = len(self.other_studies)
        other = f"from another {kind}" if n == 1 else f"from {n} other {kind}s"
        other += f" ({', '.join(self.other_studies)})"
        if not self.elsewhere:
            return "from this study"
        if not self.here:
            return other
        return f"{self.here} from this study, {self.elsewhere} {other}"

    def where(self) -> str:
        """``"1 support from this study"``, ``"3 supports from another study (A)"``, or both."""
        if not self.entries:
            return "no support"
        joiner = ": " if self.here and self.elsewhere else " "
        return f"{_plural(self.k, 'support')}{joiner}{self.origin()}"

    def statement(self, engine: str) -> str:
        """What Segment will do: ``"right kidney, 1 support from this study, propagation"``."""
        return f"{self.label_name}, {self.where()}, {engine}"


def structures(entries: Iterable[SupportEntry]) -> list[str]:
    """The distinct structure names (case-insensitive), in order of first appearance, as first written."""
    seen: dict[str, str] = {}
    for entry in entries:
        seen.setdefault(entry.label_name.lower(), entry.label_name)
    return list(seen.values())


def preferred_structure(
    entries: Iterable[SupportEntry], query_study_id: str | None, current: str | None = None
) -> str | None:
    """The structure to offer for segmenting study ``query_study_id``.

    ``current`` stays while the study has supports of it (or no study has supports of anything else);
    otherwise the structure most recently added as a support on this study; otherwise ``current`` (or the
    most recently added structure anywhere, when ``current`` has no support at all).
    """
    entries = list(entries)
    if not entries:
        return None
    names = {e.label_name.lower() for e in entries}
    here = [e for e in entries if e.study_id == query_study_id]
    keep = current is not None and current.lower() in names
    if keep and (not here or any(e.label_name.lower() == str(current).lower() for e in here)):
        return next(e.label_name for e in entries if e.label_name.lower() == str(current).lower())
    if here:
        return here[-1].label_name
    return entries[-1].label_name


def choose_supports(
    entries: Iterable[SupportEntry],
    query_study_id: str,
    label_name: str,
    studies: Mapping[str, Study],
    *,
    other_studies: bool = False,
) -> SupportChoice:
    """The supports of ``label_name`` for segmenting study ``query_study_id``: this study's first.

    When the study has supports of the structure, only those are used unless ``other_studies`` (then every
    support of the structure); when it has none, the other studies' supports are used (the caller confirms).
    Supports of another structure are never used.
    """
    same = [e for e in entries if e.label_name.lower() == label_name.lower()]
    here = [e for e in same if e.study_id == query_study_id]
    there = [e for e in same if e.study_id != query_study_id]
    used = same if (other_studies or not here) else here
    names: dict[str, None] = {}
    for e in used:
        if e.study_id != query_study_id:
            study = studies.get(e.study_id)
            names.setdefault(study.name if study is not None else "a closed study", None)
    query = studies.get(query_study_id)
    other_patient = False
    if query is not None:
        patient = _patient(query)
        for e in used:
            study = studies.get(e.study_id)
            if study is not None and e.study_id != query_study_id:
                other = _patient(study)
                other_patient = other_patient or (bool(patient) and bool(other) and other != patient)
    return SupportChoice(
        label_name=label_name,
        entries=tuple(used),
        here=len([e for e in used if e.study_id == query_study_id]),
        other_studies=tuple(names),
        left_out=len(there) if used is here else 0,
        other_patient=other_patient,
    )


def _patient(study: Study) -> str:
    meta = study.volume.metadata
    return (meta.patient_id or meta.patient_name or "").strip()
