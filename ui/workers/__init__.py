"""QThread workers that run core jobs so that the window stays usable."""
