"""Command-line options shared by add_model and add_remote_model: what the router reads."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.management.base import CommandError

from inference.models import CAPABILITIES


def add_routing_arguments(parser) -> None:
    parser.add_argument("--quality", type=float, default=0.5, help="0..1, higher is better")
    parser.add_argument("--cost", default="0", help="running cost per million tokens")
    parser.add_argument("--weight", type=int, default=1)
    parser.add_argument(
        "--capabilities",
        default="chat,completion,json",
        help=f"comma list of {', '.join(c for c in CAPABILITIES if c != 'embeddings')}",
    )
    parser.add_argument("--tags", default="", help="comma list of free-form tags")


def routing_values(opts: dict) -> dict:
    if not 0 <= opts["quality"] <= 1:
        raise CommandError("--quality must be between 0 and 1")
    try:
        cost = Decimal(opts["cost"])
    except InvalidOperation as exc:
        raise CommandError(f"--cost is not a number: {opts['cost']!r}") from exc
    if cost < 0:
        raise CommandError("--cost must not be negative")
    if opts["weight"] < 0:
        raise CommandError("--weight must not be negative")
    capabilities = [c.strip() for c in opts["capabilities"].split(",") if c.strip()]
    unknown = [c for c in capabilities if c not in CAPABILITIES or c == "embeddings"]
    if unknown:
        raise CommandError(f"unknown capabilities: {', '.join(unknown)} (embeddings is a flag)")
    return {
        "quality": opts["quality"],
        "cost_per_million": cost,
        "weight": opts["weight"],
        "capabilities": capabilities,
        "tags": [t.strip() for t in opts["tags"].split(",") if t.strip()],
    }
