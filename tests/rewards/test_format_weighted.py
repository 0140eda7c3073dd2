"""FormatReward, WeightedReward, Score/Reason: hand-computed values, picklability, pool use."""

from __future__ import annotations

import pickle

import pytest

from rewards import FormatReward, MathReward, Reason, RewardPool, Score, WeightedReward

C, W, N = Reason.CORRECT, Reason.WRONG, Reason.NO_ANSWER


@pytest.mark.parametrize(
    "completion, value, reason",
    [
        ("<think>add them</think>The answer is \\boxed{4}.", 1.0, C),
        ("  \n<think>add them</think>\n#### 4", 1.0, C),
        ("<think>add them</think>Answer: 4", 1.0, C),
        ("<think>add them</think>It is 4.", 0.5, N),  # a bare number is not an explicit answer
        ("<think>   </think>\\boxed{4}", 0.5, W),  # empty reasoning
        ("\\boxed{4}", 0.5, W),  # no reasoning block
        ("Sure! <think>add</think>\\boxed{4}", 0.5, W),  # text before the block
        ("<think>a</think><think>b</think>\\boxed{4}", 0.5, W),  # two blocks
        ("<think>add them \\boxed{4}", 0.0, N),  # never closed: no block, no answer after it
        ("</think>\\boxed{4}<think>", 0.5, W),  # tags in the wrong order
        ("<think>add them</think>", 0.5, N),
        ("<think>add them</think>\\boxed{" + "1" * 1001 + "}", 0.5, N),  # over-long: no gradable answer
        ("<think>add them</think>So, Final Answer: 4", 1.0, C),  # a label inside the last line
        ("", 0.0, N),
    ],
)
def test_format_reward(completion: str, value: float, reason: Reason) -> None:
    score = FormatReward().score(completion, "4")
    assert (score.value, score.reason) == (value, reason), score


def test_format_reward_with_the_block_opened_by_the_prompt() -> None:
    fmt = FormatReward(opened_in_prompt=True)
    assert fmt.score("add them</think>\\boxed{4}", "4").value == 1.0
    assert fmt.score("<think>add them</think>\\boxed{4}", "4").value == 0.5  # opened twice
    assert FormatReward(require_reasoning=False).score("\\boxed{4}", "4").value == 1.0
    assert FormatReward(require_answer=False).score("<think>x</think>", "4").value == 1.0
    with pytest.raises(ValueError):
        FormatReward(require_reasoning=False, require_answer=False)


def test_weighted_reward_sums_and_keeps_the_primary_reason() -> None:
    fn = WeightedReward([(MathReward(), 1.0), (FormatReward(), 0.1)])
    right = fn.score("<think>2+2</think>\\boxed{4}", "4")
    assert right.value == pytest.approx(1.1) and right.reason is C
    assert right.details["answer"] == "4"
    assert [(c["name"], c["value"], c["reason"]) for c in right.details["components"]] == [
        ("MathReward", 1.0, "correct"),
        ("FormatReward", 1.0, "correct"),
    ]
    wrong_but_formatted = fn.score("<think>2+2</think>\\boxed{5}", "4")
    assert wrong_but_formatted.value == pytest.approx(0.1) and wrong_but_formatted.reason is W
    unformatted = fn.score("so 4", "4")
    assert unformatted.value == pytest.approx(1.0) and unformatted.reason is C
    assert fn.score("", "4").reason is N


def test_weighted_reward_contains_a_broken_component() -> None:
    class Broken:
        def score(self, completion: str, reference: str) -> Score:
            raise RuntimeError("bug")

    fn = WeightedReward([(MathReward(), 1.0), (Broken(), 0.5)])
    score = fn.score("\\boxed{4}", "4")
    assert score.value == 1.0 and score.reason is C
    assert score.details["components"][1]["reason"] == "crash"


def test_weighted_reward_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        WeightedReward([])
    with pytest.raises(TypeError):
        WeightedReward([(object(), 1.0)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        WeightedReward([(MathReward(), "1")])  # type: ignore[list-item]


def test_everything_crossing_processes_pickles() -> None:
    objs = [
        MathReward(strict=True, percent_as_fraction=True),
        FormatReward(opened_in_prompt=True),
        WeightedReward([(MathReward(), 1.0), (FormatReward(), 0.1)]),
        Score(1.0, Reason.CORRECT, {"answer": "4"}),
    ]
    for obj in objs:
        clone = pickle.loads(pickle.dumps(obj))
        assert repr(clone) == repr(obj)
    assert Reason("timeout") is Reason.TIMEOUT and f"{Reason.NO_ANSWER}" == "no_answer"
    assert {r.value for r in Reason} == {"correct", "wrong", "no_answer", "parse_error", "too_complex", "timeout", "crash"}
    with pytest.raises(AttributeError):
        Score(1.0, C).value = 0.0  # type: ignore[misc]


def test_graded_tells_could_not_grade_from_graded_wrong() -> None:
    # the driver masks what could not be graded (timeout, crash) instead of training on its 0
    assert {r for r in Reason if not r.graded} == {Reason.TIMEOUT, Reason.CRASH}
    assert Score(0.0, Reason.WRONG).graded and Score(0.0, Reason.TOO_COMPLEX).graded
    assert not Score(0.0, Reason.TIMEOUT).graded and not Score(0.0, Reason.CRASH).graded
    assert not Score(0.0, "crash").graded  # type: ignore[arg-type]  # a reason given as its string
    assert not pickle.loads(pickle.dumps(Score(0.0, Reason.TIMEOUT, {"timeout": "hard"}))).graded
    # WeightedReward: the primary (first) component decides, like its reason
    fn = WeightedReward([(MathReward(), 1.0), (FormatReward(), 0.1)])
    assert fn.score("\\boxed{5}", "4").graded


def test_weighted_reward_in_the_pool() -> None:
    fn = WeightedReward([(MathReward(), 1.0), (FormatReward(), 0.1)])
    items = [("<think>x</think>\\boxed{4}", "4"), ("\\boxed{4}", "4"), ("<think>x</think>\\boxed{3}", "4")]
    with RewardPool(fn, num_workers=1, timeout_s=30) as pool:
        scores = pool.score(items)
        stats = pool.stats()
    assert [round(s.value, 6) for s in scores] == [1.1, 1.05, 0.1]
    assert [s.reason for s in scores] == [C, C, W]
    assert (stats["correct"], stats["wrong"]) == (2, 1)
