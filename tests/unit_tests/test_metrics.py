"""Answer metrics: EM normalisation as LoRAuter/LoraRetriever, BLEU and ROUGE-L via their packages."""

from __future__ import annotations

import pytest

from lorauter_integrations.errors import InvalidInputError
from lorauter_integrations.lab.evaluation.metrics import exact_match, max_new_tokens_for, score, task_score


@pytest.mark.parametrize("prediction", ["positive", "Positive.", "  POSITIVE  ", "positive."])
def test_exact_match_ignores_case_surrounding_space_and_periods(prediction):
    assert exact_match(prediction, "positive") == 100.0


@pytest.mark.parametrize("prediction", ["negative", "positive!", "it is positive", ""])
def test_exact_match_rejects_other_answers(prediction):
    assert exact_match(prediction, "positive") == 0.0


def test_identical_sentences_score_100_in_bleu_and_rouge():
    ref = "The Phoenix is a cheap Chinese restaurant in the city centre."
    assert score("bleu", ref, ref) == pytest.approx(100.0)
    assert score("rouge", ref, ref) == pytest.approx(100.0)


def test_partial_overlap_scores_between_0_and_100_and_below_a_closer_answer():
    ref = "the cat sat on the mat"
    close, far = "the cat sat on a mat", "a dog ran"
    for metric in ("bleu", "rouge"):
        assert 0.0 <= score(metric, far, ref) < score(metric, close, ref) < 100.0


def test_task_bleu_is_corpus_bleu_and_em_is_the_mean():
    import sacrebleu

    preds, refs = ["the cat sat", "a dog barked loudly"], ["the cat sat down", "a dog barked loudly"]
    assert task_score("bleu", preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert task_score("em", ["yes", "No."], ["yes", "yes"]) == 50.0


def test_unknown_metric_and_mismatched_lengths_are_refused():
    with pytest.raises(InvalidInputError, match="unknown metric"):
        score("f1", "a", "a")
    with pytest.raises(InvalidInputError, match="2 predictions but 1"):
        task_score("em", ["a", "b"], ["a"])


def test_generation_budget_is_shorter_for_labels_than_for_sentences():
    assert max_new_tokens_for("em") < max_new_tokens_for("rouge") <= max_new_tokens_for("bleu")
