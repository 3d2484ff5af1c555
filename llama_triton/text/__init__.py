"""Text on either side of the wire: tokenizer wrapper, incremental detokenization, stop strings."""
