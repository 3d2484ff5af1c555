"""The tiny checkpoints from build/make_default_model.py: loadable, faithful templates, reproducible."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType

import jinja2
import pytest

from llama_triton.text.detokenize import decode
from llama_triton.text.tokenization import Tokenizer


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_options(model_dir: Path) -> dict | None:
    marker = model_dir / "build-info.json"
    return json.loads(marker.read_text())["options"] if marker.is_file() else None


@pytest.fixture(scope="module")
def built_model_dir(make_default_model: ModuleType, default_model_dir: Path, tmp_path_factory) -> Path:
    """A checkpoint made by build/make_default_model.py: the default one, or (when
    $LLAMA_TRITON_MODEL_DIR names another model) one built here, so these tests always run."""
    if built_options(default_model_dir) is not None:
        return default_model_dir
    return make_default_model.build_model(tmp_path_factory.mktemp("built") / "llama2-tiny")


# ----------------------------------------------------------------------------- the checkpoint


def test_loads_with_transformers(default_model_dir: Path, default_tokenizer: Tokenizer) -> None:
    import torch
    from transformers import LlamaForCausalLM

    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["head_dim"] >= 32
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"]
    assert config["tie_word_embeddings"] is False
    assert config["rope_theta"] == 10000.0 and config["rms_norm_eps"] == 1e-5
    assert config["vocab_size"] == default_tokenizer.vocab_size == 32000

    model = LlamaForCausalLM.from_pretrained(default_model_dir).eval()
    ids = default_tokenizer.encode("Hello world", add_special_tokens=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 3, 32000) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_tokenizer_basics(default_tokenizer: Tokenizer) -> None:
    tok = default_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids) == (1, 2, 2, (2,))  # pad falls back to eos
    assert tok.is_sentencepiece and tok.special_ids == {0, 1, 2}
    assert len(tok.token_bytes) == tok.vocab_size
    assert tok.token_bytes[3 + 0xE4] == b"\xe4" and tok.token_bytes[15043] == b" Hello"


def test_same_seed_gives_identical_weights(make_default_model: ModuleType, built_model_dir: Path,
                                           tmp_path: Path) -> None:
    options = built_options(built_model_dir)
    config = json.loads((built_model_dir / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    kwargs = {k: config[k] for k in keys}
    same = make_default_model.write_weights(tmp_path / "same", kwargs, options["seed"])
    other = make_default_model.write_weights(tmp_path / "other", kwargs, options["seed"] + 1)
    assert sha256(same) == sha256(built_model_dir / "model.safetensors")
    assert sha256(other) != sha256(same)


def test_rebuild_with_same_options_is_a_quick_no_op(make_default_model: ModuleType, built_model_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    options = built_options(built_model_dir)
    before = {p.name: p.stat().st_mtime_ns for p in built_model_dir.iterdir()}

    def no_weights(*args, **kwargs):
        raise AssertionError("an up-to-date checkpoint was rebuilt")
    # Quick because it builds nothing: no weights are made (not a wall-clock bound), no file is touched.
    monkeypatch.setattr(make_default_model, "write_weights", no_weights)
    make_default_model.build_model(built_model_dir, **options)
    assert {p.name: p.stat().st_mtime_ns for p in built_model_dir.iterdir()} == before


@pytest.mark.parametrize("argv", [
    ["--hidden-size", "64", "--num-heads", "4"],  # head_dim 16
    ["--hidden-size", "128", "--num-heads", "3"],  # not divisible
    ["--num-kv-heads", "3"],  # heads not a multiple of kv heads
    ["--template", "llama-3.1"],  # needs --vocab llama-bpe
])
def test_bad_options_are_refused(make_default_model: ModuleType, tmp_path: Path, argv: list[str]) -> None:
    assert make_default_model.main(["--out", str(tmp_path / "m"), *argv]) == 2
    assert not (tmp_path / "m").exists()


def test_existing_output_with_other_options_needs_force(make_default_model: ModuleType,
                                                        built_model_dir: Path) -> None:
    with pytest.raises(make_default_model.BuildError, match="--force"):
        make_default_model.build_model(built_model_dir, seed=12345)


# ----------------------------------------------------------------------------- Llama-2 chat template

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_llama2_chat_ids(tok: Tokenizer, dialog: list[dict[str, str]]) -> list[int]:
    """Meta's reference (llama/generation.py, chat_completion): each turn encoded separately."""
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += [tok.bos_id, *tok.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "),
                tok.eos_id]
    return ids + [tok.bos_id, *tok.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")]


DIALOGS = {
    "user only": [{"role": "user", "content": "Hi there"}],
    "system and user": [{"role": "system", "content": "Answer in French."},
                        {"role": "user", "content": "  What is 2+2?  "}],
    "multi-turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Name a colour."},
                   {"role": "assistant", "content": " Blue. "},
                   {"role": "user", "content": "Another, 你好 🦙?"}],
}


@pytest.mark.parametrize("dialog", DIALOGS.values(), ids=DIALOGS.keys())
def test_llama2_template_tokenizes_like_meta_reference(default_tokenizer: Tokenizer, dialog: list) -> None:
    prompt = default_tokenizer.apply_chat_template(dialog)
    assert default_tokenizer.encode(prompt) == meta_llama2_chat_ids(default_tokenizer, dialog)


def test_llama2_template_renders_system_and_user(default_tokenizer: Tokenizer) -> None:
    prompt = default_tokenizer.apply_chat_template(DIALOGS["system and user"])
    # Meta strips the combined "<<SYS>>...<</SYS>>\n\n" + user text, so the user's leading spaces stay.
    assert prompt == "<s>[INST] <<SYS>>\nAnswer in French.\n<</SYS>>\n\n  What is 2+2? [/INST]"
    # SentencePiece's dummy prefix after <s>: "▁[" (518), as in Meta's own tokenization.
    assert default_tokenizer.encode(prompt)[:4] == [1, 518, 25580, 29962]


@pytest.mark.parametrize("dialog", [
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],  # nothing to answer
])
def test_llama2_template_rejects_bad_conversations(default_tokenizer: Tokenizer, dialog: list) -> None:
    with pytest.raises(jinja2.TemplateError):
        default_tokenizer.apply_chat_template(dialog)


# ----------------------------------------------------------------------------- Llama-3.1 and DeepSeek-R1


def test_llama3_checkpoint(llama3_model_dir: Path, llama3_tokenizer: Tokenizer) -> None:
    tok = llama3_tokenizer
    config = json.loads((llama3_model_dir / "config.json").read_text())
    assert config["vocab_size"] == tok.vocab_size == 128256 and config["head_dim"] >= 32
    assert config["eos_token_id"] == [128001, 128008, 128009]
    # Llama-3.1's ids for the names its template and tool calls use
    named = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004,
             "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
             "<|eot_id|>": 128009, "<|python_tag|>": 128010, "<|reserved_special_token_247|>": 128255}
    assert {name: tok.hf.convert_tokens_to_ids(name) for name in named} == named
    assert (tok.bos_id, tok.eos_id, set(tok.eos_ids)) == (128000, 128009, {128001, 128008, 128009})
    assert tok.special_ids == set(range(128000, 128256))


def test_llama3_template_renders(llama3_tokenizer: Tokenizer) -> None:
    tok = llama3_tokenizer
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}])
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                      "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(prompt)
    assert ids[:2] == [128000, 128006] and ids.count(128009) == 2
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": {"type": "object", "properties": {}}}}
    with_tools = tok.apply_chat_template([{"role": "user", "content": "Weather?"}], tools=[tool])
    assert "get_weather" in with_tools and "Environment: ipython" in with_tools


def test_reasoning_checkpoint(reasoning_model_dir: Path, reasoning_tokenizer: Tokenizer) -> None:
    tok = reasoning_tokenizer
    assert tok.vocab_size == 128256
    assert (tok.bos_id, tok.eos_id, tok.eos_ids) == (128000, 128001, (128001,))
    assert tok.hf.convert_tokens_to_ids(["<think>", "</think>"]) == [128013, 128014]
    assert not {128011, 128012, 128013, 128014} & tok.special_ids  # kept in decoded text
    prompt = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert prompt == "<｜begin▁of▁sentence｜>S<｜User｜>Q<｜Assistant｜><think>\n"
    assert tok.encode(prompt) == [128000, 50, 128011, 48, 128012, 128013, 198]
    answer = tok.encode("<think>\nhmm</think>42<｜end▁of▁sentence｜>")
    assert decode(tok, answer) == "<think>\nhmm</think>42"
    assert json.loads((reasoning_model_dir / "generation_config.json").read_text())["eos_token_id"] == 128001


def test_whole_build_is_deterministic(make_default_model: ModuleType, built_model_dir: Path,
                                      tmp_path: Path) -> None:
    options = built_options(built_model_dir)
    again = make_default_model.build_model(tmp_path / "again", **options)
    for path in built_model_dir.iterdir():
        assert sha256(again / path.name) == sha256(path), path.name
