"""Training: recipe, chat data, model preparation, SFT on the Trainer, schedules, checkpoints, evaluation (03, 08)."""
