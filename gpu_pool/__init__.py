"""The model pool: a separate process that loads models and runs image jobs."""
