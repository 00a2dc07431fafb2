"""What a person has open and does to it: studies, label layers, painting, undo, supports, runs, autosave."""
