"""Direct Triton gRPC users: the ensemble's streamed text equals its non-streamed text byte for byte."""
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient


def ensemble_inputs(prompt: str, max_tokens: int, seed: int, stream: bool):
    arrays = {
        "text_input": np.array([[prompt.encode()]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "seed": np.array([[seed]], dtype=np.uint64),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "stream": np.array([[stream]], dtype=bool),
    }
    inputs = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else
                                  {np.int32: "INT32", np.uint64: "UINT64", np.float32: "FP32", np.bool_: "BOOL"}[arr.dtype.type])
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return inputs


def run_ensemble(url: str, prompt: str, max_tokens: int, seed: int, stream: bool, request_id: str):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("ensemble", ensemble_inputs(prompt, max_tokens, seed, stream),
                                  request_id=request_id, enable_empty_final_response=True)
        texts, ids_per_response = [], []
        while True:
            result, error = results.get(timeout=120)
            assert error is None, error
            resp = result.get_response()
            if resp.outputs:
                texts.append(b"".join(result.as_numpy("text_output").reshape(-1)).decode("utf-8"))
                ids_per_response.append(result.as_numpy("output_ids").reshape(-1).tolist())
            if resp.parameters["triton_final_response"].bool_param:
                return "".join(texts), ids_per_response
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("seed", [3, 5, 8, 13, 21])
def test_streamed_ensemble_text_is_byte_exact(stack, seed):
    prompt = "<s>[INST] Write something with émoji 😀 and 中文 [/INST]"
    full, full_ids = run_ensemble(stack.grpc_url, prompt, 40, seed, False, f"full-{seed}")
    streamed, stream_ids = run_ensemble(stack.grpc_url, prompt, 40, seed, True, f"stream-{seed}")
    assert streamed == full
    # Like TensorRT-LLM, each streamed response carries only the new token ids.
    assert all(len(ids) <= 1 for ids in stream_ids)
    assert [t for ids in stream_ids for t in ids] == full_ids[0]
