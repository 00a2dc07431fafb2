"""The SD-FSMIS model, one module per concept of the method (nothing is imported here: torch loads lazily).

- :mod:`.config` typed model configuration (``config.json``)
- :mod:`.preprocessing` slices to model inputs; :mod:`.latents` the VAE side (encode / decode)
- :mod:`.query_enhancement` QE; :mod:`.vtct` VTCT (DINOv2 + mapper); :mod:`.support_query_interaction` SQI
- :mod:`.input_convolutions` ``conv_in`` / ``conv_in_ref``; :mod:`.pipeline` one episode
- :mod:`.engine` the segmentation engine; :mod:`.store` model folders and the store
- :mod:`.create` base models; :mod:`.presets` architectures built in code; :mod:`.reference_import`
"""
