"""Training a recovery adapter: the loop, its losses, validation, and resumable checkpoints.

AdamW with warm-up and cosine decay, gradient clipping, optional bf16 autocast, a
language-modelling or distillation (KL to the dense model) loss, the best validation state
kept, and periodic checkpoints from which a killed run resumes. Works on any model whose
trainable parameters are the adapter's (see recovery.attach).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F


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
    batch = batch.to(_device(model))
    return model(input_ids=batch, labels=batch).loss


def distill_loss(model, teacher, batch: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per token on the recovery text; the dense model is the teacher."""
    batch = batch.to(_device(model))
    with torch.no_grad():
        target = teacher(input_ids=batch).logits.float()
    # prompt tuning returns logits for its virtual tokens too: keep the input's positions
    logits = model(input_ids=batch).logits[:, -batch.shape[1]:].float()
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, -1).flatten(0, 1),
                    F.log_softmax(target / t, -1).flatten(0, 1),
                    log_target=True, reduction="batchmean") * t * t


@torch.no_grad()
def mean_loss(model, blocks: torch.Tensor, batch_size: int, max_batches: int) -> float:
    """Validation: always the language-modelling loss, so runs with either objective compare."""
    model.eval()
    losses = [lm_loss(model, blocks[i: i + batch_size]).item()
              for i in range(0, min(len(blocks), batch_size * max_batches), batch_size)]
    return sum(losses) / len(losses)


def trainable_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    missing = set(state) - {k for k, _ in model.named_parameters()}
    if missing:
        raise KeyError(f"state has parameters the model lacks: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)


def converged(val_loss: list, step: int, window: int, min_improvement: float) -> bool:
    """Whether the best validation loss up to `step` is less than `min_improvement` (a fraction)
    below the best of `window` steps earlier. `val_loss`: [(step, loss)] in step order."""
    earlier = [v for s, v in val_loss if s <= step - window]
    if not earlier:
        return False
    then, now = min(earlier), min(v for s, v in val_loss if s <= step)
    return then - now < min_improvement * abs(then)


def _device(model):
    return next(model.parameters()).device


def _autocast(model, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(_device(model).type, dtype=torch.bfloat16)


def checkpoint_file(resume_path) -> Path:
    return Path(resume_path) / "training_state.pt"


def _read_checkpoint(path: Path, log) -> dict | None:
    """The saved training state, or None. Loaded as tensors and plain data only (no code can run
    from it); a truncated or foreign file is renamed to *.unreadable and training starts over."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: start over, keep it for a look
        aside = path.with_suffix(".unreadable")
        os.replace(path, aside)
        log(f"WARNING: training checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
            f"moved to {aside}, training starts over")
        return None


def train(model, tokenizer, text: str, cfg: dict, seed: int, log=print, teacher=None,
          resume_path: str | os.PathLike | None = None, progress: bool = True) -> tuple[dict, dict]:
    """Train the adapter in place. Returns (best trainable state, history).

    With `resume_path`, a training checkpoint is written there every `checkpoint_every` steps
    and picked up by the next call with the same arguments. It stays after training: the caller
    removes the folder (`artifacts.remove_state`) once the adapter and manifest are in place, so
    that a kill in between does not cost the whole run. An unreadable checkpoint is set aside."""
    from tqdm import tqdm

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
    objective = cfg.get("objective", "lm")
    if objective == "distill" and teacher is None:
        raise ValueError("objective 'distill' needs the dense model as teacher")
    start = 1
    resume = checkpoint_file(resume_path) if resume_path else None
    saved = _read_checkpoint(resume, log) if resume else None
    if saved is not None:
        if saved["cfg"] == cfg and saved["seed"] == seed:
            load_trainable_state(model, saved["trainable"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            history, best, start = saved["history"], saved["best"], saved["step"] + 1
            log(f"resumed from {resume} at step {saved['step']}")
        else:
            log(f"ignoring {resume}: it was written for other settings")
    if start == 1:
        val0 = mean_loss(model, val_blocks, cfg["batch_size"], cfg["val_batches"])
        history = {"train_loss": [], "val_loss": [(0, val0)], "step_s": [], "routing": []}
        if teacher is not None:  # the dense model on the same windows: the loss to recover to
            history["teacher_val_loss"] = mean_loss(teacher, val_blocks, cfg["batch_size"],
                                                    cfg["val_batches"])
        best = (val0, 0, trainable_state(model))
    bar = tqdm(range(start, steps + 1), initial=start - 1, total=steps, desc="train",
               disable=None if progress else True,  # None: off when not a terminal (a log)
               mininterval=5, file=None)
    for step in bar:
        model.train()
        t0 = time.perf_counter()
        batch = train_blocks[torch.randint(len(train_blocks), (cfg["batch_size"],), generator=gen)]
        with _autocast(model, cfg.get("precision", "float32")):
            loss = (distill_loss(model, teacher, batch, cfg.get("temperature", 1.0))
                    if objective == "distill" else lm_loss(model, batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history["train_loss"].append((step, loss.item()))
        history["step_s"].append(time.perf_counter() - t0)
        routing = getattr(model, "last_routing", None)
        if routing is not None:
            history["routing"].append(routing.tolist())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar.disable and step % max(1, steps // 10) == 0:  # a log file: a line per 10%
            log(f"step {step}/{steps} ({step / steps:.0%}) train_loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.2f} s a step)")
        if step % cfg["eval_every"] == 0 or step == steps:
            val = mean_loss(model, val_blocks, cfg["batch_size"], cfg["val_batches"])
            history["val_loss"].append((step, val))
            log(f"step {step}/{steps} train_loss {loss.item():.4f} val_loss {val:.4f}")
            if val < best[0]:
                best = (val, step, trainable_state(model))
            if cfg.get("stop_when") and converged(history["val_loss"], step, **cfg["stop_when"]):
                log(f"converged at step {step}: the best validation loss improved by less than "
                    f"{cfg['stop_when']['min_improvement']:.1%} over the last "
                    f"{cfg['stop_when']['window']} steps")
                history["stopped_step"] = step
                break
        if resume and step < steps and step % cfg.get("checkpoint_every", 50) == 0:
            resume.parent.mkdir(parents=True, exist_ok=True)
            tmp = resume.with_suffix(".tmp")
            torch.save({"cfg": cfg, "seed": seed, "step": step, "history": history, "best": best,
                        "trainable": trainable_state(model), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": gen.get_state(),
                        "torch_rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, resume)
    bar.close()
    history.update(best_val_loss=best[0], best_step=best[1], initial_val_loss=history["val_loss"][0][1],
                   train_blocks=len(train_blocks), val_blocks=len(val_blocks))
    return best[2], history
