#!/usr/bin/env python3
"""Build a tiny random-weight Llama checkpoint in Hugging Face format: the embedded default model.

No model can be downloaded from a hub here, but the real Llama tokenizers ship with llama.cpp as
GGUF vocabularies inside the `llama-cpp-python` source distribution on PyPI. This script
downloads that sdist once (into a cache), extracts only the vocabularies, their llama.cpp test
vectors and two chat templates, turns a vocabulary into a `tokenizer.json` that behaves like the
one on the hub, and saves it next to a `LlamaForCausalLM` with random weights from a fixed seed.

    python build/make_default_model.py                       # Llama-2 vocab + chat template
    python build/make_default_model.py --vocab llama-bpe --template llama-3.1 \\
        --out var/models/llama3-tiny
    python build/make_default_model.py --dtype bfloat16 --hidden-size 2048 --intermediate-size 5632 \
        --num-layers 22 --num-heads 32 --num-kv-heads 4 --max-position-embeddings 2048 \
        --out var/models/tinyllama-1.1b-random          # TinyLlama's shape (benchmarks only)

The output is complete or absent: it is written into a temporary sibling directory and renamed at
the end, with `build-info.json` (the options and file hashes) as the completion marker. Running
again with the same options returns at once; the same seed gives byte-identical files.

The core is importable (`build_model`, `ensure_vocab`, `write_weights`) for tests, which load this
file with importlib: `build/` is deliberately not a package (it would shadow PyPA's `build`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "var" / "models" / "llama2-tiny"
DEFAULT_CACHE = REPO_ROOT / "var" / "cache"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_FILE = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_MODELS_DIR = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/models/"
VOCAB_SUBDIR = "llama.cpp-vocab"

# Files taken from `vendor/llama.cpp/models/` of the sdist, with their sha256: a pinned release
# must always give the same bytes, and a truncated extraction must not pass for a vocabulary.
VOCAB_FILES: dict[str, str] = {
    "ggml-vocab-llama-spm.gguf": "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
    "ggml-vocab-llama-spm.gguf.inp": "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    "ggml-vocab-llama-spm.gguf.out": "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
    "ggml-vocab-llama-bpe.gguf": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
    "ggml-vocab-llama-bpe.gguf.inp": "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    "ggml-vocab-llama-bpe.gguf.out": "118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b",
    "templates/meta-llama-Llama-3.1-8B-Instruct.jinja": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": "dd2675619a64a449cdcdd2b93e605a0a50764cee41e344f244752bc93643936c",
}

VOCABS = {"llama-spm": "ggml-vocab-llama-spm.gguf", "llama-bpe": "ggml-vocab-llama-bpe.gguf"}
TEMPLATE_FILES = {
    "llama-3.1": "templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
    "deepseek-r1-distill": "templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
}
TEMPLATES = ("llama-2", *TEMPLATE_FILES)

# Bump when the recipe changes what gets written, so that old outputs are rebuilt.
RECIPE_VERSION = 1
MARKER = "build-info.json"

# Meta's Llama-2-chat format (llama/generation.py `chat_completion`): an optional system prompt
# folded into the first user turn, each user/assistant pair as
# `<s>[INST] {user} [/INST] {assistant} </s>`, contents stripped (after folding the system prompt
# in, as Meta does), roles strictly alternating and the prompt ending with a user turn. Written
# with the `bos_token`/`eos_token` variables so it works with either vocabulary.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] or '' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = none -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] not in ['user', 'assistant'] -%}"
    "{{- raise_exception('Llama-2 chat supports only the roles system (first), user and assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- set content = message['content'] or '' -%}"
    "{%- if loop.index0 == 0 and system_message is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + content -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + content | trim + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and (not loop_messages or loop_messages[-1]['role'] != 'user') -%}"
    "{{- raise_exception('Llama-2 chat needs a user message last to generate a reply') -}}"
    "{%- endif -%}"
)

# Llama-3.1 renamed three of Llama-3's reserved slots and renumbered the rest; the BPE vocabulary
# in llama.cpp is Llama-3's, so the 3.1 template's <|eom_id|> and <|python_tag|> are put back at
# their real 3.1 ids rather than appended (tool-call parsing and end ids then match real models).
LLAMA3_FIRST_SPECIAL = 128000
LLAMA3_NUM_SPECIAL = 256
LLAMA31_NAMED = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128004: "<|finetune_right_pad_id|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
}
# DeepSeek-R1-Distill-Llama-8B keeps the Llama-3.1 layout and replaces these slots. Its <think>
# markers and role tokens are *not* special: decoding keeps them in the text, where reasoning
# parsers look for them.
DEEPSEEK_R1_DISTILL_OVERRIDES = {
    128000: ("<｜begin▁of▁sentence｜>", True),
    128001: ("<｜end▁of▁sentence｜>", True),
    128011: ("<｜User｜>", False),
    128012: ("<｜Assistant｜>", False),
    128013: ("<think>", False),
    128014: ("</think>", False),
    128015: ("<｜▁pad▁｜>", True),
}


WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


def recorded_options(opts: "ModelOptions") -> dict[str, Any]:
    """The options in the completion marker. float32 was the only dtype before --dtype existed,
    so it is left out: checkpoints built earlier stay up to date instead of needing --force."""
    options = dataclasses.asdict(opts)
    if options["dtype"] == "float32":
        del options["dtype"]
    return options


def resolve_dtype(name: str) -> str:
    """--dtype auto: bfloat16 where the CPU has native bf16 (the decoder's own rule), else float32."""
    if name != "auto":
        return name
    from llama_triton.llama.dtype import resolve_dtype as decoder_resolve
    return decoder_resolve("auto")


class BuildError(RuntimeError):
    """A build cannot proceed; the message says what to do."""


def log(message: str) -> None:
    print(f"[make_default_model] {message}", flush=True)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Everything that determines the output bytes (recorded in the completion marker)."""

    vocab: str = "llama-spm"
    template: str = "llama-2"
    seed: int = 0
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 4096
    dtype: str = "float32"          # of the weight file: float32 | bfloat16 | float16 (after --dtype auto)

    def validate(self) -> None:
        if self.vocab not in VOCABS:
            raise BuildError(f"--vocab must be one of {sorted(VOCABS)}, got {self.vocab!r}")
        if self.template not in TEMPLATES:
            raise BuildError(f"--template must be one of {list(TEMPLATES)}, got {self.template!r}")
        if self.template != "llama-2" and self.vocab != "llama-bpe":
            raise BuildError(
                f"--template {self.template} needs --vocab llama-bpe: its special tokens live in "
                "the Llama-3 vocabulary's reserved slots"
            )
        if self.hidden_size % self.num_heads:
            raise BuildError("--hidden-size must be a multiple of --num-heads")
        # Attention kernels (and TensorRT-LLM) want realistic head sizes; 32 is the floor we test.
        if self.hidden_size // self.num_heads < 32:
            raise BuildError(
                f"head_dim = hidden_size / num_heads = {self.hidden_size // self.num_heads} < 32"
            )
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise BuildError("--num-heads must be a multiple of --num-kv-heads")
        if self.dtype not in WEIGHT_DTYPES:
            raise BuildError(f"--dtype must be auto or one of {', '.join(WEIGHT_DTYPES)}, got {self.dtype!r}")
        for name in ("intermediate_size", "num_layers", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise BuildError(f"--{name.replace('_', '-')} must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# --------------------------------------------------------------------------- vocabulary cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _vocab_complete(vocab_dir: Path) -> bool:
    return all(
        (vocab_dir / name).is_file() and _sha256(vocab_dir / name) == sha
        for name, sha in VOCAB_FILES.items()
    )


def _download_sdist(cache_dir: Path) -> Path:
    sdist = cache_dir / SDIST_FILE
    if sdist.is_file():
        return sdist
    log(
        f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source distribution "
        f"(~77 MB) into {cache_dir} with pip (pip also prepares its build metadata: "
        "up to a minute or two, once)"
    )
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(cache_dir),
    ]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0 or not sdist.is_file():
        raise BuildError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}); without network access, "
            f"put {SDIST_FILE} into {cache_dir} by hand"
        )
    return sdist


def ensure_vocab(cache_dir: Path | str = DEFAULT_CACHE) -> Path:
    """Return `<cache_dir>/llama.cpp-vocab`, downloading and extracting it when needed."""
    cache_dir = Path(cache_dir)
    vocab_dir = cache_dir / VOCAB_SUBDIR
    if _vocab_complete(vocab_dir):
        return vocab_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = _download_sdist(cache_dir)
    log(f"extracting {len(VOCAB_FILES)} vocabulary/template files from {sdist.name}")
    with tarfile.open(sdist, "r:gz") as tar:
        for name, sha in VOCAB_FILES.items():
            member = tar.getmember(SDIST_MODELS_DIR + name)
            source = tar.extractfile(member)
            if source is None:
                raise BuildError(f"{member.name} in {sdist} is not a regular file")
            dest = vocab_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            with source, partial.open("wb") as out:
                shutil.copyfileobj(source, out)
            if _sha256(partial) != sha:
                partial.unlink()
                raise BuildError(f"{name} from {sdist} has an unexpected sha256; delete the sdist")
            partial.replace(dest)
    return vocab_dir


# --------------------------------------------------------------------------- tokenizer


def _llama2_hub_layout(spec: dict[str, Any]) -> None:
    """Make the GGUF-converted Llama-2 tokenizer behave like meta-llama/Llama-2-*-hf's.

    transformers converts the GGUF vocab with a `Metaspace(prepend_scheme="first")`
    pre-tokenizer, which loses leading spaces (15 of llama.cpp's 46 test vectors fail) and does
    not add SentencePiece's dummy-prefix space after special tokens, so `<s>[INST]` would become
    `[`, `INST`, `]` instead of Meta's `▁[`, `INST`, `]`. The hub's tokenizer.json instead prepends
    `▁` to every text segment in the normalizer, which reproduces sentencepiece and llama.cpp.
    """
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    spec["pre_tokenizer"] = None


def _llama3_hub_layout(spec: dict[str, Any]) -> None:
    """Make the GGUF-converted Llama-3 tokenizer behave like meta-llama/Meta-Llama-3-*'s."""
    # The converter appends a GPT-2 style `<|endoftext|>` (id 128256) that Llama-3 does not have.
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|endoftext|>"]
    # Llama-3's tokenizer.json looks whole pre-tokenized words up before merging; without it
    # llama.cpp's "Cửa Việt" vector tokenizes differently.
    spec["model"]["ignore_merges"] = True


def _llama3_special_names(template: str) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for the 256 Llama-3 special slots under the given template."""
    if template == "llama-2":
        return {}  # keep Llama-3's own names
    names: dict[int, tuple[str, bool]] = {}
    reserved = 0
    for token_id in range(LLAMA3_FIRST_SPECIAL, LLAMA3_FIRST_SPECIAL + LLAMA3_NUM_SPECIAL):
        if token_id in LLAMA31_NAMED:
            names[token_id] = (LLAMA31_NAMED[token_id], True)
        else:
            names[token_id] = (f"<|reserved_special_token_{reserved}|>", True)
            reserved += 1
    if template == "deepseek-r1-distill":
        names.update(DEEPSEEK_R1_DISTILL_OVERRIDES)
    return names


def _rename_added_tokens(spec: dict[str, Any], names: dict[int, tuple[str, bool]]) -> None:
    vocab: dict[str, int] = spec["model"]["vocab"]
    by_id = {t["id"]: t for t in spec["added_tokens"]}
    for token_id, (content, special) in names.items():
        token = by_id[token_id]
        if token["content"] != content:
            if content in vocab and vocab[content] != token_id:
                raise BuildError(f"cannot name id {token_id} {content!r}: already id {vocab[content]}")
            if vocab.get(token["content"]) == token_id:
                del vocab[token["content"]]
                vocab[content] = token_id
            token["content"] = content
        token["special"] = special
        token["normalized"] = False


def _bos_template_processor(bos: str, bos_id: int) -> dict[str, Any]:
    """`encode(text, add_special_tokens=True)` prepends BOS, as both Llama generations do."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    bos: str
    eos: str
    pad: str | None
    unk: str | None
    # end-of-generation ids for generation_config.json (Llama-3.1 stops on several)
    eos_ids: tuple[int, ...]


def _special_tokens(opts: ModelOptions, token_to_id: dict[str, int]) -> SpecialTokens:
    if opts.vocab == "llama-spm":
        return SpecialTokens("<s>", "</s>", None, "<unk>", (token_to_id["</s>"],))
    if opts.template == "llama-3.1":
        # as Llama-3.1-*-Instruct: the tokenizer's eos is <|eot_id|>; generation ends on any of
        # end_of_text, eom_id (after a built-in tool call) and eot_id
        ends = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
        return SpecialTokens("<|begin_of_text|>", "<|eot_id|>", None, None,
                             tuple(token_to_id[t] for t in ends))
    if opts.template == "deepseek-r1-distill":
        bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
        return SpecialTokens(bos, eos, eos, None, (token_to_id[eos],))
    return SpecialTokens("<|begin_of_text|>", "<|end_of_text|>", None, None,
                         (token_to_id["<|end_of_text|>"],))


def _chat_template(opts: ModelOptions, vocab_dir: Path) -> str:
    if opts.template == "llama-2":
        return LLAMA2_CHAT_TEMPLATE
    return (vocab_dir / TEMPLATE_FILES[opts.template]).read_text(encoding="utf-8")


def write_tokenizer(out: Path, opts: ModelOptions, vocab_dir: Path) -> SpecialTokens:
    """Save tokenizer.json, tokenizer_config.json and chat_template.jinja into `out`."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf = VOCABS[opts.vocab]
    log(f"converting {gguf} with transformers' GGUF reader "
        f"({'~10 s' if opts.vocab == 'llama-spm' else '~30-60 s: 128k tokens, 280k merges'})")
    converted = AutoTokenizer.from_pretrained(str(vocab_dir), gguf_file=gguf)
    spec = json.loads(converted.backend_tokenizer.to_str())
    if opts.vocab == "llama-spm":
        _llama2_hub_layout(spec)
    else:
        _llama3_hub_layout(spec)
        _rename_added_tokens(spec, _llama3_special_names(opts.template))

    token_to_id = {t["content"]: t["id"] for t in spec["added_tokens"]}
    specials = _special_tokens(opts, token_to_id)
    spec["post_processor"] = _bos_template_processor(specials.bos, token_to_id[specials.bos])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=RustTokenizer.from_str(json.dumps(spec, ensure_ascii=False)),
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=specials.pad,
        unk_token=specials.unk,
        model_max_length=opts.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = _chat_template(opts, vocab_dir)
    tokenizer.save_pretrained(str(out))

    # A class name that transformers 4.x (TensorRT-LLM images) and 5.x both resolve to "load
    # tokenizer.json as it is"; 5.x writes its own `TokenizersBackend`, which 4.x lacks.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for runtime_only in ("is_local", "local_files_only"):
        config.pop(runtime_only, None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return specials


# --------------------------------------------------------------------------- weights


def model_config_kwargs(opts: ModelOptions, vocab_size: int, specials: SpecialTokens,
                        token_to_id: dict[str, int]) -> dict[str, Any]:
    eos: int | list[int] = list(specials.eos_ids) if len(specials.eos_ids) > 1 else specials.eos_ids[0]
    return dict(
        vocab_size=vocab_size,
        hidden_size=opts.hidden_size,
        intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.num_layers,
        num_attention_heads=opts.num_heads,
        num_key_value_heads=opts.num_kv_heads,
        head_dim=opts.head_dim,
        max_position_embeddings=opts.max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=token_to_id[specials.bos],
        eos_token_id=eos,
        pad_token_id=token_to_id[specials.pad] if specials.pad else None,
    )


def write_weights(out: Path, config_kwargs: dict[str, Any], seed: int, dtype: str = "float32") -> Path:
    """Save config.json + model.safetensors for a randomly initialised LlamaForCausalLM.

    The weights are drawn in float32 and then rounded to `dtype`, so a bf16 build is the float32
    build of the same seed rounded: the two serve the same model at two precisions.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_kwargs)
    torch.manual_seed(seed)
    # .to() replaces the parameters one at a time: the peak is the float32 model plus one tensor
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    # transformers 5 always writes safetensors (4.x needed safe_serialization=True).
    model.save_pretrained(str(out))
    weights = out / "model.safetensors"
    if not weights.is_file():
        raise BuildError(f"transformers did not write {weights}")

    # transformers 5 writes rope_theta only inside `rope_parameters`; 4.x readers (TensorRT-LLM's
    # checkpoint converter among them) look for the top-level key.
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved.setdefault("rope_theta", config_kwargs["rope_theta"])
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return weights


def write_generation_config(out: Path, config_kwargs: dict[str, Any]) -> None:
    # Only token ids: sampling defaults here would silently change what API requests get.
    generation = {"bos_token_id": config_kwargs["bos_token_id"],
                  "eos_token_id": config_kwargs["eos_token_id"]}
    if config_kwargs["pad_token_id"] is not None:
        generation["pad_token_id"] = config_kwargs["pad_token_id"]
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# --------------------------------------------------------------------------- orchestration


def _marker_matches(out: Path, opts: ModelOptions) -> bool:
    try:
        info = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("recipe") == RECIPE_VERSION and info.get("options") == recorded_options(opts)


def _install(tmp: Path, out: Path, opts: ModelOptions) -> None:
    """Move the finished `tmp` into place; a concurrent identical build may have won the race."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if not _marker_matches(out, opts):
            raise
        shutil.rmtree(tmp)
    shutil.rmtree(old, ignore_errors=True)


def build_model(out: Path | str = DEFAULT_OUT, *, cache_dir: Path | str = DEFAULT_CACHE,
                force: bool = False, **options: Any) -> Path:
    """Build the checkpoint into `out` (see the module docstring); returns `out`.

    `options` are the fields of ModelOptions (vocab, template, seed, hidden_size, ...).
    """
    if "dtype" in options:
        options["dtype"] = resolve_dtype(options["dtype"])
    opts = ModelOptions(**options)
    opts.validate()
    out = Path(out)
    if not force and _marker_matches(out, opts):
        log(f"{out} is up to date ({opts.vocab}, {opts.template}, seed {opts.seed})")
        return out
    if out.exists() and not force:
        raise BuildError(f"{out} exists but was built with other options or is incomplete; "
                         "pass --force to replace it")

    started = time.monotonic()
    vocab_dir = ensure_vocab(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        specials = write_tokenizer(tmp, opts, vocab_dir)
        spec = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        token_to_id = {t["content"]: t["id"] for t in spec["added_tokens"]}
        vocab_size = max([*spec["model"]["vocab"].values(), *token_to_id.values()]) + 1
        log(f"initialising LlamaForCausalLM: vocab {vocab_size}, hidden {opts.hidden_size}, "
            f"{opts.num_layers} layers, {opts.num_heads} heads (head_dim {opts.head_dim}), seed {opts.seed}")
        config_kwargs = model_config_kwargs(opts, vocab_size, specials, token_to_id)
        write_weights(tmp, config_kwargs, opts.seed, opts.dtype)
        write_generation_config(tmp, config_kwargs)
        info = {
            "recipe": RECIPE_VERSION,
            "options": recorded_options(opts),
            "source": f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist: "
                      f"vendor/llama.cpp/models/{VOCABS[opts.vocab]}",
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir())},
        }
        for path in tmp.iterdir():
            path.chmod(0o644)  # torch writes the weights 0600; a shared model dir should be readable
        # Written last: its presence is what marks the directory as complete.
        (tmp / MARKER).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        _install(tmp, out, opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out} in {time.monotonic() - started:.1f} s")
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = ModelOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: var/models/llama2-tiny in the repo)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where the sdist and extracted vocabularies go (default: var/cache)")
    parser.add_argument("--vocab", choices=sorted(VOCABS), default=defaults.vocab)
    parser.add_argument("--template", choices=TEMPLATES, default=defaults.template)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size)
    parser.add_argument("--num-layers", type=int, default=defaults.num_layers)
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads)
    parser.add_argument("--num-kv-heads", type=int, default=defaults.num_kv_heads)
    parser.add_argument("--max-position-embeddings", type=int, default=defaults.max_position_embeddings)
    parser.add_argument("--dtype", choices=("auto", *WEIGHT_DTYPES), default=defaults.dtype,
                        help="weight file dtype (auto: bfloat16 on CPUs with native bf16, else float32)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelOptions)}
    try:
        build_model(args.out, cache_dir=args.cache_dir, force=args.force, **options)
    except BuildError as exc:
        log(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
