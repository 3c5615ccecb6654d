"""Fine-tuning SAM: losses, prompt simulation, optimizer, data, the training loop."""
