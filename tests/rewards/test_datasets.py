"""Self-consistency on real data: every reference solution must score 1 against its own answer
and 0 against another problem's answer. Runs through the pool (2 workers), like training does."""

from __future__ import annotations

import re

from rewards_testlib import load_jsonl

from rewards import Reason, RewardPool


def _key(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def _other_answers(rows: list[dict]) -> list[str]:
    """For each problem, the answer of the next problem whose answer is written differently."""
    n, out = len(rows), []
    for i, row in enumerate(rows):
        j = (i + 1) % n
        while _key(rows[j]["answer"]) == _key(row["answer"]):
            j = (j + 1) % n
        out.append(rows[j]["answer"])
    return out


def test_math500_gold_solutions(sweep_pool: RewardPool) -> None:
    rows = load_jsonl("math500_test")
    assert len(rows) == 500
    own = sweep_pool.submit([(r["solution"], r["answer"]) for r in rows])
    other = sweep_pool.submit([(r["solution"], a) for r, a in zip(rows, _other_answers(rows), strict=True)])
    own_scores, other_scores = own.result(timeout=600), other.result(timeout=600)

    own_rate = sum(s.value for s in own_scores) / len(rows)
    other_rate = sum(s.value for s in other_scores) / len(rows)
    failures = [(i, rows[i]["answer"], s) for i, s in enumerate(own_scores) if s.value != 1]
    false_pos = [(i, rows[i]["answer"], s) for i, s in enumerate(other_scores) if s.value != 0]
    print(f"\nMATH-500: own answer {own_rate:.2%}, another problem's answer {other_rate:.2%}")
    assert own_rate >= 0.99, failures[:10]
    assert other_rate <= 0.01, false_pos[:10]
    assert all(s.reason in (Reason.CORRECT, Reason.WRONG) for s in own_scores + other_scores)


def test_gsm8k_reference_solutions(sweep_pool: RewardPool) -> None:
    rows = load_jsonl("gsm8k_test") + load_jsonl("gsm8k_train")
    assert len(rows) == 1319 + 7473
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    scores = sweep_pool.score([(r["answer"], f) for r, f in zip(rows, finals, strict=True)], timeout=600)
    failures = [(i, finals[i], s) for i, s in enumerate(scores) if s.value != 1]
    rate = 1 - len(failures) / len(rows)
    print(f"\nGSM8K: {rate:.2%} of {len(rows)} reference solutions score 1")
    assert failures == []
    # and the full solution text also works as the reference (loaders may pass it unparsed)
    sample = rows[:200]
    assert all(s.value == 1 for s in sweep_pool.score([(r["answer"], r["answer"]) for r in sample]))


def test_aime_and_amc_answers_match_themselves(sweep_pool: RewardPool) -> None:
    rows = load_jsonl("aime24") + load_jsonl("amc23")
    items = [(f"The final answer is $\\boxed{{{r['answer']}}}$.", str(r["answer"])) for r in rows]
    assert [s.value for s in sweep_pool.score(items)] == [1.0] * len(rows)
