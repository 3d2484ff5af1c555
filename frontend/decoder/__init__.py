"""The frontend's access to the decoder: the `DecoderClient` interface, its Triton gRPC implementation,
and the decoder's health (probes, the silent-stream watchdog)."""
