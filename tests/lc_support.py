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


def run_together(engine, n: int, call):
    """Run ``call()`` (which sends ``n`` requests) while the engine is held, release it once all ``n``
    wait, and return ``(call's result, the most rows the decode loop ran in one step)``: ``n`` when
    the requests shared the running batch."""
    import threading
    import time

    box: dict = {}

    def run():
        try:
            box["result"] = call()
        except BaseException as e:  # re-raised below
            box["error"] = e

    engine.loop.peak_rows = 0
    with engine.activate(None):  # the decode loop waits meanwhile; requests queue up
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while engine.loop.waiting < n and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.loop.waiting == n, f"{engine.loop.waiting} of {n} requests queued"
    thread.join(timeout=120)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box["result"], engine.loop.peak_rows
