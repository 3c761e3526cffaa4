"""Which gold labels to doubt, and which items to label next.

Label issues, by confident learning (Northcutt, Jiang and Chuang, 2021): each class j gets a
threshold t_j, the model's mean probability of j over the items labelled j (how confident it
is, on average, when it is right about j's members). An item labelled i whose probability of
another class j reaches t_j is counted in the confident joint off its diagonal: the model is
as sure it is a j as it usually is of true j's. Those items are the likely label errors,
ranked by how much more the model believes the suggested label than the given one. The
model's probabilities must not have been fitted on these labels (a zero-shot LLM's are not).

What to label next: the least confident scored items without a gold label, taken in turn from
each predicted label, so a refit sees every label's uncertain region, not only the commonest's.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

T = TypeVar("T")


class LabelIssue(BaseModel):
    index: int  # position in the arrays given
    given: str
    suggested: str
    p_given: float
    p_suggested: float


def label_issues(
    probs: NDArray[np.float64], y: NDArray[np.int64], labels: Sequence[str]
) -> list[LabelIssue]:
    """Likely label errors among `y` (class indices) given `probs` (n, K), most doubtful first."""
    if not len(y):
        return []
    k = probs.shape[1]
    thresholds = np.full(k, np.inf)  # a class nobody is labelled with flags no one
    for j in range(k):
        members = probs[y == j, j]
        if len(members):
            thresholds[j] = members.mean()
    above = probs >= thresholds[None, :]
    above[np.arange(len(y)), y] = False  # only another class than the given one
    issues = []
    for i in np.flatnonzero(above.any(axis=1)):
        candidates = np.where(above[i], probs[i], -np.inf)
        j = int(candidates.argmax())
        issues.append(
            LabelIssue(
                index=int(i),
                given=labels[int(y[i])],
                suggested=labels[j],
                p_given=float(probs[i, y[i]]),
                p_suggested=float(probs[i, j]),
            )
        )
    issues.sort(key=lambda issue: issue.p_given - issue.p_suggested)
    return issues


def in_turn(groups: Sequence[Sequence[T]], n: int) -> list[T]:
    """The first `n` of `groups` taken one from each in turn (each group in its own order): an
    equal share per group, a short group's rest going to the others."""
    out: list[T] = []
    for round_ in zip_longest(*groups):
        out += [x for x in round_ if x is not None]
        if len(out) >= n:
            break
    return out[:n]
