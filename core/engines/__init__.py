"""Segmentation engines: the SD-FSMIS model and the classical registration baseline, behind one interface."""
