"""Training engine: trainer, schedules, EMA teacher, checkpoints and collectives."""
