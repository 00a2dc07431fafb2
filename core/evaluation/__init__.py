"""Evaluating any engine: the few-shot protocols of the literature and the clinical one, and the metrics."""
