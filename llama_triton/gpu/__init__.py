"""GPU deployment: sizing plan and TensorRT-LLM engine build (configs/ holds checkpoint shapes)."""
