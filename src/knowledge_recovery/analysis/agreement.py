"""How closely a half-precision cell answers as its float32 twin: per-answer log-likelihood
gaps and the share of questions answered alike, against stated tolerances. Used by the
half-precision grid test (CPU) and `make gpu-check` (the same grid on a GPU).

The tolerances were measured on the smoke grid's tiny models (2026-12-06, CPU): uncompressed
cells differ by at most 0.015 nats per answer in bfloat16 and 0.002 in float16 and answer alike
on 59-60 of 60 questions. Compressed cells differ more: GPTQ runs on half-precision
activations and its error feedback takes other rounding decisions (11% of tiny Gemma-3's
weights identical to the float32 run's), so they are other models: up to 0.52 nats (bfloat16)
and 0.18 (float16) per answer, and tiny Gemma-3's bfloat16 GPTQ cells answer alike on 55-57 of
60 questions (every flip a near-tie of the random model, a float32 margin of at most 0.11).
A cell that picks a prompt per input (IDP's router) differs more again: its router is fitted on
which prompt has the lowest loss on each training block, and where the prompts are near-equal
(the smoke grid's pool: 6 steps, the capacity cap giving each prompt the same number of
examples) the half-precision twin decides those near-ties otherwise, so questions get the other
prompt. Measured 2026-12-07 (CPU): tiny Gemma-3's GPTQ float16 pool up to 0.61 nats per answer,
59 of 60 alike, its prompts within 0.006 of the float32 twin's and its router not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LL_TOLERANCE = {"bfloat16": 0.05, "float16": 0.01}  # nats per answer, uncompressed cells
LL_TOLERANCE_COMPRESSED = {"bfloat16": 1.0, "float16": 0.5}
LL_TOLERANCE_SELECTING = {"bfloat16": 1.0, "float16": 1.0}  # cells that pick a prompt per input
SAME_ANSWER = 0.95  # share of questions answered alike, uncompressed cells
SAME_ANSWER_COMPRESSED = 0.90


@dataclass
class Agreement:
    questions: int
    alike: int            # questions whose answer is the twin's
    max_gap: float        # largest per-answer log-likelihood difference (nats)
    clear_flips: int      # other answers where the twin's margin exceeded twice the tolerance
    finite: bool          # no NaN or inf in the cell's log-likelihoods
    tolerance: float
    same_answer: float    # the share of alike answers asked for

    @property
    def ok(self) -> bool:
        return (self.finite and self.max_gap <= self.tolerance and self.clear_flips == 0
                and self.alike >= self.same_answer * self.questions)


def agreement(mine: dict, theirs: dict, dtype: str, compressed: bool,
              selects: bool = False) -> Agreement:
    """`mine`, `theirs`: two cells' samples files (`{task: {"loglikelihoods": [[per answer]]}}`)
    over the same questions; `mine` in `dtype`, `theirs` its float32 twin; `selects`: the cells
    pick a prompt per input."""
    tolerance = (LL_TOLERANCE_SELECTING if selects else
                 LL_TOLERANCE_COMPRESSED if compressed else LL_TOLERANCE)[dtype]
    gaps, alike, questions, flips, finite = [0.0], 0, 0, 0, True
    for task in theirs:
        for a, b in zip(mine[task]["loglikelihoods"], theirs[task]["loglikelihoods"], strict=True):
            a, b = np.array(a, float), np.array(b, float)
            finite &= bool(np.isfinite(a).all())
            gaps.append(float(np.abs(a - b).max()))
            same = a.argmax() == b.argmax()
            alike += int(same)
            questions += 1
            margin = np.sort(b)[-1] - np.sort(b)[-2]  # a question float32 decides clearly
            flips += int(not same and margin > 2 * tolerance)
    return Agreement(questions, alike, max(gaps), flips, finite, tolerance,
                     SAME_ANSWER_COMPRESSED if compressed or selects else SAME_ANSWER)


def selects_per_input(cell) -> bool:
    """A grid cell whose recovery picks a prompt per input at evaluation (not the oracle, which
    keeps every prompt's answers)."""
    return cell.settings.get("selection") not in (None, "oracle")
