# The dead-code check's reviewed allowlist (tests/unit/test_dead_code.py runs vulture with it; the
# paths, min_confidence and ignored decorators are in pyproject.toml's [tool.vulture]).
#
# vulture matches names, not places: each line below marks one name as used wherever it appears,
# so files may move without this list changing. Every entry says why nothing in the scanned code
# reads it. Entries marked TEST-ONLY are production API that only tests read: each is a follow-up
# (move the test to the public behaviour, then delete the entry and the code). This file is never
# imported; `_` stands for "some object".
# ruff: noqa
# flake8: noqa

# ---- APIs that call us by name ----------------------------------------------------------------
TritonPythonModel            # Triton's Python backend instantiates this class of each 1/model.py
_.initialize                 # TritonPythonModel.initialize: Triton calls it at model load
_.forward                    # torch.nn.Module.forward: nn.Module.__call__ runs it
_.__class__                  # frontend/telemetry/ttft_stamps.py swaps an aiohttp Server's class in place
_.sentencepiece_model_pb2    # set on the sentencepiece module for transformers to import (text/sentencepiece_compat.py)
_.tenant_api_keys            # set on smg's RouterArgs; smg's launch_router reads them (serve/router_launch.py)
_.control_plane_api_keys     # as tenant_api_keys
_._family                    # engine_setup.EngineMetrics keeps its Triton MetricFamily alive while its metrics are

# ---- read by name from a string ---------------------------------------------------------------
_.num_forward_passes         # engine counters: engine_setup.COUNTERS / GAUGES and llmapi_worker.COUNTERS read
_.num_prefill_tokens         #   them with getattr(engine, name) and export them as Triton metrics
_.num_cancelled
_.last_cancel_latency_steps
KERNELS                      # benchmarks/membw.py: names the kernels its report keys by (its test compares them)

# ---- the wire: pydantic fields serialized or validated, never read by attribute ---------------
_.annotations                # output_text / input text annotations (Responses API)
_.background                 # Response object
_.cache_control              # accepted on chat content parts and messages (Anthropic-style hint), no effect
_.cache_write_tokens         # Responses usage details
_.completed_at               # Response object
_.completion_tokens_details  # chat usage
_.context_length             # /v1/models entry
_.deleted                    # DELETE /v1/responses/{id} answer
_.encrypted_content          # Responses reasoning item (validated to be absent)
_.first_id                   # input item list page
_.last_id                    # input item list page
_.has_more                   # input item list page
_.generate_summary           # Responses reasoning options (accepted, deprecated upstream)
_.image                      # a content part type the request models reject with a 400
_.image_url                  # as image
_.input_audio                # as image
_.include_obfuscation        # Responses stream options
_.incomplete_details         # Response object
_.input_tokens_details       # Responses usage
_.output_tokens_details      # Responses usage
_.owned_by                   # /v1/models entry
_.pricing                    # /v1/models entry
_.prompt_tokens_details      # chat usage
_.reasoning_content          # assistant message / delta field (the chat template reads the dumped message)
_.service_tier               # Response object
_.system_fingerprint         # chat completion objects (always null: there is no fingerprint)
_.tool_call_id               # tool message field (the chat template reads the dumped message)
_.total_tokens               # usage objects
_.truncation                 # Response object
_.verbosity                  # Responses text options

# ---- the LLM-API stand-in mirrors TensorRT-LLM's public types (llmapi_standin.py cites them) --
_.exclude_input_from_output  # tensorrt_llm.SamplingParams field
_.return_perf_metrics        # tensorrt_llm.SamplingParams field
_.cumulative_logprob         # tensorrt_llm CompletionOutput field
_.token_ids_diff             # tensorrt_llm CompletionOutput property
_.logprobs_diff              # tensorrt_llm CompletionOutput property

# ---- contracts that a test checks against -----------------------------------------------------
request_problems             # trtllm/backend_contract.py: the contract check tests/integration/test_wire_contract.py
                             #   runs on every recorded decoder request
ENGINE_XGRAMMAR              # trtllm/backend_contract.py: the xgrammar TensorRT-LLM pins (docs/GPU.md; tests/engine_guides.py)

# ---- TEST-ONLY: production API read only by tests (follow-ups; see the header) -----------------
_.num_preemptions            # TEST-ONLY engine/engine.py counter (tests/unit/test_engine.py); not exported
_.wait_idle                  # TEST-ONLY frontend/openai/compile_pool.py (tests/unit/test_guide_compiles.py)
_.worker_pids                # TEST-ONLY frontend/openai/compile_pool.py (tests/unit/test_guide_compiles.py)
_.num_killed                 # TEST-ONLY frontend/openai/compile_pool.py (tests/unit/test_guide_compiles.py)
_.open_requests              # TEST-ONLY frontend/decoder/health.py (tests/unit/test_self_heal_units.py)
plain_text                   # TEST-ONLY frontend/openai/literal_text.py (tests/unit/test_literal_text.py)
page_size                    # TEST-ONLY frontend/http/playground.py (tests/unit/test_playground_files.py, test_playground.py)
_.reloads                    # TEST-ONLY frontend/tenancy/tenants.py (tests/unit/test_tenants.py)
_.ignored_fields             # TEST-ONLY frontend/openai/request_models.py (tests/unit/test_protocol.py); the warning log is the behaviour
