"""Plans: what a model costs through the gateway, and what the gateway sets in its requests.

A plan names its models (exact names, or ``prefix*`` patterns), a ``TokenPrice`` (per token,
per request, the output one payment covers), body ``defaults`` (set where the caller sent
nothing) and ``pinned`` fields (set whatever the caller sent: refused or overridden).
``ModelPlans`` finds a route's plan for a model: an exact name first, then the longest
pattern. A model no pattern names has no plan: it is refused, never priced by a guess (a
prefix match on a bare name, as ``PriceTable`` does, would let ``gpt-4`` price
``gpt-4-expensive`` at the seller's cost).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from x402_meter.errors import RequestRefusedError
from x402_meter.pricing import TokenPrice

OverridePolicy = Literal["refuse", "override"]
FieldPath = tuple[str, ...]
"""A field of the JSON body: ``("temperature",)``, ``("options", "num_predict")``."""

ANY_MODEL: Final = "*"


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """One price plan of an upstream, for the models it names."""

    models: tuple[str, ...]
    price: TokenPrice
    paths: frozenset[str] | None
    """The upstream's paths it serves (None: all of them)."""
    defaults: tuple[tuple[FieldPath, Any], ...] = ()
    pinned: tuple[tuple[FieldPath, Any], ...] = ()
    on_override: OverridePolicy = "refuse"


@dataclass(frozen=True, slots=True)
class PlanMatch:
    plan: Plan
    label: str
    """The model name or pattern that matched, as configured: a bounded metrics label."""


class ModelPlans:
    """The plans of one route, by model."""

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = tuple(plans)
        self._exact: dict[str, PlanMatch] = {}
        prefixes: list[tuple[str, PlanMatch]] = []
        for plan in plans:
            for name in plan.models:
                match = PlanMatch(plan, name)
                if name.endswith("*"):
                    prefixes.append((name[:-1], match))
                else:
                    self._exact.setdefault(name, match)
        self._prefixes = tuple(sorted(prefixes, key=lambda entry: -len(entry[0])))

    @property
    def labels(self) -> list[str]:
        return [name for plan in self.plans for name in plan.models]

    @property
    def dearest(self) -> TokenPrice:
        """The dearest plan's price, for an offer no model chooses (a session's refund)."""
        return max((plan.price for plan in self.plans), key=lambda price: price.highest)

    def match(self, model: str) -> PlanMatch | None:
        found = self._exact.get(model)
        if found is not None:
            return found
        for prefix, match in self._prefixes:
            if model.startswith(prefix):
                return match
        return None

    def refusal(self, model: object) -> RequestRefusedError:
        """400 for a body whose model has no plan here, listing the models served."""
        labels = self.labels
        listed = ", ".join(labels)
        if not isinstance(model, str) or not model:
            return RequestRefusedError(
                "model_required",
                f'name the model in "model", one of: {listed}',
                status_code=400,
                details={"models": labels},
            )
        return RequestRefusedError(
            "unknown_model",
            f"model {model[:80]!r} is not served here; served: {listed}",
            status_code=400,
            details={"models": labels},
        )


def same_json(left: object, right: object) -> bool:
    """Whether two JSON values are the same value, types included (``1`` is not ``true``)."""
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def apply_plan(body: dict[str, Any], plan: Plan) -> bool:
    """Set the plan's defaults (where absent) and pinned fields in ``body``; True if it
    changed. A caller's different value for a pinned field raises 400 ``pinned_field``
    under ``on_override = "refuse"`` and is replaced under ``"override"``."""
    changed = False
    for path, value in plan.pinned:
        holder = _holder(body, path)
        name = path[-1]
        if name in holder:
            if same_json(holder[name], value):
                continue
            if plan.on_override == "refuse":
                raise RequestRefusedError(
                    "pinned_field",
                    f"{'.'.join(path)} is set by this service to {json.dumps(value)};"
                    " leave it out or send that value",
                    status_code=400,
                    details={"field": ".".join(path)},
                )
        holder[name] = value
        changed = True
    for path, value in plan.defaults:
        holder = _holder(body, path)
        if path[-1] not in holder:
            holder[path[-1]] = value
            changed = True
    return changed


def _holder(body: dict[str, Any], path: FieldPath) -> dict[str, Any]:
    """The object that holds ``path``'s last field, created where missing; a caller's
    non-object in the way is refused (it cannot hold the field)."""
    holder = body
    for key in path[:-1]:
        child = holder.get(key)
        if child is None:
            child = holder[key] = {}
        if not isinstance(child, dict):
            raise RequestRefusedError(
                "invalid_field",
                f"{'.'.join(path[:-1])} must be a JSON object",
                status_code=400,
                details={"field": ".".join(path[:-1])},
            )
        holder = child
    return holder
