"""The CPU reference decoder: an in-flight batching engine over a paged KV cache.

Importers name the module they need (`llama_triton.engine.engine` for `Engine`, `.types` for the
request types): importing this package loads nothing, so reading the plain types never loads torch
and the model.
"""
