"""The load generator's prompts: neither a warm-up nor a repeated run may reuse the measured
prompts, or the server's prefix cache serves them and the run measures cache hits."""
from benchmarks.real_size import point_requests
from benchmarks.workload import Length, make_requests, warmup_like


def test_warmup_prompts_have_the_measured_lengths_and_other_texts(default_model_dir):
    model_dir = str(default_model_dir)
    specs = make_requests(model_dir, 4, Length.parse("40"), Length.parse("8"), seed=1)
    warm = warmup_like(model_dir, specs, 3, seed=1)
    assert [(w.prompt_tokens, w.max_tokens) for w in warm] == [(s.prompt_tokens, s.max_tokens) for s in specs[:3]]
    assert {w.prompt for w in warm}.isdisjoint({s.prompt for s in specs})


def test_each_run_of_a_real_size_point_has_prompts_of_its_own(default_model_dir):
    specs = point_requests(str(default_model_dir), "40", "8", runs=2)
    assert set(specs) == {(1, 0), (1, 1), (8, 0), (8, 1)}
    for c in (1, 8):
        first, second = ({s.prompt for s in specs[c, i]} for i in (0, 1))
        assert first.isdisjoint(second)
