"""One FLOPs-per-token formula (issue 23 item 3): sweep.plan's throughput scaling and the cost
model's step time count the same FLOPs, attention scores included."""

from __future__ import annotations

from specsweep.metrics.costmodel import ModelShape
from specsweep.models.config import GPTConfig
from specsweep.sweep.grid.estimate import train_flops_per_token


def test_plan_and_cost_model_count_the_same_flops_per_token() -> None:
    cfg = GPTConfig(vocab_size=50_304, n_layer=12, n_head=12, d_model=768, context_len=1024, ffn_mult=4)
    # 6 x (12 x (4·768² + 2·768·3072) + 50304·768) + 12 x 12 x 768 x 1024, by hand
    assert train_flops_per_token(cfg, 1024) == 854_654_976
    shape = ModelShape(n_layer=12, d_model=768, ffn_width=3072, vocab=50_304, seq_len=1024)
    assert shape.flops_per_token() == train_flops_per_token(cfg, 1024)
    # without a context the attention term is left out, and only it
    assert ModelShape(n_layer=12, d_model=768, ffn_width=3072).flops_per_token() == 854_654_976 - 113_246_208
