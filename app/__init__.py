"""SD-FSMIS desktop: few-shot medical image segmentation with Stable Diffusion.

Importing this package points the Hugging Face cache (``HF_HOME``) into the application's data folder
before any Hugging Face library is imported (see :mod:`sd_fsmis.paths`).
"""

from sd_fsmis.paths import configure_huggingface_environment

__version__ = "0.1.0"

configure_huggingface_environment()
