"""Recovery methods (peft): build the adapter for a `recovery:` entry and train it with a
language-modelling loss on the recovery text. The base model stays frozen, so a pruned or
quantized model keeps exactly the compression its cell claims.
"""
from __future__ import annotations

import math
import time

import torch


def peft_config(entry: dict):
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    method = entry["method"]
    if method == "prompt_tuning":
        # Initialised from rows of the vocabulary embedding, as in Lester et al. and Xu et al.
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                  num_virtual_tokens=entry["num_virtual_tokens"],
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    if method == "lora":
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=entry["r"], lora_alpha=entry["alpha"],
                          lora_dropout=entry["dropout"], target_modules=entry["target_modules"])
    raise ValueError(f"unknown recovery method {method!r}")


def attach(model, entry: dict):
    """Wrap a frozen base model with the entry's untrained adapter."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config(entry))


def token_blocks(tokenizer, text: str, seq_len: int) -> torch.Tensor:
    """Tokenize once and cut into non-overlapping blocks of seq_len tokens."""
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    n = len(ids) // seq_len
    if n < 2:
        raise ValueError(f"recovery text gives {len(ids)} tokens: too few for two blocks of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def split_blocks(blocks: torch.Tensor, val_fraction: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=gen)
    n_val = max(1, int(len(blocks) * val_fraction))
    return blocks[order[n_val:]], blocks[order[:n_val]]


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    batch = batch.to(next(model.parameters()).device)
    return model(input_ids=batch, labels=batch).loss


@torch.no_grad()
def mean_loss(model, blocks: torch.Tensor, batch_size: int, max_batches: int) -> float:
    model.eval()
    losses = [lm_loss(model, blocks[i: i + batch_size]).item()
              for i in range(0, min(len(blocks), batch_size * max_batches), batch_size)]
    return sum(losses) / len(losses)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(model, tokenizer, text: str, cfg: dict, seed: int, log=print) -> tuple[dict, dict]:
    """Train the adapter of a peft model in place. Returns (best adapter state, history)."""
    torch.manual_seed(seed)
    train_blocks, val_blocks = split_blocks(token_blocks(tokenizer, text, cfg["seq_len"]),
                                            cfg["val_fraction"], seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warmup, steps = cfg["warmup_steps"], cfg["steps"]

    def lr_factor(step):  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    val0 = mean_loss(model, val_blocks, cfg["batch_size"], cfg["val_batches"])
    history = {"train_loss": [], "val_loss": [(0, val0)], "step_s": []}
    best = (val0, 0, _adapter_state(model))
    for step in range(1, steps + 1):
        model.train()
        t0 = time.perf_counter()
        idx = torch.randint(len(train_blocks), (cfg["batch_size"],), generator=gen)
        loss = lm_loss(model, train_blocks[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history["train_loss"].append((step, loss.item()))
        history["step_s"].append(time.perf_counter() - t0)
        if step % cfg["eval_every"] == 0 or step == steps:
            val = mean_loss(model, val_blocks, cfg["batch_size"], cfg["val_batches"])
            history["val_loss"].append((step, val))
            log(f"step {step}/{steps} train_loss {loss.item():.4f} val_loss {val:.4f}")
            if val < best[0]:
                best = (val, step, _adapter_state(model))
    history.update(best_val_loss=best[0], best_step=best[1], initial_val_loss=val0,
                   train_blocks=len(train_blocks), val_blocks=len(val_blocks))
    return best[2], history


def _adapter_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_best(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)
