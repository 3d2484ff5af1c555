"""Repository rendering: strict substitution, configs Triton can parse, ensemble wiring per decoder."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llama_triton.serve.repository import MODELS, RepositorySettings, TemplateError, render_repository, render_text
from llama_triton.trtllm.tensor_contract import decoder_io


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_render_text_is_strict():
    assert render_text("a ${x} b", {"x": 1}) == "a 1 b"
    with pytest.raises(TemplateError, match="no value for y"):
        render_text("${x} ${y}", {"x": 1})
    with pytest.raises(TemplateError, match="unfilled"):
        render_text("${x}", {"x": "${z}"})


def test_unknown_extra_value_is_an_error(tmp_path):
    with pytest.raises(TemplateError, match="no template uses: typo_key"):
        render_repository(RepositorySettings(model_dir="m", extra={"typo_key": 1}), tmp_path / "r")


@pytest.mark.parametrize("decoder,io", [("cpu", "cpu"), ("cpu", "gpu"), ("gpu", "gpu")])
def test_every_config_parses_and_ensemble_matches_decoder(tmp_path, decoder, io):
    repo = render_repository(RepositorySettings(model_dir="m", decoder=decoder, decoder_io=io,
                                                engine_dir="e"), tmp_path / "r")
    configs = {m: parse(repo / m / "config.pbtxt") for m in MODELS}
    for m in MODELS:
        assert "${" not in (repo / m / "config.pbtxt").read_text()
    decoder_cfg = configs["tensorrt_llm"]
    assert decoder_cfg.backend == ("python" if decoder == "cpu" else "tensorrtllm")
    assert decoder_cfg.model_transaction_policy.decoupled
    declared_in = {i.name for i in decoder_cfg.input}
    declared_out = {o.name for o in decoder_cfg.output}
    inputs, outputs = decoder_io(io)
    assert declared_in == {t.name for t in inputs}
    ens = configs["ensemble"]
    ens_inputs = {i.name for i in ens.input}
    produced = set(ens_inputs)
    for step in ens.ensemble_scheduling.step:
        model_inputs = {i.name for i in configs[step.model_name].input}
        for key, value in step.input_map.items():
            assert key in model_inputs, (step.model_name, key)
            assert value in produced, (step.model_name, key, value)
        model_outputs = {o.name for o in configs[step.model_name].output}
        for key, value in step.output_map.items():
            assert key in model_outputs, (step.model_name, key)
            produced.add(value)
    for o in ens.output:
        assert o.name in produced
    # Tensors only the CPU decoder has appear in the ensemble only when the decoder declares them.
    assert ("min_p" in ens_inputs) == ("min_p" in declared_in) == (io == "cpu")
    assert ("top_log_probs" in {o.name for o in ens.output}) == ("top_log_probs" in declared_out)


def test_gpu_release_names(tmp_path):
    repo = render_repository(RepositorySettings(model_dir="m", decoder="gpu", engine_dir="/engines/x"), tmp_path / "r")
    cfg = parse(repo / "tensorrt_llm" / "config.pbtxt")
    names = {i.name for i in cfg.input}
    assert {"seed", "min_tokens"} <= names and not {"random_seed", "min_length"} & names
    assert cfg.parameters["gpt_model_path"].string_value == "/engines/x"
