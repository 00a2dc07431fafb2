"""Terminal front end for core jobs: a tqdm progress bar fed by a job's progress callback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm import tqdm

from sd_fsmis.core.jobs import Progress, ProgressCallback


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "slice") -> Iterator[ProgressCallback]:
    """Yield a progress callback that drives a tqdm bar on stderr (silent when stderr is not a terminal).

    ``unit="B"`` shows bytes scaled (kB, MB, GB) and their rate, as download tools do.
    """
    scaled = unit == "B"
    bar: tqdm | None = None

    def callback(p: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=p.total,
                desc=description,
                unit=unit,
                unit_scale=scaled,
                unit_divisor=1024 if scaled else 1000,
                file=sys.stderr,
                disable=not sys.stderr.isatty(),
                leave=True,
                dynamic_ncols=True,
            )
        if p.total != bar.total:
            bar.total = p.total
        bar.update(p.done - bar.n)
        if p.message:
            bar.set_postfix_str(p.message, refresh=False)

    try:
        yield callback
    finally:
        if bar is not None:
            bar.close()
