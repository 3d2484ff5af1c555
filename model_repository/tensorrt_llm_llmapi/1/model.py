"""The `tensorrt_llm` model on TensorRT-LLM's LLM API: the decoder model over an LLM-API engine.

Triton's Python backend loads this file; everything it does is tested library code
(llama_triton/backend/decoder_model.py, llama_triton/backend/llmapi_engine.py).
"""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from llama_triton.backend.decoder_model import DecoderModel
from llama_triton.backend.llmapi_engine import build_llmapi_engine

MODEL_YAML = Path(__file__).resolve().parent / "model.yaml"


class TritonPythonModel:
    def initialize(self, args):
        self.model = DecoderModel(pb_utils, json.loads(args["model_config"]),
                                  engine_factory=lambda params: build_llmapi_engine(params, MODEL_YAML))

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
