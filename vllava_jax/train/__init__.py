"""Two-stage training: frozen-group partitioning, optimizer, the jitted step, the checkpointed loop."""
