"""SD-FSMIS desktop: few-shot medical image segmentation with Stable Diffusion.

Importing this package points the Hugging Face cache (``HF_HOME``) into the application's data folder
before any Hugging Face library is imported (see :mod:`sd_fsmis.paths`).
"""

import os

from sd_fsmis.paths import configure_huggingface_environment

__version__ = "0.1.0"

configure_huggingface_environment()
# OpenMP threads that spin while waiting starve each other on small machines (measured: a tiny model 50x
# slower on 2 busy cores); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
