"""Sub-commands of ``sd-fsmis``, one module each (see :mod:`sd_fsmis.cli`)."""
