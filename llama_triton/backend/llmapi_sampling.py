"""Our decoder request -> the arguments of TensorRT-LLM 1.2.1's `SamplingParams` (LLM API).

The `tensorrt_llm` tensors are parsed by llama_triton/backend/request_decoding.py into the CPU
decoder's `SamplingParams` (llama_triton/engine/types.py); this module maps every field of it onto
the LLM API's, and nothing else: no tensorrt_llm import, so it runs and is tested everywhere.
docs/GPU.md section 8.2 is the same table, row by row.

SP = tensorrt_llm/sampling_params.py@b35ac1b (1.2.0rc2: the nearest stored commit to the v1.2.1
tag 376f7e1, which could not be read here; see llama_triton/backend/llmapi_standin.py).
R  = tensorrt_llm/executor/result.py@005bc84.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from llama_triton.contract import RequestError
from llama_triton.engine.types import SamplingParams

# Our guided_decoding_guide_type -> GuidedDecodingParams field (SP:26-30; SP:511-540 maps them onto
# the executor's GuideType JSON, JSON_SCHEMA, REGEX, EBNF_GRAMMAR, the C++ backend's four types).
GUIDE_FIELDS = {"json": "json_object", "json_schema": "json", "regex": "regex", "ebnf_grammar": "grammar"}


@dataclass
class LlmApiRequest:
    """What one request becomes: SamplingParams(**sampling, guided_decoding=GuidedDecodingParams(**guided))."""
    sampling: dict[str, Any]
    guided: Optional[dict[str, Any]] = None


WordText = Callable[[list[int]], Optional[str]]


def to_llmapi(p: SamplingParams, word_text: WordText) -> LlmApiRequest:
    """`word_text(ids)` is the text that tokenizes back to exactly `ids` (None when there is none):
    the LLM API takes multi-token stop and bad words as strings only (SP:207-212: `stop`/`bad`,
    tokenized by `_setup`, SP:390-396; `stop_token_ids`/`bad_token_ids` are single tokens)."""
    kw: dict[str, Any] = {
        "max_tokens": p.max_new_tokens,                                 # SP:206
        "n": p.num_return_sequences,                                    # SP:219; best_of = n (SP:282)
        "temperature": p.temperature,                                   # SP:230; 0 is greedy (SP:345)
        # 0 means all logits (SP:144), as ours does.
        "top_k": p.top_k,                                               # SP:224
        # Ours is off at <= 0 (TensorRT-LLM's backend drops top_p <= 0, utils.cc:555-563); 0.0 here
        # would mean greedy (SP:344). Above 1 it goes through for SP:301 to refuse.
        "top_p": p.top_p if p.top_p > 0 else None,                      # SP:225
        "seed": p.seed,                                                 # SP:229
        "repetition_penalty": p.repetition_penalty,                     # SP:233
        "presence_penalty": p.presence_penalty,                         # SP:234
        "frequency_penalty": p.frequency_penalty,                       # SP:235
        # "Values < 1 have no effect" (SP:163); None keeps the runtime default.
        "min_tokens": p.min_tokens or None,                             # SP:231
        "min_p": p.min_p or None,                                       # SP:240
        # Our contract returns stop words (the C++ backend keeps them, docs/GPU.md 5.1); the LLM
        # API strips them unless asked not to (R:222-229).
        "include_stop_str_in_output": True,                             # SP:212
        "exclude_input_from_output": True,                              # SP:248 (the model adds the prompt)
        # The frontend detokenizes itself; the LLM's text would be wasted work per token.
        "detokenize": False,                                            # SP:269
    }
    if p.end_id is None:
        # No end token (absent, or -1: ignore_eos). An absent end_id would become the tokenizer's
        # EOS in `_setup` (SP:368-381); ignore_eos is end_id -1 for the executor
        # (tensorrt_llm/executor/base_worker.py:451-452@7b437aa).
        kw["ignore_eos"] = True                                         # SP:268
    else:
        kw["end_id"] = p.end_id                                         # SP:204
        kw["pad_id"] = p.end_id                                         # SP:205 (pad_id defaults so, SP:279-280)
    stop_ids, stop_texts = _split_words(p.stop_words, "stop_words_list", word_text)
    if stop_ids:
        kw["stop_token_ids"] = stop_ids                                 # SP:211
    if stop_texts:
        kw["stop"] = stop_texts                                         # SP:210
    bad_ids, bad_texts = _split_words(p.bad_words, "bad_words_list", word_text)
    if bad_ids:
        kw["bad_token_ids"] = bad_ids                                   # SP:208
    if bad_texts:
        kw["bad"] = bad_texts                                           # SP:207
    if p.embedding_bias is not None:
        kw["embedding_bias"] = p.embedding_bias                         # SP:215 ([vocab] float32)
    if p.return_log_probs or p.top_logprobs > 0:
        # logprobs=N: the top N per token plus the sampled one (PyTorch backend); SP:333 turns 0
        # into "none", so the sampled token's alone needs N = 1.
        kw["logprobs"] = max(1, p.top_logprobs)                         # SP:244
    guided = None
    if p.guide_type is not None:
        name = GUIDE_FIELDS[p.guide_type]
        guided = {name: True if name == "json_object" else p.guide}     # SP:265
    return LlmApiRequest(kw, guided)


def _split_words(words: list[list[int]], tensor: str, word_text: WordText) -> tuple[list[int], list[str]]:
    ids, texts = [], []
    for word in words:
        if len(word) == 1:
            ids.append(int(word[0]))
            continue
        text = word_text(list(word))
        if text is None:
            raise RequestError(f"{tensor}: the multi-token word {list(word)} is not the tokenization of any "
                               "text; TensorRT-LLM's LLM API takes multi-token words as strings only")
        texts.append(text)
    return ids, texts


def word_text_for(tokenizer: Any) -> WordText:
    """The `word_text` of a tokenizer with Hugging Face's encode/decode: decode, and keep the text
    only when encoding it alone (as SP:390-396 will) gives the same ids back."""
    def word_text(ids: list[int]) -> Optional[str]:
        text = tokenizer.decode(ids)
        return text if list(tokenizer.encode(text, add_special_tokens=False)) == list(ids) else None
    return word_text
