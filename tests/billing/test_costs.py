from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from billing.models import UsageRecord
from billing.quota import Prices
from inference.models import LLMModel

pytestmark = pytest.mark.django_db

CENT_MICRO = Decimal("0.00000001")  # costs are stored to 8 decimal places


def test_price_arithmetic_by_hand():
    prices = Prices(Decimal("0.15"), Decimal("0.60"))
    # 1000 x 0.15 + 500 x 0.60 = 450 per million -> 0.00045
    assert prices.cost(1000, 500) == Decimal("0.00045000")
    # 7 x 2.50 + 3 x 10.00 = 47.5 per million -> 0.0000475
    assert Prices(Decimal("2.50"), Decimal("10.00")).cost(7, 3) == Decimal("0.00004750")
    assert Prices().cost(10**6, 10**6) == Decimal(0)


def test_usage_records_carry_the_cost_at_request_time(client, gemma):
    LLMModel.objects.create(model_id="pricey", path=gemma.path, n_ctx=512)
    call_command(
        "set_price", "gemma-3-270m", "--prompt", "0.15", "--completion", "0.60", stdout=StringIO()
    )
    call_command("set_price", "pricey", "--prompt", "30", "--completion", "60", stdout=StringIO())
    expected = Decimal(0)
    for model, prompt_price, completion_price in [
        ("gemma-3-270m", Decimal("0.15"), Decimal("0.60")),
        ("pricey", Decimal("30"), Decimal("60")),
        ("gemma-3-270m", Decimal("0.15"), Decimal("0.60")),
    ]:
        r = client.post(
            "/v1/completions",
            {"model": model, "prompt": "Hello there", "max_tokens": 3, "temperature": 0},
            format="json",
        )
        usage = r.json()["usage"]
        expected += (
            (usage["prompt_tokens"] * prompt_price + usage["completion_tokens"] * completion_price)
            / Decimal(1_000_000)
        ).quantize(CENT_MICRO)
    emb = client.post(
        "/v1/embeddings", {"model": "pricey", "input": ["a b c", "d"]}, format="json"
    ).json()
    expected += (emb["usage"]["prompt_tokens"] * Decimal("30") / Decimal(1_000_000)).quantize(
        CENT_MICRO
    )
    total = sum(UsageRecord.objects.values_list("cost", flat=True), Decimal(0))
    assert total == expected
    # A later price change does not rewrite history.
    call_command("set_price", "pricey", "--prompt", "0", "--completion", "0", stdout=StringIO())
    assert sum(UsageRecord.objects.values_list("cost", flat=True), Decimal(0)) == total
