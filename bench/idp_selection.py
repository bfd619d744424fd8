"""Does IDP's selector choose by content or by position? Measured on a finished IDP grid.

    make run CONFIG=config/idp.yaml
    .venv/bin/python bench/idp_selection.py --configfile config/idp.yaml

On the grid's compressed model (its first model and first non-dense compression), for both
layouts of the pool when scored (`layout`: independent, concatenated) and every layer:
- identical prompts: all m slots one untrained prompt. Any departure from a tie is position
  bias (under attention selection a tie goes by the input's hash);
- rotation: each trained pool of the grid with its slots rotated m ways: does the winner follow
  the slot (position) or the prompt (content)?
- length: inputs cut to 8..128 tokens, identical prompts: the winning slot against length;
- routing: the grid's curated pool (prompt j trained on text domain j) on held-out text of each
  domain (the part of each source beyond its `max_chars`): the domain x prompt confusion matrix
  and routing accuracy per layer of the router (the default selection) and of the paper's
  attention score, beside the prompt with the lowest loss on each block (does each prompt know
  its domain?), the identical-prompt controls, and the outcome: the held-out loss of the prompt
  each selector picks.
Inputs: the grid's probe questions (as lm-eval gives them, question + "\\nAnswer:") and blocks
of 128 tokens of the recovery text. Writes docs/results/bench/idp_selection.md (summary, in the
docs/measured.md), idp_selection_layers.md (every layer) and idp_routing.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from knowledge_recovery import artifacts
from knowledge_recovery.models import checkpoints
from knowledge_recovery.pipeline.config import load_config
from knowledge_recovery.pipeline.grid import cells
from knowledge_recovery.pipeline.paths import RECOVERY_TEXT, Layout
from knowledge_recovery.recovery import adapters
from knowledge_recovery.recovery.dynamic_prompts import (LAYOUTS, TIE, DynamicPromptModel,
                                                         block_losses, fit_router)
from knowledge_recovery.text import load_text, text_id

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (8, 16, 32, 64, 128)
SHOWN = ("0-1", 0, 1, 5, 15, 29)  # "0-1": scores averaged over layers 0 and 1, the default


def batches(rows: list[list[int]], size: int = 16):
    """Right-padded (ids, mask) batches of token rows."""
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(chunk):
            ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
        yield ids, mask


@torch.no_grad()
def all_layer_scores(pool: DynamicPromptModel, rows, layout: str) -> torch.Tensor:
    """(layers, inputs, m) attention mass of each input on each prompt, every layer."""
    pool.layout = layout
    layers = range(pool.config.num_hidden_layers)
    return torch.cat([pool.layer_scores(ids, mask, layers) for ids, mask in batches(rows)], 1)


@torch.no_grad()
def chosen_by(pool: DynamicPromptModel, selection, rows) -> torch.Tensor:
    """The prompt `pool.select` picks for each input under `selection`."""
    pool.selection = selection
    return torch.cat([pool.select(ids, mask) for ids, mask in batches(rows)])


def winners(scores: torch.Tensor) -> torch.Tensor:
    """The winning slot of each input (layers, inputs), -1 where the best scores tie."""
    top = scores.max(-1, keepdim=True).values
    tied = (scores >= top - TIE).sum(-1) > 1
    return scores.argmax(-1).masked_fill(tied, -1)


def at(scores: torch.Tensor, layer) -> torch.Tensor:
    """Winners at one shown layer ("0-1": scores averaged over layers 0 and 1)."""
    s = scores[:2].mean(0, keepdim=True) if layer == "0-1" else scores[layer:layer + 1]
    return winners(s)[0]


def shares(win: torch.Tensor, m: int) -> str:
    n = len(win)
    ties = int((win < 0).sum())
    text = " / ".join(f"{int((win == j).sum()) / n:.2f}" for j in range(m))
    return text + (f" (ties {ties / n:.2f})" if ties else "")


def table(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n"


def probe_rows(tok, task_dir: Path, per_file: int) -> list[list[int]]:
    rows = []
    for path in sorted(task_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines()[:per_file]:
            rows.append(tok(json.loads(line)["question"] + "\nAnswer:")["input_ids"])
    return rows


def blocks(tok, text: str, count: int, length: int = 128) -> list[list[int]]:
    ids = tok(text[: count * length * 8])["input_ids"]
    return [ids[i * length:(i + 1) * length] for i in range(min(count, len(ids) // length))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default=str(REPO / "config" / "idp.yaml"))
    parser.add_argument("--blocks", type=int, default=16, help="text blocks per set")
    parser.add_argument("--per-relation", type=int, default=20,
                        help="probe questions per task file (the first ones)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "bench"))
    parser.add_argument("--only-routing", action="store_true",
                        help="the routing test alone (idp_routing.md); the position-bias tables "
                             "stay as they are")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t0, c0 = time.perf_counter(), time.process_time()
    config = load_config(args.configfile, check_models=False)
    paths = Layout(config)
    model_name = config["models"][0]["name"]
    compression = next(c["id"] for c in config["compression"] if c["method"] != "dense")
    base, tok = checkpoints.load_checkpoint(paths.checkpoint(model_name, compression))
    base.eval()
    idp = [c for c in cells(config) if c.settings["method"] == "idp" and c.model == model_name
           and c.compression == compression and c.settings["id"] == c.settings["train_id"]
           and c.settings["training"]["steps"] > 0]
    pools = {c.settings["train_id"]: adapters.load(base, c.settings, paths.adapter(
        c.model, c.compression, c.train_unit)) for c in idp}
    first = next(iter(pools.values()))
    m, n = first.pool_size, first.num_tokens
    identical = DynamicPromptModel(base, m, n, first.score_layers, "joint", 0.0,
                                   router_blocks=first.router_blocks, seed=12345).eval()
    with torch.no_grad():
        identical.prompts.copy_(identical.prompts[0:1].expand_as(identical.prompts))
    probes = probe_rows(tok, Path(paths.task_dir(config["tasks"][0]["name"])), args.per_relation)
    text = Path(paths.text(RECOVERY_TEXT)).read_text()
    inputs = {"probe questions": probes, "128-token blocks": blocks(tok, text, args.blocks)}
    layers = base.config.num_hidden_layers
    shown = [l for l in SHOWN if l == "0-1" or l < layers]
    summary, per_layer = [], []
    if args.only_routing:
        routing = routing_test(config, paths, base, tok, pools, identical, args.blocks,
                               inputs["128-token blocks"])
        _write_routing(args, model_name, compression, m, n, t0, c0, routing)
        return

    def record(experiment, layout, input_name, win_by_layer, extra=""):
        summary.append({"experiment": experiment, "layout": layout, "inputs": input_name,
                        **{f"layer {l}": extra or shares(w, m) for l, w in win_by_layer.items()}})

    # identical prompts: any winner at all is position bias
    for layout in LAYOUTS:
        for name, rows in inputs.items():
            scores = all_layer_scores(identical, rows, layout)
            record("identical prompts", layout, name, {l: at(scores, l) for l in shown})
            for l in range(layers):
                per_layer.append({"experiment": "identical prompts", "layout": layout,
                                  "inputs": name, "layer": l, "share per slot": shares(
                                      winners(scores[l:l + 1])[0], m)})
    # length: identical prompts, text blocks cut to each length
    length_rows = []
    for layout in LAYOUTS:
        for length in LENGTHS:
            scores = all_layer_scores(identical, [r[:length] for r in inputs["128-token blocks"]],
                                      layout)
            length_rows.append({"layout": layout, "tokens": length,
                                **{f"layer {l}": shares(at(scores, l), m) for l in shown}})
    # rotation: slots of each trained pool rotated m ways
    rotation_rows = []
    # the seeds pool (one text, m seeds) is a null for the oracle, not a pool to route
    routed_or_curated = {c.settings["train_id"] for c in idp if len(
        {json.dumps(t, sort_keys=True) for t in c.settings.get("texts") or [0, 1]}) > 1}
    for train_id, pool in pools.items():
        if pool.scheme == "curated" and train_id not in routed_or_curated:
            continue
        original = pool.prompts.detach().clone()
        for layout in LAYOUTS:
            slot, prompt = [], []
            for r in range(m):
                with torch.no_grad():
                    pool.prompts.copy_(original.roll(r, 0))  # slot s holds prompt (s - r) % m
                scores = all_layer_scores(pool, probes, layout)
                win = torch.stack([at(scores, l) for l in shown])
                slot.append(win)
                prompt.append(torch.where(win < 0, win, (win - r) % m))  # a tie stays one
            slot, prompt = torch.stack(slot), torch.stack(prompt)  # (rotations, layers, inputs)
            same_slot = (slot == slot[0]).all(0).float().mean(-1)
            same_prompt = (prompt == prompt[0]).all(0).float().mean(-1)
            rotation_rows.append({"pool": train_id, "layout": layout, **{
                f"layer {l}": f"slot {same_slot[i]:.2f} / prompt {same_prompt[i]:.2f}"
                for i, l in enumerate(shown)}})
        with torch.no_grad():
            pool.prompts.copy_(original)
    routing = routing_test(config, paths, base, tok, pools, identical, args.blocks,
                           inputs["128-token blocks"])
    head = _head(args, model_name, compression, m, n, t0, c0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(out / "idp_selection.md", head + (
        "**Identical prompts** (m copies of one untrained prompt): share of inputs each slot "
        "wins (ties: the best scores equal to 1e-6; attention selection then picks by the "
        "input's hash). Anything but a tie is position bias.\n\n" + table(summary)
        + "\n**Length** (identical prompts, 128-token blocks cut to each length): share each "
        "slot wins.\n\n" + table(length_rows)
        + f"\n**Rotation** (each trained pool, slots rotated {m} ways, probe questions): share of "
        "inputs whose winning *slot* is the same in every rotation, and whose winning *prompt* "
        "is. Choice by content: prompt 1.00; by position: slot 1.00.\n\n" + table(rotation_rows)))
    artifacts.write_text(out / "idp_selection_layers.md", head + table(per_layer))
    print((out / "idp_selection.md").read_text())
    _write_routing(args, model_name, compression, m, n, t0, c0, routing)


def _head(args, model_name, compression, m, n, t0, c0) -> str:
    """The first line of each table file: the command, the cell, the commit, the time so far."""
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (f"`bench/idp_selection.py --configfile {Path(args.configfile).name}"
            f"{' --only-routing' if args.only_routing else ''}` on {model_name} / {compression}, "
            f"pool m={m} x n={n}, commit {artifacts.git_commit()}; {wall:.0f} s wall, "
            f"{cpu:.0f} s CPU.\n\n")


def _write_routing(args, model_name, compression, m, n, t0, c0, routing: str) -> None:
    artifacts.write_text(Path(args.out) / "idp_routing.md",
                         _head(args, model_name, compression, m, n, t0, c0) + routing)
    print(routing)


def routing_test(config, paths, base, tok, pools, identical, count: int, reference) -> str:
    """The curated pool on held-out text of its domains: confusion matrix per layout at the
    default score layers, routing accuracy per layer, beside the lowest-loss prompt. A
    diagnostic beside it: the scores centred per prompt (each prompt's mean score over the
    `reference` inputs, the grid's own recovery text, subtracted), which removes what a prompt
    draws from every input alike and keeps what depends on the input."""
    entry = next((c.settings for c in cells(config) if c.settings["method"] == "idp"
                  and c.settings["scheme"] == "curated" and c.settings["id"] == c.settings["train_id"]
                  and len({json.dumps(s, sort_keys=True) for s in c.settings["texts"]}) > 1), None)
    if entry is None:
        return "No curated pool of distinct texts in this grid: no routing test.\n"
    pool = pools[entry["train_id"]]
    m = pool.pool_size
    names, held_out = [], []
    for spec in entry["texts"]:
        whole = load_text({**spec, "max_chars": 10 ** 9})
        rest = whole[spec["max_chars"]:]
        if len(rest) < 2000:
            raise SystemExit(f"text {text_id(spec)} has no held-out part beyond max_chars")
        names.append(spec.get("name") or Path(spec["paths"][0]).name)
        held_out.append(blocks(tok, rest, count))
    rows = [r for b in held_out for r in b]
    domain = torch.tensor([d for d, b in enumerate(held_out) for _ in b])
    # does each prompt know its domain? the prompt with the lowest loss on each block
    loss_table = block_losses(pool, torch.tensor(rows), [len(rows[0])], 8)[:, 0]  # (blocks, m)
    best_loss = loss_table.argmin(-1)
    out = [f"**Routing test**: the curated pool `{entry['train_id']}` (prompt j trained alone on "
           f"domain j), {count} held-out blocks of 128 tokens per domain (each source beyond its "
           f"`max_chars`). Rows: the input's domain; columns: the prompt chosen (share of the "
           f"domain's blocks). Domains: " + ", ".join(f"{j} = {d}" for j, d in enumerate(names))
           + ".\n"]

    def confusion(chosen, title):
        def share(d, j):
            return f"{float((chosen[domain == d] == j).float().mean()):.2f}"

        rows_ = [{"domain": names[d], **{f"prompt {j}": share(d, j) for j in range(m)}}
                 for d in range(m)]
        accuracy_ = float((chosen == domain).float().mean())
        return f"\n{title}: routing accuracy {accuracy_:.2f}\n\n" + table(rows_)

    out.append(confusion(best_loss, "Lowest loss (each block's best prompt by its own loss; "
                                    "what a perfect selector would pick)"))
    picks = {"lowest loss (floor)": best_loss, "router (the default)": chosen_by(pool, "router", rows)}
    out.append(confusion(picks["router (the default)"], "Router selection (the default; fitted "
                         "by the train step on each prompt's training text), score layers "
                         f"{pool.score_layers}"))
    # the router at other single layers: fitted here as the train step fits it
    train_texts = [load_text(spec) for spec in entry["texts"]]
    cfg = entry["training"]
    fitted = {k: v.clone() for k, v in pool.router.state_dict().items()}
    router_by_layer, layers_kept = {}, pool.score_layers
    for layer in [l for l in SHOWN if l != "0-1" and l < pool.config.num_hidden_layers]:
        pool.score_layers = [layer]
        fit_router(pool, tok, train_texts, cfg, 0, log=lambda *_: None)
        chosen = chosen_by(pool, "router", rows)
        router_by_layer[f"L{layer}"] = f"{float((chosen == domain).float().mean()):.2f}"
    pool.score_layers = layers_kept
    pool.router.load_state_dict(fitted)
    accuracy = []
    for layout in LAYOUTS:
        scores = all_layer_scores(pool, rows, layout)
        centred = scores - all_layer_scores(pool, reference, layout).mean(1, keepdim=True)
        out.append(confusion(at(scores, "0-1"), f"Attention selection, layout {layout}, score "
                                                 f"layers 0-1"))
        if layout == "independent":
            picks["attention (the paper's score)"] = chosen_by(pool, "attention", rows)
        for name, s in (("attention", scores), ("centred (diagnostic)", centred)):
            accuracy.append({"layout": layout, "scores": name, **{
                f"L{l}": f"{float((winners(s[l:l + 1])[0] == domain).float().mean()):.2f}"
                for l in range(s.shape[0])}})
        out.append(confusion(at(centred, "0-1"), f"Centred scores (diagnostic), layout {layout}, "
                                                  f"score layers 0-1"))
    identical.layout = "independent"
    control = chosen_by(identical, "attention", rows)
    out.append(confusion(control, "Control: identical prompts, layout independent (ties, "
                                  "picked by the input's hash)"))
    # the router's control: identical prompts, the router fitted by lowest loss (a joint pool)
    fit_router(identical, tok, [train_texts[0]], cfg, 0, log=lambda *_: None)
    control = chosen_by(identical, "router", rows)
    out.append(confusion(control, "Control: identical prompts, router fitted by lowest loss "
                                  "(every block's losses tie: the router stays zero, ties go by "
                                  "the input's hash)"))
    picks["random (input's hash)"] = chosen_by(pool, "random", rows)
    for j in range(m):
        picks[f"always prompt {j}"] = torch.full((len(rows),), j)
    blocks_ = torch.arange(len(rows))
    out.append("\n**Outcome**: mean held-out loss (nats per token) of the prompt each selector "
               "picks, over all domains' blocks; the router's accuracy when fitted at single "
               "layers: " + ", ".join(f"{k} {v}" for k, v in router_by_layer.items()) + ".\n\n"
               + table([{"selector": name, "mean loss": f"{float(loss_table[blocks_, c].mean()):.3f}",
                         "routing accuracy": f"{float((c == domain).float().mean()):.2f}"}
                        for name, c in picks.items()]))
    out.append("\nRouting accuracy of attention selection at each single layer (chance "
               f"{1 / m:.2f}; a tie counts as wrong):\n\n" + table(accuracy))
    return "".join(out)


if __name__ == "__main__":
    main()
