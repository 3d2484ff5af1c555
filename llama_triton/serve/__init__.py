"""Running the stack: the launcher, tritonserver discovery, repository rendering, multi-GPU launch."""
