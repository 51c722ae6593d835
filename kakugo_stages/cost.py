"""Cost arithmetic shared by `kakugo run`'s report and the operator: dollars are Decimals,
never floats, and every figure says what it was computed from."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from kakugo_stages.spec import TokenPrices

MILLION = Decimal(1_000_000)
CENT = Decimal("0.0001")


def token_cost(prompt_tokens: int, completion_tokens: int, prices: TokenPrices) -> Decimal:
    """Teacher API tokens at the endpoint's prices."""
    return (
        Decimal(prompt_tokens) * prices.input_per_million
        + Decimal(completion_tokens) * prices.output_per_million
    ) / MILLION


def gpu_cost(seconds: float, gpus: int, price_per_gpu_hour: Decimal) -> Decimal:
    """Run time x requested GPUs x the price of one GPU-hour."""
    return Decimal(str(seconds)) * gpus * price_per_gpu_hour / Decimal(3600)


def dollars(value: Decimal) -> str:
    """A decimal string with 4 places, as status and reports show it."""
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))
