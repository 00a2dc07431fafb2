"""The main window's docked panels: studies, tools, labels, support, segment, compare, runs, status bar."""
