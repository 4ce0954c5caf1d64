"""Task representations: feature rows, prototypes, persisted state, scoring rule."""

from __future__ import annotations

import numpy as np
import pytest

from lorauter_integrations.errors import InvalidInputError, StoreError
from lorauter_integrations.representations import (
    DEFAULT_REPRESENTATION,
    HybridRepresentation,
    PaperRepresentation,
    RidgeCovarianceInverse,
    TaskRepresentation,
    make_representation,
    representation_from_state,
    save_state,
    task_scores,
    unit_rows,
    within_group_whitening,
)

DIM = 16
TEMPLATES = {  # two tasks of different domains, each written with its own instruction words
    "translate": ("translation", "Translate this sentence to French: {}"),
    "sentiment": ("sentiment", "Is the following review positive or negative? {}"),
}
TOPICS = ["football match stadium", "chocolate cake recipe", "stock market crash", "mountain hiking trail"]


def synthetic_corpus(seed: int = 0):
    """Texts whose dense vectors are dominated by the *topic* (as MiniLM's are by content).

    Each task uses every topic, so only the instruction words tell the tasks apart.
    """
    rng = np.random.default_rng(seed)
    topic_vec = {t: rng.normal(size=DIM) for t in TOPICS}
    task_vec = {t: rng.normal(size=DIM) for t in TEMPLATES}
    texts, dense, tasks, domains = [], [], [], []
    for task, (domain, template) in TEMPLATES.items():
        for i, topic in enumerate(TOPICS * 2):
            texts.append(template.format(f"{topic} number {i}"))
            dense.append(topic_vec[topic] + 0.15 * task_vec[task] + 0.05 * rng.normal(size=DIM))
            tasks.append(task)
            domains.append(domain)
    return texts, unit_rows(np.array(dense)), tasks, domains


def prototypes(rep: TaskRepresentation, texts, dense, tasks) -> tuple[list[str], np.ndarray]:
    feats = rep.featurize(texts, dense)
    names = list(dict.fromkeys(tasks))
    mask = np.array(tasks)
    return names, np.vstack([rep.task_vectors(feats[mask == t]) for t in names])


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def hybrid(corpus):
    return HybridRepresentation(lexical_dim=256).fit(*corpus)


@pytest.mark.parametrize("make", [PaperRepresentation, lambda: HybridRepresentation(lexical_dim=256)])
def test_features_and_task_vectors_are_unit_rows_of_the_declared_width(corpus, make):
    texts, dense, tasks, domains = corpus
    rep = make().fit(texts, dense, tasks, domains)
    feats = rep.featurize(texts, dense)
    assert feats.shape == (len(texts), rep.dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    proto = rep.task_vectors(feats[:3])
    assert proto.shape[1] == rep.dim
    np.testing.assert_allclose(np.linalg.norm(proto, axis=1), 1.0, atol=1e-5)


def test_hybrid_width_is_dense_plus_two_lexical_blocks(hybrid):
    assert hybrid.dim == DIM + 2 * 256


def test_paper_task_vector_is_the_renormalised_mean_of_unit_dense_embeddings(corpus):
    texts, dense, tasks, _ = corpus
    raw = dense * np.arange(1, len(dense) + 1)[:, None]  # unnormalised input on purpose
    rep = PaperRepresentation().fit(texts, raw, tasks)
    got = rep.task_vectors(rep.featurize(texts[:5], raw[:5]))
    unit = raw[:5] / np.linalg.norm(raw[:5], axis=1, keepdims=True)
    expected = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_hybrid_is_deterministic_across_instances(corpus):
    texts, dense, tasks, domains = corpus
    a = HybridRepresentation(lexical_dim=256).fit(texts, dense, tasks, domains).featurize(texts, dense)
    b = HybridRepresentation(lexical_dim=256).fit(texts, dense, tasks, domains).featurize(texts, dense)
    np.testing.assert_array_equal(a, b)


def test_state_round_trip_through_npz_featurises_identically(hybrid, corpus, tmp_path):
    texts, dense, _, _ = corpus
    path = save_state(hybrid, tmp_path / "representation.npz")
    restored = representation_from_state(path)
    assert isinstance(restored, HybridRepresentation)
    assert restored.config == hybrid.config
    np.testing.assert_array_equal(restored.featurize(texts, dense), hybrid.featurize(texts, dense))


def test_paper_state_round_trip_restores_the_paper_representation(corpus):
    texts, dense, tasks, _ = corpus
    rep = PaperRepresentation().fit(texts, dense, tasks)
    restored = representation_from_state(rep.state_dict())
    assert isinstance(restored, PaperRepresentation) and restored.dim == DIM


def test_hybrid_routes_by_instruction_where_the_paper_follows_the_topic(corpus):
    # Query: the sentiment instruction about a topic, with a dense vector that leans towards
    # the other task (content-dominated embeddings do); the instruction words still decide.
    texts, dense, tasks, domains = corpus
    queries = [TEMPLATES["sentiment"][1].format(t + " tonight") for t in TOPICS]
    q_dense = dense[[texts.index(TEMPLATES["translate"][1].format(f"{t} number {i}")) for i, t in enumerate(TOPICS)]]

    def accuracy(rep):
        names, protos = prototypes(rep.fit(texts, dense, tasks, domains), texts, dense, tasks)
        picked = [names[i] for i in (rep.featurize(queries, q_dense) @ protos.T).argmax(1)]
        return np.mean([p == "sentiment" for p in picked])

    assert accuracy(HybridRepresentation(lexical_dim=256)) == 1.0
    assert accuracy(PaperRepresentation()) < 0.5


def test_default_representation_is_the_hybrid():
    assert DEFAULT_REPRESENTATION == "hybrid"
    assert isinstance(make_representation(), HybridRepresentation)
    assert isinstance(make_representation("paper"), PaperRepresentation)


def test_unknown_representation_name_is_rejected_with_the_choices():
    with pytest.raises(InvalidInputError, match="paper"):
        make_representation("bm25")


def test_featurising_before_fitting_says_to_fit(corpus):
    texts, dense, _, _ = corpus
    with pytest.raises(StoreError, match="fit"):
        HybridRepresentation().featurize(texts, dense)


def test_dense_vectors_of_another_width_are_rejected(hybrid):
    with pytest.raises(InvalidInputError, match="encoder"):
        hybrid.featurize(["hello"], np.ones((1, DIM + 1), dtype=np.float32))


def test_a_corrupt_state_asks_to_reindex(hybrid):
    state = hybrid.state_dict()
    state["task_df"] = state["task_df"][:, :10]
    with pytest.raises(StoreError, match="re-index"):
        representation_from_state(state)


def test_within_group_whitening_makes_the_within_group_covariance_the_identity():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)) * np.array([5.0, 1.0, 0.5, 0.2, 0.1])
    groups = ["a", "b"] * 200
    w = within_group_whitening(x, groups, shrinkage=1e-9)
    means = {g: x[np.array(groups) == g].mean(0) for g in "ab"}
    resid = x - np.array([means[g] for g in groups])
    cov = (resid @ w).T @ (resid @ w) / len(x)
    np.testing.assert_allclose(cov, np.eye(5), atol=1e-4)


def test_task_scores_take_the_best_prototype_per_task_and_skip_excluded_tasks():
    scores = task_scores([0.2, 0.9, 0.5, 0.7], ["a", "b", "a", "c"], exclude_tasks=["b"])
    assert scores == {"c": 0.7, "a": 0.5}
    assert list(scores) == ["c", "a"]


def test_paper_representation_rejects_dense_vectors_of_another_width(corpus):
    texts, dense, tasks, _ = corpus
    rep = PaperRepresentation().fit(texts, dense, tasks)
    with pytest.raises(InvalidInputError, match="encoder"):
        rep.featurize(["hello"], np.ones((1, DIM + 1), dtype=np.float32))


@pytest.mark.parametrize("n", [6, 40])  # fewer residual rows than features (Woodbury) and more (primal)
def test_ridge_covariance_inverse_equals_the_explicit_inverse(n):
    rng = np.random.default_rng(n)
    resid = rng.normal(size=(n, 12)) * np.linspace(3.0, 0.1, 12)
    solver = RidgeCovarianceInverse(resid, ridge=0.5)
    lam = 0.5 * (resid**2).sum() / (n * 12)
    explicit = np.linalg.inv(resid.T @ resid / n + lam * np.eye(12))
    m = rng.normal(size=(3, 12))
    np.testing.assert_allclose(solver.solve(m), m @ explicit, rtol=1e-4, atol=1e-5)


def test_task_vectors_are_the_unit_discriminant_directions_of_the_task_means(corpus):
    texts, dense, tasks, domains = corpus
    rep = HybridRepresentation(lexical_dim=256, discriminant_ridge=2.0).fit(texts, dense, tasks, domains)
    feats = rep.featurize(texts, dense).astype(np.float64)
    mask = np.array(tasks)
    resid = feats - np.vstack([feats[mask == t].mean(0) for t in tasks])
    lam = 2.0 * (resid**2).sum() / resid.size
    s_w = resid.T @ resid / len(resid) + lam * np.eye(rep.dim)
    mean = unit_rows(feats[mask == "sentiment"].mean(0, keepdims=True))
    expected = unit_rows(np.linalg.solve(s_w, mean.T).T)
    np.testing.assert_allclose(rep.task_vectors(feats[mask == "sentiment"]), expected, atol=1e-4)
    plain = HybridRepresentation(lexical_dim=256, discriminant_ridge=None).fit(texts, dense, tasks, domains)
    np.testing.assert_allclose(plain.task_vectors(feats[mask == "sentiment"]), mean, atol=1e-6)


def test_discriminant_prototypes_separate_tasks_that_share_their_instructions():
    # Two tasks with the same template whose texts differ only in a small, consistent content
    # direction (as mnli matched / mismatched do): the topic noise drowns the plain means, the
    # discriminant direction discounts it.
    rng = np.random.default_rng(3)
    dim, per_task = 32, 30
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    content, style = basis[:, :4].T, basis[:, 4:].T  # topics vary along 4 directions, tasks differ in others

    def rows(names):
        topic = rng.normal(size=(len(names), 4)) @ content * 3.0
        offset = {"matched": style[0] * 0.6, "mismatched": style[1] * 0.6}
        return unit_rows(topic + np.array([offset[t] for t in names]) + 0.05 * rng.normal(size=(len(names), dim)))

    tasks = ["matched"] * per_task + ["mismatched"] * per_task
    dense = rows(tasks)
    texts = ["Premise: something. Hypothesis: something else. Does it follow?"] * len(tasks)
    q_tasks = ["matched", "mismatched"] * 100
    q_dense = rows(q_tasks)
    q_texts = texts[:1] * len(q_tasks)

    def accuracy(rep):
        names, protos = prototypes(rep.fit(texts, dense, tasks, None), texts, dense, tasks)
        picked = [names[i] for i in (rep.featurize(q_texts, q_dense) @ protos.T).argmax(1)]
        return np.mean([p == t for p, t in zip(picked, q_tasks)])

    plain = accuracy(HybridRepresentation(lexical_dim=64, whitening_shrinkage=None, discriminant_ridge=None))
    disc = accuracy(HybridRepresentation(lexical_dim=64, whitening_shrinkage=None, discriminant_ridge=0.5))
    assert disc > plain + 0.1, (plain, disc)


def test_a_representation_loaded_from_state_featurises_but_cannot_build_task_vectors(hybrid, corpus):
    texts, dense, _, _ = corpus
    restored = representation_from_state(hybrid.state_dict())
    np.testing.assert_array_equal(restored.featurize(texts, dense), hybrid.featurize(texts, dense))
    with pytest.raises(StoreError, match="fit"):
        restored.task_vectors(hybrid.featurize(texts[:3], dense[:3]))


def test_a_state_written_before_discriminant_prototypes_reads_as_plain_means(hybrid):
    import json

    state = hybrid.state_dict()
    meta = json.loads(str(state["meta"]))
    del meta["config"]["discriminant_ridge"]
    state["meta"] = np.array(json.dumps(meta))
    assert representation_from_state(state).config.discriminant_ridge is None
