"""Real checkpoint layouts, with random weights at tiny sizes: what loads, and what is refused.

The Llama-2-7b-chat-hf file set is reproduced file name for file name (fp16 safetensors in two
shards with their index, the same weights again as pytorch_model-*.bin, tokenizer.json and a
SentencePiece tokenizer.model, tokenizer_config.json with the chat template inside, Llama-2-chat's
generation_config.json, the licence files). The tokenizer.model is built from llama.cpp's copy of
the Llama-2 vocabulary (pieces, scores and types, with Llama-2's normalizer settings), so
"only tokenizer.model" is checked against the tokenizer.json the suite uses everywhere else.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from llama_triton.engine.config import EngineConfig
from llama_triton.engine.engine import Engine
from llama_triton.engine.types import GenerationRequest, SamplingParams
from llama_triton.llama.loader import load_model
from llama_triton.llama.checkpoint import CheckpointError, inspect_checkpoint
from llama_triton.text.tokenization import Tokenizer

from .test_llama_forward import BLOCK, hf_logits, new_cache, run

# Llama-2-chat's generation_config.json as on the hub (sampling defaults included).
LLAMA2_CHAT_GENERATION = {"bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096,
                          "pad_token_id": 0, "temperature": 0.6, "top_p": 0.9,
                          "transformers_version": "4.32.0.dev0"}
LLAMA2_EXTRA_FILES = ("LICENSE.txt", "README.md", "USE_POLICY.md", "Responsible-Use-Guide.pdf")
# Leading spaces and runs of spaces: where transformers' own conversion of tokenizer.model differs
# from SentencePiece (llama_triton/text/sentencepiece_compat.py).
TEXTS = ["Hello world", " leading space", "Tschüß, 日本語!\n\ttabs  and  spaces", "def f(x):\n    return x",
         "\n\n  indented   ", "[INST] hi [/INST]"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_sentencepiece_model(gguf_path: Path, out: Path) -> None:
    """tokenizer.model (SentencePiece BPE, byte fallback) from llama.cpp's Llama-2 GGUF vocabulary."""
    from gguf import GGUFReader
    # sentencepiece's own generated module needs protobuf >= 5; the project pins protobuf < 5
    from transformers.utils import sentencepiece_model_pb2_new as spm

    reader = GGUFReader(str(gguf_path))

    def field(name):
        f = reader.fields[name]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field("tokenizer.ggml.token_type")]   # llama.cpp uses SentencePiece's enum
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    out.write_bytes(proto.SerializeToString())


@pytest.fixture(scope="module")
def llama2_chat_dir(tmp_path_factory, default_model_dir, llama_cpp_vocab_dir) -> Path:
    """The Llama-2-7b-chat-hf file set at a tiny size (fp16 weights in two shards)."""
    out = tmp_path_factory.mktemp("Llama-2-7b-chat-hf")
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                   initializer_range=0.1, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).to(torch.float16)
    hf.save_pretrained(str(out), max_shard_size="5MB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    # the hub repo also carries the weights as .bin shards: present, and never read
    state = hf.state_dict()
    names = sorted(state)
    half = len(names) // 2
    bins = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
    for fname, keys in bins.items():
        torch.save({k: state[k] for k in keys}, out / fname)
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in bins.items() for k in ks}}))
    (out / "generation_config.json").write_text(json.dumps(LLAMA2_CHAT_GENERATION, indent=2))
    # tokenizer: tokenizer.json from the suite's default model, tokenizer.model from the same vocab,
    # the chat template inside tokenizer_config.json (as the hub's file has it; no .jinja file)
    shutil.copy(default_model_dir / "tokenizer.json", out / "tokenizer.json")
    tok_config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    template_file = default_model_dir / "chat_template.jinja"
    if "chat_template" not in tok_config:
        tok_config["chat_template"] = template_file.read_text()
    tok_config.update({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
                       "add_eos_token": False})
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    write_sentencepiece_model(llama_cpp_vocab_dir / "ggml-vocab-llama-spm.gguf", out / "tokenizer.model")
    for name in LLAMA2_EXTRA_FILES:
        (out / name).write_bytes(b"placeholder\n")
    return out


def clone(src: Path, dst: Path, *, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def test_llama2_chat_file_set_serves(llama2_chat_dir):
    files = inspect_checkpoint(str(llama2_chat_dir))
    assert [Path(p).name for p in files.weights] == sorted(p.name for p in llama2_chat_dir.glob("model-*.safetensors"))
    assert (files.tokenizer, files.chat_template, files.eos_token_ids) == ("tokenizer.json", "tokenizer_config.json", (2,))

    tok = Tokenizer.from_dir(llama2_chat_dir)
    assert tok.eos_ids == (2,)
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"

    # the engine loads the fp16 shards into bf16 and decodes; the file's sampling defaults do not
    # leak into requests (greedy stays greedy)
    engine = Engine(str(llama2_chat_dir), EngineConfig(max_num_tokens=256, max_seq_len=128, dtype="bfloat16"))
    assert engine.model.embed_tokens.weight.dtype == torch.bfloat16 and engine.runner.kv_cache.dtype == torch.bfloat16
    outs = []
    ids = tok.encode(prompt)
    engine.submit(GenerationRequest("r", ids, SamplingParams(max_new_tokens=5, temperature=0.0)), outs.append)
    while engine.has_work:
        engine.step()
    assert outs[-1].finished and len([t for o in outs for t in o.token_ids]) == 5


def test_fp16_shards_match_transformers_in_float32(llama2_chat_dir):
    hf = transformers.LlamaForCausalLM.from_pretrained(str(llama2_chat_dir), dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    model = load_model(str(llama2_chat_dir), dtype="float32")
    ids = list(range(5, 40))
    diff = (run(model, new_cache(model), [(0, len(ids), list(range(16)))], ids) - hf_logits(hf, ids)).abs().max()
    assert diff.item() < 1e-4


def test_tokenizer_model_only(llama2_chat_dir, tmp_path):
    """No tokenizer.json: transformers converts tokenizer.model; it tokenizes as tokenizer.json does."""
    spm_only = clone(llama2_chat_dir, tmp_path / "spm", drop=("tokenizer.json",))
    assert inspect_checkpoint(str(spm_only)).tokenizer == "tokenizer.model"
    ours, reference = Tokenizer.from_dir(spm_only), Tokenizer.from_dir(llama2_chat_dir)
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_only / "tokenizer.model"))
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=True)
        assert ids == reference.encode(text, add_special_tokens=True) == [1, *sp.encode(text)], text
        assert ours.hf.decode(ids, skip_special_tokens=True) == text
    assert ours.chat_template == reference.chat_template is not None


def test_bf16_file_loads_without_conversion(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(tmp_path))
    from safetensors.torch import load_file
    stored = load_file(str(tmp_path / "model.safetensors"))
    model = load_model(str(tmp_path), dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.embed_tokens.weight, stored["model.embed_tokens.weight"])
    q = stored["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(model.layers[0].self_attn.qkv_proj.weight[:q.shape[0]], q)


def test_generation_config_eos_list(llama2_chat_dir, tmp_path):
    d = clone(llama2_chat_dir, tmp_path / "eos-list")
    (d / "generation_config.json").write_text(json.dumps({**LLAMA2_CHAT_GENERATION, "eos_token_id": [2, 13]}))
    assert inspect_checkpoint(str(d)).eos_token_ids == (2, 13)
    assert set(Tokenizer.from_dir(d).eos_ids) == {2, 13}


def _bad(kind: str, d: Path) -> str:
    """Breaks a copy of the checkpoint one way; returns the file name the error must name."""
    index = d / "model.safetensors.index.json"
    if kind == "no-config":
        (d / "config.json").unlink()
        return "config.json"
    if kind == "config-not-json":
        (d / "config.json").write_text("{ not json")
        return "config.json"
    if kind == "config-not-llama":
        (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "model_type": "gpt2"}))
        return "config.json"
    if kind == "missing-shard":
        shard = sorted(d.glob("model-*.safetensors"))[-1]
        shard.unlink()
        return shard.name
    if kind == "index-without-map":
        index.write_text(json.dumps({"metadata": {}}))
        return index.name
    if kind == "only-bin":
        index.unlink()
        for p in d.glob("model-*.safetensors"):
            p.unlink()
        return "pytorch_model-00001-of-00002.bin"
    if kind == "no-tokenizer":
        (d / "tokenizer.json").unlink()
        (d / "tokenizer.model").unlink()
        return "tokenizer.model"
    if kind == "generation-not-json":
        (d / "generation_config.json").write_text("eos_token_id: 2")
        return "generation_config.json"
    if kind == "eos-out-of-vocab":
        (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 99999]}))
        return "99999"
    if kind == "chat-template-odd":
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": 42}))
        return "tokenizer_config.json"
    raise AssertionError(kind)


INSPECT_ERRORS = ("no-config", "config-not-json", "config-not-llama", "missing-shard", "index-without-map",
                  "only-bin", "no-tokenizer", "generation-not-json", "eos-out-of-vocab", "chat-template-odd")


@pytest.mark.parametrize("kind", INSPECT_ERRORS)
def test_bad_file_set_names_the_file(llama2_chat_dir, tmp_path, kind):
    d = clone(llama2_chat_dir, tmp_path / kind)
    name = _bad(kind, d)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        inspect_checkpoint(str(d))


def test_bad_tensors_name_the_file(llama2_chat_dir, tmp_path):
    # a truncated shard
    d = clone(llama2_chat_dir, tmp_path / "truncated")
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(str(d))
    # a quantized (int8) tensor
    from safetensors.torch import save_file
    q = tmp_path / "int8"
    q.mkdir()
    (q / "config.json").write_text((llama2_chat_dir / "config.json").read_text())
    save_file({"model.embed_tokens.weight": torch.zeros(32000, 64, dtype=torch.int8)}, str(q / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight in model\.safetensors is torch\.int8"):
        load_model(str(q))
    # a shape that disagrees with config.json
    cfg = json.loads((llama2_chat_dir / "config.json").read_text())
    (q / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    save_file({"model.embed_tokens.weight": torch.zeros(32000, 64)}, str(q / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight in model\.safetensors: shape"):
        load_model(str(q))


def test_serve_refuses_a_bad_file_set_naming_the_file(llama2_chat_dir, tmp_path):
    """`llama-triton serve` checks the file set before starting Triton: one error line, the file's name."""
    from tests.unit.test_launcher_errors import error_lines, serve
    d = clone(llama2_chat_dir, tmp_path / "missing-shard")
    name = _bad("missing-shard", d)
    r = serve("--model-dir", str(d), "--work-dir", str(tmp_path / "run"))
    assert r.returncode == 1
    [line] = error_lines(r)
    assert name in line and "model.safetensors.index.json" in line
