"""Training SD-FSMIS: episodes, augmentation, the trainer and its configuration, estimates, fine-tuning."""
