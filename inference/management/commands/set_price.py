from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from billing.services import price_set
from inference.models import LLMModel


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"not an amount: {value!r}") from None
    if amount < 0 or not amount.is_finite():
        raise CommandError(f"prices must be finite and not negative: {value}")
    return amount


class Command(BaseCommand):
    help = "Set a model's prices per million prompt and completion tokens."

    def add_arguments(self, parser):
        parser.add_argument("model")
        parser.add_argument("--prompt", required=True, help="price per 1M prompt tokens")
        parser.add_argument("--completion", required=True, help="price per 1M completion tokens")

    def handle(self, *args, model, prompt, completion, **opts):
        row = LLMModel.objects.filter(model_id=model).first()
        if row is None:
            raise CommandError(f"no model {model!r}")
        price = price_set(
            model=row, prompt_per_million=_money(prompt), completion_per_million=_money(completion)
        )
        self.stdout.write(
            f"{model}: {price.prompt_per_million} per 1M prompt tokens, "
            f"{price.completion_per_million} per 1M completion tokens"
        )
