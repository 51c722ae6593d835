"""Cost arithmetic shared by `kakugo run`'s report and the operator: dollars are Decimals,
never floats, and every figure says what it was computed from."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from kakugo_stages.spec import TeacherEndpoint, TokenPrices

MILLION = Decimal(1_000_000)
CENT = Decimal("0.0001")


def token_cost(prompt_tokens: int, completion_tokens: int, prices: TokenPrices) -> Decimal:
    """Teacher API tokens at the endpoint's prices."""
    return (
        Decimal(prompt_tokens) * prices.input_per_million
        + Decimal(completion_tokens) * prices.output_per_million
    ) / MILLION


def endpoint_token_cost(
    prompt_tokens: int,
    completion_tokens: int,
    endpoint: TeacherEndpoint,
    *,
    batch_prompt_tokens: int = 0,
    batch_completion_tokens: int = 0,
) -> Decimal:
    """Teacher API tokens of an endpoint: the tokens of answers that came through the Batch
    API (``batch_*``, a part of the totals) at its batch prices, the rest at its prices."""
    batch_prompt = min(batch_prompt_tokens, prompt_tokens)
    batch_completion = min(batch_completion_tokens, completion_tokens)
    return token_cost(
        prompt_tokens - batch_prompt, completion_tokens - batch_completion, endpoint.prices
    ) + token_cost(batch_prompt, batch_completion, endpoint.batch_prices)


def gpu_cost(seconds: float, gpus: int, price_per_gpu_hour: Decimal) -> Decimal:
    """Run time x requested GPUs x the price of one GPU-hour."""
    return Decimal(str(seconds)) * gpus * price_per_gpu_hour / Decimal(3600)


def dollars(value: Decimal) -> str:
    """A decimal string with 4 places, as status and reports show it."""
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))
