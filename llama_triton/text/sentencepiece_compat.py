"""Lets transformers read a SentencePiece `tokenizer.model` under the protobuf 4 we pin.

A checkpoint whose tokenizer is only `tokenizer.model` (no tokenizer.json) is converted by
transformers, which parses the file with `sentencepiece.sentencepiece_model_pb2` first. That module,
in sentencepiece >= 0.2.1, is generated for protobuf >= 5 and fails to import under protobuf 4
(`cannot import name 'runtime_version'`); transformers then falls back to reading the file as a
tiktoken vocabulary and fails with a misleading "tiktoken is required". transformers ships its own
copy of the same message definitions generated for protobuf 4 (`sentencepiece_model_pb2_new`):
when sentencepiece's does not import, this registers transformers' under sentencepiece's name.
No torch here: the frontend imports it.
"""
from __future__ import annotations

import sys

_MODULE = "sentencepiece.sentencepiece_model_pb2"


def ensure_sentencepiece_proto() -> None:
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
        return
    except ImportError:
        pass
    except Exception:  # any other failure of the generated module: same fallback
        pass
    try:
        import sentencepiece
        from transformers.utils import sentencepiece_model_pb2_new as compatible
    except ImportError:
        return  # no sentencepiece at all: transformers reports that itself
    sys.modules[_MODULE] = compatible
    sentencepiece.sentencepiece_model_pb2 = compatible


def align_converted_sentencepiece(hf, model_dir) -> object:
    """A Llama SentencePiece tokenizer as transformers 5 loads it, made to tokenize as SentencePiece
    (and the hub's tokenizer.json) does; any other tokenizer is returned as it is.

    Two rewrites by transformers 5 lose or change ids (tests/unit/test_checkpoint_layouts.py):
    * tokenizer_config.json naming `LlamaTokenizer` (as meta-llama/Llama-2-*-hf do) makes it replace
      tokenizer.json's normalizer and pre-tokenizer with a Metaspace that drops a leading space
      (" a": SentencePiece gives "▁" "▁a", it gives "▁a"). The file's own are put back.
    * with only tokenizer.model, its conversion ranks merges so that Llama's whitespace-run pieces
      ("▁▁", "▁▁▁▁", scored -1e9 by the model, i.e. merged last) merge first ("a  b" gives "▁▁" "b"
      against SentencePiece's "▁" "▁b"), with the same Metaspace. The merges are reordered by the
      merged piece's SentencePiece score and the hub tokenizer.json's normalizer is used.
    """
    import json
    import os

    backend = getattr(hf, "backend_tokenizer", None)
    json_path = os.path.join(str(model_dir), "tokenizer.json")
    if backend is None or (os.path.exists(json_path) and "Llama" not in type(hf).__name__):
        return hf  # only transformers' Llama tokenizer classes rewrite a tokenizer.json
    spm_path = os.path.join(str(model_dir), "tokenizer.model")
    spec = json.loads(backend.to_str())
    from tokenizers import Tokenizer as RustTokenizer

    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            on_file = json.load(f)
        wanted = {k: on_file.get(k) for k in ("normalizer", "pre_tokenizer")}
        if all(spec.get(k) == v for k, v in wanted.items()):
            return hf
        spec.update(wanted)
    elif os.path.exists(spm_path) and spec.get("model", {}).get("type") == "BPE":
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
        vocab = spec["model"]["vocab"]

        def rank(merge) -> float:
            left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
            piece_id = vocab.get(left + right)
            return -sp.get_score(piece_id) if piece_id is not None and piece_id < sp.get_piece_size() else 0.0

        spec["model"]["merges"] = sorted(spec["model"]["merges"], key=rank)  # stable: ties keep their order
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        spec["pre_tokenizer"] = None
    else:
        return hf
    hf._tokenizer = RustTokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    return hf
