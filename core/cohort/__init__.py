"""Segmenting a cohort: many studies, one support set (``sd-fsmis segment --queries``, the GUI's
"Segment all open studies"): which studies (:mod:`.studies`), the run record and resume (:mod:`.record`),
the job with its sharding across processes (:mod:`.run`)."""
