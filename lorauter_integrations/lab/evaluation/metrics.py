"""Answer metrics of the Flan mix, as LoraRetriever and LoRAuter score them; every score is 0-100.

- ``em``: exact match after lower-casing, stripping surrounding white space and removing periods
  (``"Positive."`` matches ``"positive"``).
- ``bleu``: sacrebleu BLEU (13a tokenisation). A task's score is corpus BLEU over its items; an
  item alone gets sentence BLEU (exponential smoothing, so short answers are not all zero).
- ``rouge``: ROUGE-L F1 from Google's ``rouge-score`` (with stemming); task = mean over items.

>>> score("em", "Positive.", "positive")
100.0
>>> task_score("rouge", ["a cat sat"], ["the cat sat"]) > 50
True
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from ...data import Metric
from ...errors import InvalidInputError

METRICS: tuple[str, ...] = ("em", "bleu", "rouge")


def normalize_answer(text: str) -> str:
    """EM normalisation: lower-case, strip, drop periods (``"Yes." -> "yes"``)."""
    return text.lower().replace(".", "").strip()


def exact_match(prediction: str, reference: str) -> float:
    """100 when the normalised strings are equal, else 0."""
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 x 100."""
    return 100.0 * _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU of one item (sacrebleu)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU of a task's items (sacrebleu, one reference per item)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _check(metric: str) -> None:
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric '{metric}': use one of {', '.join(METRICS)}")


def score(metric: Metric, prediction: str, reference: str) -> float:
    """Score one answer with the task's metric (0-100)."""
    _check(metric)
    if metric == "em":
        return exact_match(prediction, reference)
    if metric == "rouge":
        return rouge_l(prediction, reference)
    return sentence_bleu(prediction, reference)


def task_score(metric: Metric, predictions: Sequence[str], references: Sequence[str]) -> float:
    """A task's score: corpus BLEU for ``bleu``, the mean item score otherwise (0-100)."""
    _check(metric)
    if len(predictions) != len(references):
        raise InvalidInputError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise InvalidInputError("no predictions to score")
    if metric == "bleu":
        return corpus_bleu(predictions, references)
    return sum(score(metric, p, r) for p, r in zip(predictions, references)) / len(predictions)


def max_new_tokens_for(metric: Metric) -> int:
    """A generation budget long enough for the metric's answers (labels vs. sentences) and no more:
    on CPU every decoded token costs a forward pass of the whole batch."""
    _check(metric)
    return {"em": 24, "rouge": 64, "bleu": 80}[metric]
