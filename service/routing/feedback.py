"""Validation of a feedback call's labels against the request they are for; fields named as the router's
`feedback(tenant, request_id, satisfaction, labels)` names them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import InvalidArgument, shown
from .types import Pending


def validated_labels(index: Mapping[str, int], pending: Pending, satisfaction: float | None,
                     labels: Sequence[tuple[str, float]]) -> dict[int, float]:
    """model index -> satisfaction: the served answer's first, then the named labels in order."""
    out: dict[int, float] = {}
    if satisfaction is not None:
        check_satisfaction("satisfaction", satisfaction)
        out[pending.served] = float(satisfaction)
    for i, (model, s) in enumerate(labels):
        fld = f"labels[{i}]"
        k = index.get(model)
        if k is None:
            raise InvalidArgument(f"{fld}.model", f"unknown model {shown(model)} (zoo: {', '.join(index)})")
        if k not in pending.invoked:
            raise InvalidArgument(f"{fld}.model", f"model {model!r} gave no answer for this request: it was not "
                                  "invoked, or its call failed (Generate's `answer` with an error); label only "
                                  "the models that answered")
        check_satisfaction(f"{fld}.satisfaction", s)
        if k in out and out[k] != s:
            raise InvalidArgument(f"{fld}.satisfaction", f"contradicts another label for {model!r} in this call")
        out[k] = float(s)
    if not out:
        raise InvalidArgument("satisfaction", "give satisfaction (served model) or at least one entry in labels")
    return out


def check_satisfaction(fld: str, s: float) -> None:
    if not (isinstance(s, float | int) and math.isfinite(s) and 0.0 <= s <= 1.0):
        raise InvalidArgument(fld, f"must be a number in [0, 1], got {s!r}")
