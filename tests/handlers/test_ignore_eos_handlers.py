"""`ignore_eos` through the real app against FakeDecoder: the tensors sent, and an end token that
the decoder returns mid-stream (it does with end_id -1) adding no text but counting in usage."""
from __future__ import annotations

from llama_triton.trtllm.word_lists import from_word_list
from tests.handlers.conftest import Harness, token_responses


def _script_with_end_token_inside(harness: Harness) -> list[int]:
    """The decoder answers "Hello", </s>, " world": what a decoder with no end token may send."""
    tok = harness.tokenizer
    ids = tok.encode("Hello") + [tok.eos_id] + tok.encode("Hello world")[len(tok.encode("Hello")):]
    harness.decoder.script = lambda rid, arrays: token_responses(ids, log_probs=[-0.25] * len(ids))
    return ids


def test_ignore_eos_sends_no_end_token(harness: Harness):
    harness.decoder.says("Hello world")
    status, _, body = harness.chat({"ignore_eos": True, "max_tokens": 8, "min_tokens": 8})
    assert status == 200, body
    arrays = harness.decoder.requests[0][1]
    assert arrays["end_id"].item() == -1
    assert arrays["pad_id"].item() == harness.tokenizer.eos_id
    assert arrays["min_tokens"].item() == 0      # explicitly none (TensorRT-LLM: logits[-1] otherwise)
    harness.decoder.says("Hello world")
    status, _, body = harness.chat({"max_tokens": 8, "min_tokens": 8})
    arrays = harness.decoder.requests[1][1]
    assert (arrays["end_id"].item(), arrays["min_tokens"].item()) == (harness.tokenizer.eos_id, 8)


def test_an_end_token_mid_stream_adds_no_text_and_counts_in_usage(harness: Harness):
    ids = _script_with_end_token_inside(harness)
    body = {"ignore_eos": True, "max_tokens": len(ids), "logprobs": True}
    status, _, full = harness.chat(body)
    assert status == 200, full
    choice = full["choices"][0]
    assert choice["message"]["content"] == "Hello world"       # skip-special-tokens text of the ids
    assert harness.tokenizer.hf.decode(ids, skip_special_tokens=True) == "Hello world"
    assert choice["finish_reason"] == "length"
    assert full["usage"]["completion_tokens"] == len(ids)
    entries = choice["logprobs"]["content"]
    assert len(entries) == len(ids) and entries[ids.index(harness.tokenizer.eos_id)]["token"] == ""

    _script_with_end_token_inside(harness)
    status, _, events = harness.chat({**body, "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello world"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["length"]
    assert events[-2]["usage"]["completion_tokens"] == len(ids)


def test_ignore_eos_drops_the_other_end_of_turn_ids_but_not_the_requests(llama3_model_dir, llama3_tokenizer):
    """Llama-3.1 ends turns on several ids; with ignore_eos none of them stops (vLLM does the same:
    generation_config's eos ids join stop_token_ids only without ignore_eos), the request's own do."""
    others = set(llama3_tokenizer.eos_ids) - {llama3_tokenizer.eos_id}
    assert others, "the Llama-3.1 tokenizer has several end ids"
    h = Harness(llama3_model_dir, llama3_tokenizer)
    try:
        def stop_ids(body):
            h.decoder.says("Hi")
            status, _, resp = h.chat(body)
            assert status == 200, resp
            words = h.decoder.requests[-1][1].get("stop_words_list")
            return set() if words is None else {t for w in from_word_list(words) for t in w}
        assert stop_ids({}) == others
        assert stop_ids({"ignore_eos": True}) == set()
        assert stop_ids({"ignore_eos": True, "stop_token_ids": [42]}) == {42}
    finally:
        h.close()
