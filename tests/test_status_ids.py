"""`specsweep-status --ids` says what every id stands for, also for the common grid whose ids carry
no tag and no hash (issue 23 item 6: it printed only "-" there)."""

from __future__ import annotations

from specsweep.sweep.cluster.states import RunState, format_ids


def test_ids_of_a_common_grid_say_model_optimizer_width_and_seed() -> None:
    rows = [RunState("gpt-tiny_adamw_w4_s0", "done", id={"hash": "", "tags": {}, "hashed": {}}),
            RunState("gpt2-160m_dion-r0.0625_D3072_s1337", "done", id={"hash": "", "tags": {}, "hashed": {}}),
            RunState("gpt-tiny_muon_w2_h6_s1_7c1e2a", "done",
                     id={"hash": "7c1e2a", "tags": {"model.n_head": 6}, "hashed": {"train.steps": 40}})]
    lines = format_ids(rows).splitlines()[1:]
    assert lines[0].split()[-1] != "-"
    assert "model gpt-tiny, optimizer adamw, ffn_mult=4, seed 0; (no other override)" in lines[0]
    assert "model gpt2-160m, optimizer dion-r0.0625, D=3072, seed 1337;" in lines[1]
    assert "optimizer muon, ffn_mult=2, seed 1; model.n_head=6 train.steps=40" in lines[2]
