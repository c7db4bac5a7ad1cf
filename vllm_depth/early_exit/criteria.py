"""Exit criteria: how confident a token is at an exit point (the only list of their names).

A decode token exits when its confidence is strictly greater than its request's threshold:

- ``softmax``: max probability of the exit distribution (final norm + LM head);
- ``margin``: top-1 minus top-2 probability of that distribution;
- ``saturation``: cosine similarity of the hidden state with the one at the
  previous exit point checked for this token (the embedding for the first);
  it needs no LM head;
- ``head``: softmax of the trained exit head's distribution (the config requires a head at every
  exit layer).

``CRITERIA`` is the extension point: a criterion is a function of
``(logits, state, previous_state, rest)`` and says whether it needs the logits
(``rest``: the "other" logit of a reduced-vocabulary exit head, else None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _kernels():
    # torch: the config reads the names (and the CLI checks arguments) without importing it
    from vllm_depth.early_exit.kernels import exit_check

    return exit_check


def _softmax(logits, state, prev, rest=None):
    """Max probability of the exit distribution (the mass outside a reduced vocabulary counted)."""
    return _kernels().probs_of_logits(logits, rest)


def _margin(logits, state, prev, rest=None):
    """Top-1 minus top-2 probability ("other" never a top token, its mass counted)."""
    return _kernels().probs_of_logits(logits, rest, margin=True)


def _saturation(logits, state, prev, rest=None):
    return _kernels().saturation_values(prev, state)


def _never(threshold: float) -> bool:
    return False


def _at_zero(threshold: float) -> bool:
    """A probability is > 0: threshold 0.0 always exits (its logits come with the step's, at the end)."""
    return threshold <= 0.0


@dataclass(frozen=True)
class Criterion:
    confidence: Callable  # (logits | None, state, previous state, rest=None) -> [T] float32, tensor or list
    needs_logits: bool
    # (threshold) -> whether the confidence always exceeds it: the token exits with no check computed
    certain: Callable = _never
    # the confidence from the exit check's ExitStats (a vocabulary-parallel LM head: no full logits)
    from_stats: Callable | None = None


def _max_prob(stats):
    return stats.max_prob


def _top2_margin(stats):
    return stats.margin


CRITERIA: dict[str, Criterion] = {
    "softmax": Criterion(_softmax, True, _at_zero, _max_prob),
    "margin": Criterion(_margin, True, from_stats=_top2_margin),
    "saturation": Criterion(_saturation, False),
    # softmax of the trained exit head's distribution (the config requires a head at every exit layer)
    "head": Criterion(_softmax, True, _at_zero, _max_prob),
}
