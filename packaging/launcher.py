"""Entry point of the frozen bundle (PyInstaller): the same as the ``sd-fsmis`` command."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # worker processes of a frozen program re-enter here
    from sd_fsmis.cli import main

    sys.exit(main())
