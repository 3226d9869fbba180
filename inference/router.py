"""The router: which model serves a request, and where to go when it fails.

A request names a model, a router alias, or `auto`:
- a model id routes to that model alone (no fallback: an unknown or hidden
  model is a 404, never a silent switch to another one);
- an alias (configured in the admin) names a strategy and its candidates in
  fallback order; `auto` is every model the caller may use, under the default
  strategy (LLMSITE_ROUTER_STRATEGY).

The strategy picks the first model to try; the others follow in the alias's
fallback order. A backend that fails is retried on the next candidate before
any byte reaches the client. One that fails LLMSITE_ROUTER_FAILURES times in a
row is cooled down for LLMSITE_ROUTER_COOLDOWN seconds (moved behind the
healthy ones); after that its next request is a probe: a success restores it,
a failure cools it down again.

Strategies decide on figures measured in this process (inference.telemetry.live):
time to first token and decode speed as moving averages, and real queue depth
plus in-flight requests. Declared figures (quality, cost, weight) come from the rows.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from accounts.generations import GenerationCache, auth_generations
from accounts.models import ApiKey, Tenant
from inference.models import STRATEGIES, LLMModel, RouterAlias
from inference.registry import registry
from inference.selectors import model_queryset
from inference.telemetry import Figures, live
from llmsite.errors import InvalidRequest, ModelNotFound

AUTO = "auto"


@dataclass
class Candidate:
    model: LLMModel
    position: int
    figures: Figures
    load: int  # queued + in flight, as the backend reports it

    @property
    def model_id(self) -> str:
        return self.model.model_id


@dataclass
class Route:
    """Where one request may go: models in the order they will be tried."""

    name: str  # what the client asked for
    strategy: str  # a strategy, or "direct" for a plain model id
    reason: str
    order: list[LLMModel]

    def header(self, answered: LLMModel, attempt: int) -> str:
        """The x-llmsite-route header: strategy, why, and whether a fallback answered."""
        parts = [f"strategy={self.strategy}"]
        if self.strategy != "direct":
            parts.append(f"alias={self.name}")
        parts.append(f"reason={self.reason}")
        if attempt:
            parts.append(f"fallback={attempt}")
            parts.append(f"answered={answered.model_id}")
        return "; ".join(parts)


# -- strategies -------------------------------------------------------------------
# Each takes the healthy candidates (fallback order) and returns the index of
# the one to try first, with a short reason for the x-llmsite-route header.
Strategy = Callable[[list[Candidate], str], tuple[int, str]]


def _quality_first(cands: list[Candidate], _name: str) -> tuple[int, str]:
    best = max(range(len(cands)), key=lambda i: (cands[i].model.quality, cands[i].model.weight, -i))
    return best, f"highest quality {cands[best].model.quality:g}"


def _cost_optimized(cands: list[Candidate], _name: str) -> tuple[int, str]:
    best = min(
        range(len(cands)),
        key=lambda i: (cands[i].model.cost_per_million, -cands[i].model.quality, i),
    )
    return best, f"lowest cost {cands[best].model.cost_per_million.normalize()}/M tokens"


def _speed_priority(cands: list[Candidate], _name: str) -> tuple[int, str]:
    # A model never measured is tried first, once: otherwise it would never get
    # a figure and the choice would rest on nothing but the others' history.
    for i, cand in enumerate(cands):
        if cand.figures.tokens_per_s is None:
            return i, "unmeasured, measuring"
    best = max(
        range(len(cands)),
        key=lambda i: (cands[i].figures.tokens_per_s, -(cands[i].figures.ttft_ms or 0), -i),
    )
    f = cands[best].figures
    return best, f"fastest measured {f.tokens_per_s:.1f} tok/s"


def _least_loaded(cands: list[Candidate], _name: str) -> tuple[int, str]:
    best = min(range(len(cands)), key=lambda i: (cands[i].load, i))
    return best, f"least loaded ({cands[best].load} queued or running)"


_turns: dict[str, int] = {}
_turns_lock = threading.Lock()


def _round_robin(cands: list[Candidate], name: str, *, take: bool = True) -> tuple[int, str]:
    """`take=False` names the next turn without taking it (a request that only
    asks where it would go must not shift the rotation of those that go)."""
    with _turns_lock:
        turn = _turns.get(name, 0)
        if take:
            _turns[name] = turn + 1
    index = turn % len(cands)
    return index, f"turn {index + 1} of {len(cands)}"


def _random(cands: list[Candidate], _name: str) -> tuple[int, str]:
    weights = [max(0, c.model.weight) for c in cands]
    if not any(weights):
        weights = [1] * len(cands)
    index = random.choices(range(len(cands)), weights=weights)[0]
    return index, "weighted random draw"


# Shares of the balanced score; each figure is scaled to 0..1 among the candidates.
BALANCED_WEIGHTS = {"quality": 0.35, "speed": 0.3, "cost": 0.2, "load": 0.15}


def balanced_scores(cands: list[Candidate]) -> list[float]:
    measured_tps = [c.figures.tokens_per_s for c in cands if c.figures.tokens_per_s]
    measured_ttft = [c.figures.ttft_ms for c in cands if c.figures.ttft_ms]
    max_tps = max(measured_tps, default=0.0)
    min_ttft = min(measured_ttft, default=0.0)
    max_cost = max((float(c.model.cost_per_million) for c in cands), default=0.0)
    max_load = max((c.load for c in cands), default=0)
    scores = []
    for c in cands:
        # Unmeasured speed counts as average: neither favoured nor shunned.
        tps = c.figures.tokens_per_s
        tps_part = tps / max_tps if tps and max_tps else 0.5
        ttft = c.figures.ttft_ms
        ttft_part = min_ttft / ttft if ttft and min_ttft else 0.5
        speed = (tps_part + ttft_part) / 2
        cost = 1 - float(c.model.cost_per_million) / max_cost if max_cost else 1.0
        load = 1 - c.load / (max_load + 1)
        quality = min(1.0, max(0.0, c.model.quality))
        w = BALANCED_WEIGHTS
        scores.append(
            w["quality"] * quality + w["speed"] * speed + w["cost"] * cost + w["load"] * load
        )
    return scores


def _balanced(cands: list[Candidate], _name: str) -> tuple[int, str]:
    scores = balanced_scores(cands)
    best = max(range(len(cands)), key=lambda i: (round(scores[i], 9), cands[i].model.weight, -i))
    f = cands[best].figures
    speed = f"{f.tokens_per_s:.1f} tok/s" if f.tokens_per_s else "speed unmeasured"
    return best, f"best score {scores[best]:.2f} (quality {cands[best].model.quality:g}, {speed})"


STRATEGY_FUNCS: dict[str, Strategy] = {
    "balanced": _balanced,
    "speed-priority": _speed_priority,
    "quality-first": _quality_first,
    "cost-optimized": _cost_optimized,
    "round-robin": _round_robin,
    "least-loaded": _least_loaded,
    "random": _random,
}
assert set(STRATEGY_FUNCS) == set(STRATEGIES)


# -- health -------------------------------------------------------------------------
class Health:
    """Consecutive failures per model, and cooldowns. Wall-clock time, per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._cooled_until: dict[str, float] = {}

    def cooling(self, model_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            return self._cooled_until.get(model_id, 0.0) > now

    def failed(self, model_id: str) -> None:
        with self._lock:
            count = self._failures.get(model_id, 0) + 1
            self._failures[model_id] = count
            # Past the threshold every failure (a failed probe included) cools again.
            if count >= settings.LLMSITE_ROUTER_FAILURES:
                self._cooled_until[model_id] = time.time() + settings.LLMSITE_ROUTER_COOLDOWN

    def succeeded(self, model_id: str) -> None:
        with self._lock:
            self._failures.pop(model_id, None)
            self._cooled_until.pop(model_id, None)

    def state(self, model_id: str) -> dict:
        with self._lock:
            until = self._cooled_until.get(model_id, 0.0)
            return {
                "failures": self._failures.get(model_id, 0),
                "cooled_down": until > time.time(),
                "cooled_until": until or None,
            }

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self._cooled_until.clear()


health = Health()


def backend_load(model: LLMModel) -> int:
    """Queued plus running work on the model's backend, as it is right now."""
    figures = live.get(model.model_id)
    if model.is_remote:
        return figures.in_flight
    engine = registry.get(model.model_id)
    if engine is None:
        return figures.in_flight
    return max(figures.in_flight, engine.queue_depth + engine.in_flight)


def candidates_of(models: list[LLMModel]) -> list[Candidate]:
    return [
        Candidate(model=m, position=i, figures=live.get(m.model_id), load=backend_load(m))
        for i, m in enumerate(models)
    ]


def order_candidates(
    models: list[LLMModel], strategy: str, name: str, *, peek: bool = False
) -> tuple[list, str]:
    """The try order: the strategy's pick among healthy models, then fallback order.

    Cooled-down models go last rather than away: when everything is cooling
    down, trying one beats refusing the request. `peek`: the order a request
    would get now, leaving round-robin's turn to the next real one.
    """
    now = time.time()
    cooled = {m.model_id for m in models if health.cooling(m.model_id, now)}
    healthy = [m for m in models if m.model_id not in cooled]
    cooling = [m for m in models if m.model_id in cooled]
    if not healthy:
        return cooling, "every candidate is cooling down"
    if peek and strategy == "round-robin":
        index, reason = _round_robin(candidates_of(healthy), name, take=False)
    else:
        index, reason = STRATEGY_FUNCS[strategy](candidates_of(healthy), name)
    first = healthy[index]
    rest = [m for m in healthy if m is not first]
    if cooling:
        reason += f"; cooling down: {', '.join(m.model_id for m in cooling)}"
    return [first, *rest, *cooling], reason


# -- resolution (database reads) -----------------------------------------------------
def alias_queryset():
    return RouterAlias.objects.filter(enabled=True)


def route_resolve(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    name: str,
    capability: str,
    generations: tuple[int, int] | None = None,
    peek: bool = False,
) -> Route:
    """The models `name` may route to for this caller, in try order. Sync: reads the DB.

    Raises ModelNotFound when the caller may use nothing under that name, and a
    400 when the name exists but none of its models can serve `capability`.
    `generations`: the tenant's AuthGeneration values this request already read
    (authenticating its key), saving the route cache a read of its own. `peek`:
    for a request that generates nothing (see `order_candidates`).
    """
    cache_key = (tenant.pk, api_key.pk if api_key is not None else None, name)
    found, generations = _routes.get(cache_key, generations)
    if found is None:
        # Read before the rows they describe (auth's were, too).
        generations = generations or auth_generations(tenant.pk)
        found = _candidates(tenant=tenant, api_key=api_key, name=name)
        _routes.put(cache_key, found, tenant.pk, generations)
    return _route(found, name, capability, peek=peek)


def route_resolve_cached(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    name: str,
    capability: str,
    generations: tuple[int, int] | None,
    peek: bool = False,
) -> Route | None:
    """route_resolve without the database, for the event loop: the route when this
    process has it cached under the AuthGeneration values the request already read
    (authenticating its key); None when only route_resolve can tell."""
    if generations is None:
        return None
    cache_key = (tenant.pk, api_key.pk if api_key is not None else None, name)
    found, _ = _routes.get(cache_key, generations)
    if found is None:
        return None
    return _route(found, name, capability, peek=peek)


def _route(found: tuple[str, list[LLMModel]], name: str, capability: str, *, peek: bool) -> Route:
    strategy, models = found
    if strategy == "direct":
        model = models[0]
        if not model.can_serve(capability):
            raise InvalidRequest(
                f"The model `{name}` does not serve {capability}.",
                param="model",
                code="model_not_supported",
            )
        return Route(name=name, strategy="direct", reason="requested by id", order=[model])
    able = [m for m in models if m.can_serve(capability)]
    if not able:
        raise InvalidRequest(
            f"No model behind `{name}` serves {capability}.",
            param="model",
            code="model_not_supported",
        )
    order, reason = order_candidates(able, strategy, name, peek=peek)
    return Route(name=name, strategy=strategy, reason=reason, order=order)


def _candidates(*, tenant: Tenant, api_key: ApiKey | None, name: str) -> tuple[str, list[LLMModel]]:
    """("direct", [the model]) or (strategy, candidates in fallback order), from the DB."""
    allowed = model_queryset(tenant=tenant, api_key=api_key)
    model = allowed.filter(model_id=name).first()
    if model is not None:
        return "direct", [model]

    alias = alias_queryset().filter(name=name).first()
    if alias is not None:
        allowed_ids = set(allowed.values_list("pk", flat=True))
        models = [
            entry.model
            for entry in alias.candidates.select_related("model", "model__price").order_by(
                "position", "id"
            )
            if entry.model_id in allowed_ids and entry.model.enabled
        ]
        strategy = alias.strategy
    elif name == AUTO:
        models = list(allowed)
        strategy = settings.LLMSITE_ROUTER_STRATEGY
    else:
        raise ModelNotFound(name)
    if not models:
        # An alias whose models the caller may not use looks exactly like no alias.
        raise ModelNotFound(name)
    return strategy, models


# -- the route cache -----------------------------------------------------------------
# Reading a name's candidates (allow-lists, model rows with prices, the alias) costs
# about 8 ms of ORM and SQL per request. A process keeps them per (tenant, key, name)
# under the tenant's AuthGeneration values read before the rows; a hit costs one
# read of those two counters. Every change to a model, a price, an alias or an
# allow-list bumps them in its own transaction (inference/signals.py), so it applies
# to the very next request in every process. Cached rows are shared between
# requests: read them, never change them. Unknown names are not cached.
_routes = GenerationCache()


def alias_list(*, tenant: Tenant, api_key: ApiKey | None) -> list[RouterAlias]:
    """Aliases with at least one model the caller may use (for /v1/models)."""
    allowed_ids = set(model_queryset(tenant=tenant, api_key=api_key).values_list("pk", flat=True))
    out = []
    for alias in alias_queryset().prefetch_related("candidates"):
        if any(c.model_id in allowed_ids for c in alias.candidates.all()):
            out.append(alias)
    return out
