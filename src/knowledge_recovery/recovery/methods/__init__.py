"""One module per recovery method (peft_tuners: the peft family); each registers its records (see
registry.py). Every module in this folder is imported on the first registry look-up, so a module
imports torch and peft inside its functions, not at import."""
