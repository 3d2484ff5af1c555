"""The one source of the serving defaults that more than one module needs.

The launcher's flags, the rendered model repository, the CPU decoder's `EngineConfig`, the Triton
model's parameter fallbacks and the GPU build plan read the decoder limits from here; the frontend
and the decoder read the grammar compile limits from here.
"""
from __future__ import annotations

MAX_BATCH_SIZE = 64          # running sequences in the decoder (batch slots)
MAX_QUEUE_SIZE = 256         # requests waiting for a slot before the decoder answers "queue full"

# The frontend compiles every guide before the request reaches the decoder, under this limit (a
# slower grammar is a 400 naming the field). The CPU decoder compiles it again in its own process
# (xgrammar's cache is per process) and allows twice as long: by then the guide is known to
# compile, and a busy decoder must not fail a request the frontend accepted.
GRAMMAR_COMPILE_TIMEOUT_S = 5.0
DECODER_GRAMMAR_COMPILE_TIMEOUT_S = 2 * GRAMMAR_COMPILE_TIMEOUT_S
