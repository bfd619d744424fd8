"""The peft methods: one implementation, parameterised per method by its peft config class and
how an entry's settings map onto that config (peft's own registry, `register_peft_method`, is
the model). Adapters are saved and loaded with peft's save_pretrained / PeftModel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from knowledge_recovery.recovery.entries import TrainedSettings
from knowledge_recovery.registry import RecoveryMethod, register_recovery_method, setting

if TYPE_CHECKING:  # annotations only: method modules import torch when they run
    import torch


def register_peft(name: str, config_class: str, config_kwargs, settings: type, side: str,
                  fit_setting: str = "method", after_build=None, prompt_cache=None) -> None:
    """Register a peft method: `settings` is its settings dataclass (a TrainedSettings),
    `config_kwargs(settings, peft)` gives the keyword arguments of the peft config class named
    `config_class`; `after_build(model, settings, seed)` initialises further."""

    def build(base, s, seed, init):
        import peft
        import torch

        torch.manual_seed(seed)
        config = getattr(peft, config_class)(task_type=peft.TaskType.CAUSAL_LM,
                                             **config_kwargs(s, peft))
        wrapped = _prefix_reaches_generation(peft.get_peft_model(base, config))
        if init and after_build is not None:
            after_build(wrapped, s, seed)
        return wrapped

    register_recovery_method(RecoveryMethod(
        name=name, settings=settings, build=build, save=_save, load=_load,
        fit_setting=fit_setting, side=side, prompt_cache=prompt_cache))


def _save(model, path) -> None:
    model.save_pretrained(path)
    # peft keeps module names in sets and writes them in hash order, which differs from process
    # to process: sorted, the same adapter is the same bytes (peft reads them back as sets)
    for config in Path(path).rglob("adapter_config.json"):
        data = json.loads(config.read_text())
        for key in ("target_modules", "feedforward_modules", "modules_to_save", "exclude_modules"):
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key])
        config.write_text(json.dumps(data, indent=2, sort_keys=True))


def _load(base, path):
    from peft import PeftModel

    return _prefix_reaches_generation(PeftModel.from_pretrained(base, path))


def _prefix_reaches_generation(model):
    """peft (0.21) prepares each generation step from `past_key_values`, the cache's name before
    transformers 5, whose `generate` passes it as `cache`: peft then saw no cache at any step, put
    prefix tuning's keys and values in a second argument the model ignored (the prefix vanished
    from generation) and put prompt tuning's prompt in front of every new token. peft is shown
    the cache under its old name and the model gets it under the new one. Prompt tuning: peft
    also drops the position ids, so in a left-padded batch a padded row's tokens sat further from
    the prompt than in the evaluated model; they are counted from the attention mask (prompt
    included), as transformers does for a plain model. Can go once peft reads `cache` and passes
    position ids (peft after 0.21.2; tests/test_evaluation.py's generation tests say when)."""
    import torch

    config = model.active_peft_config
    if not config.is_prompt_learning:
        return model
    base_prepare, prepare = (model.base_model_prepare_inputs_for_generation,
                             model.prepare_inputs_for_generation)
    prefix = config.peft_type in ("PREFIX_TUNING", "CARTRIDGE")

    def base_prepare_old_name(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def prepare_new_name(*args, **kwargs):  # named so: generate reads its signature
        inputs = prepare(*args, **kwargs)
        if "cache" in kwargs and "past_key_values" in inputs:  # a generate that says `cache`
            inputs["cache"] = inputs.pop("past_key_values")
        mask = inputs.get("attention_mask")
        if not prefix and inputs.get("position_ids") is None and torch.is_tensor(mask) \
                and mask.dim() == 2:
            queries = (inputs["inputs_embeds"] if inputs.get("inputs_embeds") is not None
                       else inputs["input_ids"]).shape[1]
            positions = mask.long().cumsum(-1) - 1
            inputs["position_ids"] = positions.masked_fill(mask == 0, 1)[:, -queries:]
        return inputs

    model.base_model_prepare_inputs_for_generation = base_prepare_old_name
    model.prepare_inputs_for_generation = prepare_new_name
    return model


def learned_prompt_cache(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of a prompt-learning adapter's virtual tokens. They come
    first and attention is causal, so they are the same for every input: prompt tuning's are
    those its prompt embeddings produce, prefix tuning's are learned directly."""
    import torch
    from transformers import DynamicCache

    base = model.get_base_model()
    with torch.no_grad():
        prompt = model.get_prompt(batch_size=1)
        if isinstance(prompt, torch.Tensor):  # prompt tuning: embeddings, run through the model
            cache = DynamicCache(config=base.config)
            dtype = base.get_input_embeddings().weight.dtype
            base(inputs_embeds=prompt.to(dtype), past_key_values=cache, use_cache=True)
            prompt = cache
    if hasattr(prompt, "layers"):
        return [(layer.keys, layer.values) for layer in prompt.layers]
    return [(kv[0], kv[1]) for kv in prompt]  # peft's legacy layout: per layer (2, 1, H, n, d)


def init_prefix_from_vocab(model, num_tokens: int, seed: int) -> None:
    """Set the prefix to the keys and values that n random vocabulary tokens produce in every
    layer, i.e. a real (meaningless) text prefix. peft's default random init makes keys and
    values the model has never seen and wrecks it before training (docs/pipeline.md, the train stage)."""
    import torch
    from transformers import DynamicCache

    from knowledge_recovery.recovery.adapters import sample_vocab_embeddings

    base = model.get_base_model()
    ids, _ = sample_vocab_embeddings(base, num_tokens, seed)
    cache = DynamicCache(config=base.config)
    with torch.no_grad(), model.disable_adapter():
        base(input_ids=ids.unsqueeze(0).to(base.device), past_key_values=cache, use_cache=True)
    # peft's layout of one prefix row: (layer, key|value, kv head, head dim), flattened
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
    rows = kv.permute(3, 0, 1, 2, 4).reshape(num_tokens, -1)  # (L, 2, H, n, d) -> (n, L*2*H*d)
    emb = model.prompt_encoder[model.active_adapter].embedding.weight
    if emb.shape != rows.shape:
        raise ValueError(f"prefix layout {tuple(emb.shape)} does not match the model's cache "
                         f"{tuple(rows.shape)}")
    emb.data.copy_(rows)


@dataclass(frozen=True, kw_only=True)
class PromptTuningSettings(TrainedSettings):
    num_virtual_tokens: int = setting(help="prompt length", minimum=1)

    def id(self) -> str:
        return f"prompt-n{self.num_virtual_tokens}"


@dataclass(frozen=True, kw_only=True)
class PrefixTuningSettings(PromptTuningSettings):
    prefix_init: Literal["vocab", "random"] = setting(
        "vocab", help="vocab = keys/values of random vocabulary tokens; random = peft's")

    def id(self) -> str:
        return f"prefix-n{self.num_virtual_tokens}"


@dataclass(frozen=True, kw_only=True)
class LoraSettings(TrainedSettings):
    r: int = setting(help="rank", minimum=1)
    alpha: float = setting(16, help="scaling numerator", exclusiveMinimum=0)
    dropout: float = setting(0.05, help="dropout on the adapter's input", minimum=0, maximum=1)
    target_modules: list[str] = setting(["q_proj", "v_proj"], help="the linears adapted",
                                        minItems=1)

    def id(self) -> str:
        return f"{self.method}-r{self.r}"


@dataclass(frozen=True, kw_only=True)
class IA3Settings(TrainedSettings):
    # the paper's choice: keys, values and the feed-forward output layer's input
    target_modules: list[str] = setting(["k_proj", "v_proj", "down_proj"], minItems=1,
                                        help="the linears rescaled")
    feedforward_modules: list[str] = setting(["down_proj"], minItems=1, help="those of "
                                             "target_modules whose input (not output) is rescaled")

    def id(self) -> str:
        return "ia3-" + ".".join(m.removesuffix("_proj") for m in self.target_modules)


def _prefix_init(model, s: PrefixTuningSettings, seed):
    if s.prefix_init == "vocab":
        init_prefix_from_vocab(model, s.num_virtual_tokens, seed)


def _lora_kwargs(s: LoraSettings, peft, **extra):
    return dict(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                target_modules=list(s.target_modules), **extra)


# Initialised from rows of the vocabulary embedding, as in Lester et al. and Xu et al.
register_peft("prompt_tuning", "PromptTuningConfig",
              lambda s, peft: dict(num_virtual_tokens=s.num_virtual_tokens,
                                   prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB),
              PromptTuningSettings, side="input", prompt_cache=learned_prompt_cache)
register_peft("prefix_tuning", "PrefixTuningConfig",
              lambda s, peft: dict(num_virtual_tokens=s.num_virtual_tokens),
              PrefixTuningSettings, side="input", after_build=_prefix_init,
              prompt_cache=learned_prompt_cache)
register_peft("lora", "LoraConfig", _lora_kwargs, LoraSettings, side="weights",
              fit_setting="target_modules")
# DoRA (Liu et al. 2024): LoRA with the weight's magnitude and direction trained apart.
register_peft("dora", "LoraConfig", lambda s, peft: _lora_kwargs(s, peft, use_dora=True),
              LoraSettings, side="weights", fit_setting="target_modules")
# (IA)^3 (Liu et al. 2022): learned vectors that rescale keys, values and feed-forward inputs.
register_peft("ia3", "IA3Config",
              lambda s, peft: dict(target_modules=list(s.target_modules),
                                   feedforward_modules=list(s.feedforward_modules)),
              IA3Settings, side="weights", fit_setting="target_modules")
