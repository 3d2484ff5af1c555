"""The Llama forward pass in plain PyTorch and Hugging Face checkpoint loading.

Importers name the module they need (`.model`, `.loader`, `.config`, `.checkpoint`, ...): importing
this package loads nothing, so the launcher's check of a checkpoint's files
(`llama_triton.llama.checkpoint`) and `.config` import without torch.
"""
