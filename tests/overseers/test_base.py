import pytest

from superalign.overseers import GoldOverseer, Overseer, agreement_with_gold
from superalign.tasks import get_task


def test_gold_overseer_is_an_overseer_and_agrees_with_itself():
    task = get_task("arithmetic")
    exs = task.examples("test", 20, 2)
    wrong = [ex.solution.replace(f"A: {ex.answer}", f"A: {int(ex.answer) + 1}") for ex in exs]
    gold = GoldOverseer(task, exs)
    assert isinstance(gold, Overseer)
    prompts = [ex.prompt for ex in exs] * 2
    completions = [ex.solution for ex in exs] + wrong
    scores = gold.score(prompts, completions)
    assert scores == [1.0] * 20 + [0.0] * 20
    agree = agreement_with_gold(scores, scores)
    assert agree.accuracy == 1.0 and agree.auroc == 1.0 and agree.false_positive_rate == 0.0
    with pytest.raises(KeyError, match="no example for prompt"):
        gold.score(["Q: 1+1\n"], ["A: 2"])


def test_agreement_of_a_flawed_overseer():
    gold = [1, 1, 1, 0, 0, 0]
    always_yes = agreement_with_gold([1.0] * 6, gold)
    assert (
        always_yes.accuracy == 0.5
        and always_yes.false_positive_rate == 1.0
        and always_yes.false_negative_rate == 0.0
    )
    assert always_yes.auroc == 0.5
    with pytest.raises(ValueError, match="equally many"):
        agreement_with_gold([1.0], [1, 0])
