"""One module per compression method; each registers its record (see registry.py). Every module
in this folder is imported on the first registry look-up, so a module imports torch and its
family's code inside its functions, not at import."""
