import math

import pytest
import torch

from models.policy import ChunkedActionExecutor


def chunk(*values):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1)  # (E=1, K, A=1)


def test_temporal_ensemble_matches_hand_computation():
    k = 0.5
    executor = ChunkedActionExecutor(chunk_size=3, temporal_ensemble=True, ensemble_k=k)
    w0, w1, w2 = 1.0, math.exp(-k), math.exp(-2 * k)  # i = 0 is the oldest prediction
    chunks = [chunk(1, 2, 3), chunk(10, 20, 30), chunk(100, 200, 300), chunk(1000, 2000, 3000)]
    expected = [
        1.0,                                                # t=0: only chunk 0
        (2 * w0 + 10 * w1) / (w0 + w1),                     # t=1: chunk 0 step 1, chunk 1 step 0
        (3 * w0 + 20 * w1 + 100 * w2) / (w0 + w1 + w2),     # t=2: three overlapping chunks
        (30 * w0 + 200 * w1 + 1000 * w2) / (w0 + w1 + w2),  # t=3: chunk 0 has run out
    ]
    for step, (new_chunk, value) in enumerate(zip(chunks, expected)):
        assert executor.needs_new_chunk()
        assert executor.act(new_chunk).item() == pytest.approx(value), f"step {step}"


def test_open_loop_plays_the_chunk_then_queries_again():
    executor = ChunkedActionExecutor(chunk_size=3, temporal_ensemble=False, query_frequency=2)
    actions = []
    for step in range(4):
        new = chunk(10 * step + 1, 10 * step + 2, 10 * step + 3) if executor.needs_new_chunk() else None
        actions.append(executor.act(new).item())
    assert actions == [1, 2, 21, 22]


def test_query_frequency_is_validated():
    with pytest.raises(ValueError, match="query_frequency"):
        ChunkedActionExecutor(chunk_size=3, temporal_ensemble=False, query_frequency=5)
