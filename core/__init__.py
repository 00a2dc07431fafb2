"""SD-FSMIS core: everything without Qt (study I/O, masks, metrics, the model, jobs).

Nothing in this package imports PySide6 or pyqtgraph.
"""
