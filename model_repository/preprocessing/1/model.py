"""Ensemble step 1: prompt and word lists to token ids (llama_triton.backend.text_steps.Preprocessor)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from llama_triton.backend.text_steps import Preprocessor
from llama_triton.text.tokenization import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.tokenizer = Tokenizer.from_dir(params["tokenizer_dir"])
        self.pre = Preprocessor(self.tokenizer, params.get("add_special_tokens", "true") == "true")

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        try:
            query = get("QUERY").reshape(-1)[0]
            ids = self.pre.prompt(query.decode("utf-8") if isinstance(query, bytes) else str(query))
            end_id = get("END_ID")
            pad_id = get("PAD_ID")
            outputs = {
                "INPUT_ID": ids.reshape(1, -1),
                "REQUEST_INPUT_LEN": np.asarray([[len(ids)]], dtype=np.int32),
                "BAD_WORDS_IDS": self.pre.words(get("BAD_WORDS_DICT"))[None],
                "STOP_WORDS_IDS": self.pre.words(get("STOP_WORDS_DICT"))[None],
                "EMBEDDING_BIAS": self.pre.bias(get("EMBEDDING_BIAS_WORDS"), get("EMBEDDING_BIAS_WEIGHTS"))[None],
                "REQUEST_OUTPUT_LEN": get("REQUEST_OUTPUT_LEN").astype(np.int32).reshape(1, 1),
                "OUT_END_ID": (end_id.astype(np.int32) if end_id is not None
                               else np.asarray([self.tokenizer.eos_id], dtype=np.int32)).reshape(1, 1),
                "OUT_PAD_ID": (pad_id.astype(np.int32) if pad_id is not None
                               else np.asarray([self.tokenizer.pad_id], dtype=np.int32)).reshape(1, 1),
            }
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"preprocessing: {e}"))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
