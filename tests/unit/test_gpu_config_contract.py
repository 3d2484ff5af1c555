"""Issue 11: the GPU `tensorrt_llm` config we render (findings 3 and 5) and the ensemble's
postprocessing without TensorRT-LLM's missing is_final (finding 5)."""
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llama_triton.serve.repository import RepositorySettings, render_repository


def gpu_config(tmp_path, **kw) -> model_config_pb2.ModelConfig:
    repo = render_repository(RepositorySettings(model_dir="m", decoder="gpu", decoder_io="gpu", engine_dir="e", **kw),
                             tmp_path / "r")
    return text_format.Parse((repo / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


# ----------------------------------------------------------------------------- finding 3

def test_gpu_config_declares_every_perf_metric_output(tmp_path):
    outputs = {o.name for o in gpu_config(tmp_path).output}
    assert {"acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens", "context_phase_params",
            "kv_cache_reused_blocks", "arrival_time_ns"} <= outputs


# ----------------------------------------------------------------------------- finding 5

def test_gpu_config_inputs(tmp_path):
    inputs = {i.name: i for i in gpu_config(tmp_path).input}
    ragged = {n for n, i in inputs.items() if i.allow_ragged_batch}
    assert ragged == {"input_ids", "stop_words_list", "bad_words_list", "embedding_bias",
                      "guided_decoding_guide_type", "guided_decoding_guide"}
    # Dead inputs: the backend reads runtime_top_k_min, and our engines have no LoRA or gathered logits.
    assert not {"runtime_top_p_min", "lora_task_id", "lora_weights", "lora_config", "return_context_logits",
                "return_generation_logits"} & set(inputs)


# ----------------------------------------------------------------------------- finding 5: ensemble postprocessing

def test_postprocessing_without_is_final(default_tokenizer):
    """TensorRT-LLM has no is_final: a non-streamed response (several tokens) is decoded whole with
    its tail flushed, and a request reusing the id of an earlier one starts afresh."""
    from llama_triton.text.detokenize import decode
    from llama_triton.backend.text_steps import StreamDetokenizers

    streams = StreamDetokenizers(default_tokenizer)
    cut = default_tokenizer.encode("Hi", add_special_tokens=False) + [3 + 0xF0, 3 + 0x9F]   # half an emoji
    assert streams.text("id-1", 0, cut, is_final=None) == decode(default_tokenizer, cut)
    world = default_tokenizer.encode("World peace", add_special_tokens=False)
    assert streams.text("id-1", 0, world, is_final=None) == decode(default_tokenizer, world) == "World peace"
    # Streams (one token a response) still keep their state between responses.
    hello = default_tokenizer.encode("Hello there", add_special_tokens=False)
    assert "".join(streams.text("id-2", 0, [t], is_final=None) for t in hello) == "Hello there"
