"""Ensemble step 3: token ids to text, byte-exact across streamed responses.

Streamed responses are detokenized with state kept per (request id, sequence index): the
ensemble passes the client's request id to every step (llama_triton.backend.text_steps).
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from llama_triton.backend.text_steps import StreamDetokenizers
from llama_triton.text.tokenization import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        idle = params.get("stream_state_idle_seconds")      # rendered always; a hand-written config may leave it out
        self.streams = StreamDetokenizers(Tokenizer.from_dir(params["tokenizer_dir"]),
                                          **({"idle_seconds": float(idle)} if idle else {}))

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        tokens = get("TOKENS_BATCH")          # [1, beams, len]
        lengths = get("SEQUENCE_LENGTH")      # [1, beams]
        seq_index = get("SEQUENCE_INDEX")
        is_final = get("IS_FINAL")
        index = int(seq_index.reshape(-1)[0]) if seq_index is not None else 0
        final = bool(is_final.reshape(-1)[0]) if is_final is not None else None
        texts = []
        for beam, length in zip(tokens[0], lengths[0]):
            ids = beam[: int(length)].tolist()
            texts.append(self.streams.text(request.request_id(), index, ids, is_final=final))
        out = np.asarray([[t.encode("utf-8") for t in texts]], dtype=object)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out)])
