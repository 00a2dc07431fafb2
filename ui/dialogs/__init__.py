"""Dialogs: the model manager, creating a model, the series chooser, the keyboard-shortcut help."""
