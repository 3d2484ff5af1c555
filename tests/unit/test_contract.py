"""The stop request is built in one place (llama_triton/contract.py) for every sender (the frontend's
cancellation and its reach probe), and both decoders take it: it keeps TensorRT-LLM's backend
contract, every decoder configuration declares its inputs, and the CPU decoder reads it as the stop
of that request id."""
from __future__ import annotations

from tritonclient.utils import np_to_triton_dtype

from llama_triton.backend.request_decoding import StopRequest, parse_request
from llama_triton.contract import stop_request_arrays
from llama_triton.trtllm.backend_contract import request_problems
from llama_triton.trtllm.tensor_contract import DECODER_IO, decoder_io


def test_the_stop_request_keeps_the_backend_contract():
    inputs = [(name, np_to_triton_dtype(arr.dtype), arr.shape) for name, arr in stop_request_arrays().items()]
    assert request_problems(inputs, outputs=None) == []
    assert request_problems(inputs, outputs=[]) == []       # a stop request is answered before its outputs matter


def test_every_decoder_declares_the_stop_request_inputs():
    for io_name in sorted(DECODER_IO):
        inputs, _ = decoder_io(io_name)
        declared = {t.name: t for t in inputs}
        for name, arr in stop_request_arrays().items():
            assert name in declared, (io_name, name)
            assert np_to_triton_dtype(arr.dtype) == declared[name].dtype.removeprefix("TYPE_"), (io_name, name)


def test_the_cpu_decoder_reads_it_as_the_stop_of_that_request():
    parsed, _ = parse_request(stop_request_arrays().get, "chatcmpl-1")
    assert parsed == StopRequest("chatcmpl-1")
