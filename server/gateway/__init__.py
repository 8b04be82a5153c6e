"""The Ray Serve ingress: FastAPI routes, auth, validation, SSE framing, metrics. No tensors."""
