"""The frontend's access to the decoder: the `DecoderClient` interface with its values and failures,
its Triton gRPC implementation, and the decoder's health (probes, the silent-stream watchdog).

Depends on telemetry (the request context, TTFT stamps) and on the error envelope (`http_error`)."""
from frontend.decoder.health import DecoderHealth
from frontend.decoder.interface import (DecoderBusy, DecoderCapabilities, DecoderClient, DecoderError, DecoderFailure,
                                        DecoderResponse, DecoderUnavailable, http_error)
from frontend.decoder.probes import probed_health
from frontend.decoder.triton_client import TritonDecoder, startup_refusal

__all__ = ["DecoderBusy", "DecoderCapabilities", "DecoderClient", "DecoderError", "DecoderFailure", "DecoderHealth",
           "DecoderResponse", "DecoderUnavailable", "TritonDecoder", "http_error", "probed_health", "startup_refusal"]
