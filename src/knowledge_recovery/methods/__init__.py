"""One module per method family or method; each registers its records (see registry.py).
Every module in this folder is imported on the first registry look-up."""
