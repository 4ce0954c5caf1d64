"""Shared test data and helpers for the LangChain tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

TASKS = {
    "task_a": [
        "Is this review positive or negative? The film was a joy from start to finish.",
        "Is this review positive or negative? A dull, plodding mess.",
        "Review: I loved every minute. Sentiment?",
        "Is the sentiment of this review positive? Terrible acting and a weak plot.",
    ],
    "task_b": [
        "Translate to French: the cat sits on the mat.",
        "Translate to French: good morning, my friend.",
        "Translate this sentence to French: where is the station?",
        "Translate to French: I would like a coffee.",
    ],
    "task_c": [
        "Answer the question: what is the capital of France?",
        "Answer the question: who wrote Hamlet?",
        "Question: how many legs does a spider have? Answer:",
        "Answer the question: what is the largest ocean?",
    ],
}
SENTIMENT = "Is this review positive or negative? An absolute delight."
TRANSLATION = "Translate to French: the weather is nice today."


def count_engine_calls(monkeypatch, engine) -> list[int]:
    """Record the batch size of every engine.generate call (the real method still runs)."""
    calls: list[int] = []
    real = engine.generate

    def counting(prompts, routes=None, **kwargs):
        calls.append(len(prompts))
        return real(prompts, routes, **kwargs)

    monkeypatch.setattr(engine, "generate", counting)
    return calls
