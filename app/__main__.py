"""``python -m sd_fsmis``: the same as the ``sd-fsmis`` command."""

import sys

if __name__ == "__main__":  # worker processes started by "spawn" import this module again: they must not run
    from sd_fsmis.cli import main

    sys.exit(main())
