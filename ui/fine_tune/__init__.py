"""The fine-tune wizard: one module per page, the jobs they share, the live loss plot."""
