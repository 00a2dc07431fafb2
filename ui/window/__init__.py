"""The main window and its parts: menus and shortcuts, opening studies, mask files, the models menu,
the autosave timer."""
