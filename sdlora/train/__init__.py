"""Training: the trainer story, the loss step, optimizers and run control."""
