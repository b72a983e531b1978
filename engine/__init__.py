"""The training engine: options, the loop, checkpoints, logging, multi-GPU."""
