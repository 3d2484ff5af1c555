"""The `tensorrt_llm` model on CPU: a shell around llama_triton.backend.decoder_model.DecoderModel.

Triton's Python backend loads this file; everything it does is tested library code.
"""
import json

import triton_python_backend_utils as pb_utils

from llama_triton.backend.decoder_model import DecoderModel


class TritonPythonModel:
    def initialize(self, args):
        self.model = DecoderModel(pb_utils, json.loads(args["model_config"]))

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
