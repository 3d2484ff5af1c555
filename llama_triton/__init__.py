"""Library shared by the aiohttp frontend and the Triton Python models.

Tokenizer handling, incremental detokenization, stop-string matching, the Triton tensor
contract, repository rendering, the launcher and the CPU reference decoder engine.
"""
