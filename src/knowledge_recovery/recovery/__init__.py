"""Recovery: what a `recovery:` entry says (`entries`, torch-free), attaching, saving and loading
adapters (`adapters`), training them (`training`), IDP's model (`dynamic_prompts`), and one module
per method in `methods/`."""
