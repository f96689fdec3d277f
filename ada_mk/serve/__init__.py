"""`adamk-serve`: an OpenAI-compatible HTTP server with continuous batching over the B slots of a
MegaKernel (or of the NumPy reference executor). scheduler: requests onto slots; api: the OpenAI
request and response objects; server: HTTP; metrics: Prometheus text."""
