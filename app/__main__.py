"""``python -m sd_fsmis``: the same as the ``sd-fsmis`` command."""

import sys

from sd_fsmis.cli import main

sys.exit(main())
