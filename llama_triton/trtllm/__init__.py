"""TensorRT-LLM's tensor interface: the contract, word lists, request encoding (frontend) and decoding (decoder)."""
