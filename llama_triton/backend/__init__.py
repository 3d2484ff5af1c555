"""Inside Triton: the CPU decoder model's engine set-up and the ensemble's text steps."""
