"""How the sweep's worker cuts length-sorted prompts into batches (core/sweep/worker.py ``batch_groups``)."""

from __future__ import annotations

import random

import pytest
from horizon.core.analyses import REGISTRY
from horizon.core.sweep.sweep_settings import SweepSettings
from horizon.core.sweep.worker import SweepWorker, WorkerConfig, batch_groups


def covered_in_order(groups: list[range], n_prompts: int) -> bool:
    """Every prompt once, the groups consecutive and in order, none empty."""
    return [index for group in groups for index in group] == list(range(n_prompts)) and all(groups)


def padded_tokens(lengths: list[int], group: range) -> int:
    return len(group) * max(lengths[index] for index in group)


def test_groups_cover_every_prompt_once_in_order_within_the_caps() -> None:
    rng = random.Random(16)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 400) for _ in range(rng.randint(1, 40)))
        most_prompts, most_tokens = rng.randint(1, 16), rng.choice([None, 64, 256, 1024])
        max_padding = rng.choice([None, 0.0, 0.25, 0.5])
        groups = batch_groups(lengths, most_prompts, most_tokens, max_padding)
        assert covered_in_order(groups, len(lengths))
        for group in groups:
            assert len(group) <= most_prompts
            if len(group) == 1:
                continue  # a prompt longer than the cap still runs, alone
            padded = padded_tokens(lengths, group)
            if most_tokens is not None:
                assert padded <= most_tokens
            if max_padding is not None:
                assert padded - sum(lengths[index] for index in group) <= max_padding * padded


def test_a_requested_batch_size_is_the_most_prompts_per_group() -> None:
    lengths = [10] * 7
    assert batch_groups(lengths, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert batch_groups(lengths, 1) == [range(index, index + 1) for index in range(7)]
    assert batch_groups(lengths, 64) == [range(0, 7)]
    assert batch_groups([], 4) == []


def test_the_token_cap_and_the_padding_share_split_groups() -> None:
    assert batch_groups([100, 110, 120, 130], 64, most_tokens=256) == [range(0, 2), range(2, 3), range(3, 4)]
    assert batch_groups([500, 600], 64, most_tokens=256) == [range(0, 1), range(1, 2)]  # each alone, over the cap
    # a 40-token prompt is not padded to 300 (87% padding), two of 290 and 300 go together (2%)
    assert batch_groups([40, 290, 300], 64, max_padding=0.25) == [range(0, 1), range(1, 3)]
    with pytest.raises(ValueError):
        batch_groups([1, 2], 0)


def test_the_worker_caps_auto_batches_on_cpu_but_not_a_requested_batch_size(tiny_llama) -> None:
    texts = [" ".join(["one two three four five six seven eight nine ten"] * 10)] * 6
    settings = SweepSettings(analyses=["scan"], ks=[1, 2])

    def made(batch_size: int | None) -> SweepWorker:
        config = WorkerConfig(model=tiny_llama.spec, device="cpu", dtype="float32", texts=texts, settings=settings,
                              batch_size=batch_size)
        return SweepWorker(config, loaded=tiny_llama)

    auto, requested = made(None), made(6)
    longest = max(len(ids) for ids in auto.token_ids)
    cap = REGISTRY["scan"].cost.cpu_batch_tokens if REGISTRY["scan"].cost else None
    assert cap is not None  # the scan declares its CPU cap on its registry entry
    most = max(1, cap // longest)
    assert most < len(texts)  # the cap binds
    assert auto.plan("scan", auto.token_ids).batch_size == most
    assert requested.plan("scan", requested.token_ids).batch_size == len(texts)

    def batch_sizes(worker: SweepWorker) -> list[int]:
        seen: list[int] = []

        def compute(ids: list[list[int]], plan) -> list[int]:
            assert plan.batch_size <= len(ids)
            seen.append(len(ids))
            return [len(row) for row in ids]

        assert worker.per_prompt("scan", worker.token_ids, compute) == [len(ids) for ids in worker.token_ids]
        return seen

    assert all(size <= most for size in batch_sizes(auto)) and sum(batch_sizes(auto)) == len(texts)
    assert batch_sizes(requested) == [len(texts)]
