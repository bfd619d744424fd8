"""Deployment: export to a runtime (OpenVINO), prompts as key/value caches, latency."""
