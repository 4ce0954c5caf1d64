"""Task representations: how validation examples become the vectors stored per task.

A *representation* turns texts (plus their dense sentence embeddings, computed once by the
encoder) into unit feature rows, and a task's featurised examples into one or a few task
vectors ("prototypes"). A query is featurised the same way; its score for a task is the
cosine to that task's prototypes, maximised over them (`task_scores`). Everything a
representation learns from the indexed validation data is a small state (`state_dict`) that the
store persists beside its collections, so that queries are featurised exactly as tasks were.

Two representations:

- `PaperRepresentation` -- LoRAuter (arXiv 2601.21795): mean of the L2-normalised dense
  embeddings of a task's validation inputs, renormalised. Stateless.
- `HybridRepresentation` (the default) -- dense + lexical. Flan-style tasks are written with
  a handful of templates each, so the words and character n-grams of the instructions
  ("Translate to German", "OPTIONS:", "Premise: ... Hypothesis:") identify a task far better
  than a sentence embedding dominated by the content. Each text gets

      f(x) = [ sqrt(a) * W dense(x) ,  sqrt((1-a)/2) * word(x) ,  sqrt((1-a)/2) * char(x) ]

  with every block a unit vector, so ``f`` is a unit row and the cosine of two rows is
  ``a*cos_dense + (1-a)/2*(cos_word + cos_char)``.

  * ``word``/``char``: tf-idf of word 1-2-grams and within-word character 1-4-grams
    (sublinear tf; IDF over *tasks*, so that a template shared by all the examples of one task
    counts once and words used by every task weigh little), hashed, then projected by a
    signed count sketch to a fixed width so that they fit a Chroma collection.
  * ``W``: within-domain whitening of the dense embedding (inverse square root of the
    ridge-regularised covariance of examples around their domain mean). It damps the
    directions in which one domain's examples differ (their content) and so stresses what
    domains share. It lifts routing to a sibling task when the query's task is indexed but
    excluded from the candidates (the issue's "unseen-task" protocol, validation CV: 0.753 ->
    0.794). It does not help a task that is absent from the index altogether (leave-one-task-out
    on the validation set: 0.745 without, 0.732 with); ``whitening_shrinkage=None`` turns it off.

  A task's prototype is its *discriminant direction* in the joint space: the mean of its
  examples' rows (the paper's prototype) multiplied by the inverse of the ridge-regularised
  within-task covariance of all indexed examples, ``(S_w + r I)^-1 mean``, renormalised.
  The cosine of a query to it is (up to the prototype's norm) the task's linear discriminant
  score: directions in which examples of one task vary (their content) weigh less, directions
  that tell tasks apart -- including near-duplicates such as mnli matched/mismatched or the
  anli rounds -- weigh more. Queries are featurised exactly as before, so routing costs the
  same; only indexing solves one linear system (validation 5-fold CV task top-1: 0.772 with
  plain means -> 0.802). ``discriminant_ridge=None`` stores plain means.

  The knobs (``a`` = 0.3, whitening ridge 0.1, discriminant ridge 5) were chosen by 5-fold
  cross-validation on the validation set (``scripts/representation_study.py --grid``).

Example::

    rep = HybridRepresentation().fit(texts, dense, tasks, domains)   # the indexed examples
    protos = {t: rep.task_vectors(rep.featurize(tx, d)) for t, (tx, d) in by_task.items()}
    q = rep.featurize([query], encoder.encode([query]))
    # keep `protos` in a Chroma cosine collection and `rep.state_dict()` beside it
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInputError, StoreError

__all__ = [
    "TaskRepresentation",
    "PaperRepresentation",
    "HybridConfig",
    "HybridRepresentation",
    "DEFAULT_REPRESENTATION",
    "REPRESENTATIONS",
    "make_representation",
    "representation_from_state",
    "save_state",
    "within_group_whitening",
    "RidgeCovarianceInverse",
    "task_scores",
    "unit_rows",
]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@runtime_checkable
class TaskRepresentation(Protocol):
    """How texts become feature rows and a task's rows become its stored vectors."""

    name: str

    @property
    def dim(self) -> int:
        """Width of the feature rows (the Chroma collection's dimension)."""
        ...

    def fit(
        self,
        example_texts: Sequence[str],
        example_dense: np.ndarray,
        example_tasks: Sequence[str],
        example_domains: Sequence[str | None] | None = None,
    ) -> "TaskRepresentation":
        """Learn the state from the indexed validation examples; return ``self``."""
        ...

    def featurize(self, texts: Sequence[str], dense: np.ndarray) -> np.ndarray:
        """``(n, dim)`` unit rows for texts (queries and examples alike) and their dense vectors."""
        ...

    def task_vectors(self, features: np.ndarray) -> np.ndarray:
        """``(m, dim)`` unit prototypes of one task from its examples' feature rows."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to featurise a query later, as numpy arrays (``np.savez``-ready)."""
        ...


def _check_dense(texts: Sequence[str], dense: np.ndarray) -> np.ndarray:
    if isinstance(texts, str):
        raise InvalidInputError("pass a list of texts, not one string")
    dense = np.asarray(dense, dtype=np.float32)
    if dense.ndim != 2 or dense.shape[0] != len(texts):
        raise InvalidInputError(
            f"dense must be a (len(texts), dim) array; got shape {dense.shape} for {len(texts)} texts"
        )
    return dense


def _check_width(dense: np.ndarray, expected: int | None) -> None:
    if expected is not None and dense.shape[1] != expected:
        raise InvalidInputError(
            f"dense vectors have width {dense.shape[1]} but the representation was fitted on "
            f"{expected}; use the encoder the store was built with"
        )


def _mean_prototype(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise InvalidInputError("a task needs at least one example to build its vector")
    return unit_rows(unit_rows(features).mean(axis=0, keepdims=True))


class PaperRepresentation:
    """LoRAuter's task representation: mean of unit dense embeddings, renormalised.

    Features are the (renormalised) dense embeddings themselves; nothing is learned.
    """

    name = "paper"

    def __init__(self, dense_dim: int | None = None):
        self._dense_dim = dense_dim

    @property
    def dim(self) -> int:
        if self._dense_dim is None:
            raise StoreError("the representation's dimension is known once it has seen dense vectors")
        return self._dense_dim

    def fit(self, example_texts, example_dense, example_tasks, example_domains=None) -> "PaperRepresentation":
        self._dense_dim = _check_dense(example_texts, example_dense).shape[1]
        return self

    def featurize(self, texts: Sequence[str], dense: np.ndarray) -> np.ndarray:
        dense = _check_dense(texts, dense)
        _check_width(dense, self._dense_dim)
        self._dense_dim = dense.shape[1]
        return unit_rows(dense)

    def task_vectors(self, features: np.ndarray) -> np.ndarray:
        return _mean_prototype(features)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"meta": _meta({"name": self.name, "dense_dim": self._dense_dim})}


class HybridConfig(BaseModel):
    """Knobs of `HybridRepresentation` (defaults chosen by cross-validation on the validation set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dense_weight: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="Share `a` of the dense cosine in the score; the lexical blocks share 1-a.",
    )
    word_ngrams: tuple[int, int] = Field(default=(1, 2), description="Word n-gram range.")
    char_ngrams: tuple[int, int] = Field(
        default=(1, 4), description="Character n-gram range, inside word boundaries."
    )
    hash_bits: int = Field(
        default=14, ge=10, le=24,
        description="log2 of the hashed vocabulary per lexical block (resolution of the IDF table).",
    )
    lexical_dim: int = Field(
        default=2048, ge=16,
        description="Width of each lexical block after the signed projection (stored width).",
    )
    seed: int = Field(default=0, description="Seed of the signed hashing projection.")
    whitening_shrinkage: float | None = Field(
        default=0.1, gt=0.0,
        description="Ridge (times the mean eigenvalue) of the within-domain whitening of the "
        "dense block; None turns the whitening off.",
    )
    discriminant_ridge: float | None = Field(
        default=5.0, gt=0.0,
        description="Ridge (times the mean eigenvalue) of the within-task covariance that turns a "
        "task's mean row into its discriminant direction (the stored prototype); None stores the "
        "plain mean (format 1 stores).",
    )
    discriminant_max_rows: int = Field(
        default=4096, ge=16,
        description="At most this many example residuals (a seeded sample) estimate the within-task "
        "covariance, so indexing stays seconds for stores with many thousands of examples.",
    )


class HybridRepresentation:
    """Dense sentence embedding + hashed tf-idf word/char n-grams (the default representation).

    State learned by `fit` from the indexed validation examples:

    - ``task_df``: ``(2, 2**hash_bits)`` int32, per lexical block (word, char) and hashed
      n-gram bucket, the number of tasks whose examples contain it; with ``n_tasks`` it gives
      the IDF ``log((1 + n_tasks) / (1 + df)) + 1``.
    - ``whitening``: ``(dense_dim, dense_dim)`` float16, the inverse square root of the
      within-domain covariance of the unit dense vectors (ridge-regularised). It shrinks the
      directions in which examples of one domain vary (mostly their content) and so stretches
      those that separate domains. Examples without a domain count as a domain of their own
      task (then it is within-task whitening).

    - ``discriminant`` (in memory only, not persisted): the factorised within-task covariance
      that `task_vectors` uses; a representation loaded from state featurises queries but
      cannot build task vectors (indexing refits it on the examples anyway).

    Rows have width ``dense_dim + 2 * lexical_dim``.
    """

    name = "hybrid"

    def __init__(self, config: HybridConfig | None = None, **overrides: Any):
        base = config or HybridConfig()
        # Validate overrides (a plain model_copy(update=...) would skip validation).
        self.config = HybridConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self._dense_dim: int | None = None
        self._n_tasks = 0
        self._df: np.ndarray | None = None
        self._idf_projection: list = []
        self._whitening: np.ndarray | None = None
        self._discriminant: RidgeCovarianceInverse | None = None
        self._vectorizers = self._make_vectorizers()
        self._projection = self._make_projection()

    # -- construction -------------------------------------------------------------------------
    def _make_vectorizers(self):
        # sklearn's HashingVectorizer: stateless, deterministic (murmurhash3), well tested.
        from sklearn.feature_extraction.text import HashingVectorizer

        c = self.config
        common = dict(n_features=2**c.hash_bits, alternate_sign=False, norm=None, lowercase=True, dtype=np.float32)
        return (
            HashingVectorizer(analyzer="word", ngram_range=tuple(c.word_ngrams), **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=tuple(c.char_ngrams), **common),
        )

    def _make_projection(self):
        """Sparse ``(2**hash_bits, lexical_dim)`` matrix with one +-1 per row (a count sketch).

        Signed hashing keeps inner products unbiased, so cosines in the projected space are
        the tf-idf cosines plus small zero-mean noise. Built from murmurhash so it is identical
        across processes and library versions (no RNG stream to depend on).
        """
        import scipy.sparse as sp
        from sklearn.utils import murmurhash3_32

        c = self.config
        buckets = np.arange(2**c.hash_bits, dtype=np.int32)
        target = murmurhash3_32(buckets, seed=c.seed, positive=True) % c.lexical_dim
        sign = np.where(murmurhash3_32(buckets, seed=c.seed + 1, positive=True) % 2 == 0, 1.0, -1.0)
        return sp.csr_matrix(
            (sign.astype(np.float32), (buckets, target.astype(np.int64))),
            shape=(2**c.hash_bits, c.lexical_dim),
        )

    @property
    def dim(self) -> int:
        self._require_fitted()
        return self._dense_dim + 2 * self.config.lexical_dim

    @property
    def fitted(self) -> bool:
        return self._df is not None

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise StoreError("HybridRepresentation is not fitted; call fit() or load its state first")

    # -- learning -------------------------------------------------------------------------------
    def _counts(self, texts: Sequence[str]):
        """Per block, sparse sublinear term frequencies ``1 + log(tf)``."""
        out = []
        for vec in self._vectorizers:
            m = vec.transform(list(texts)).tocsr()
            m.data = 1.0 + np.log(m.data)
            out.append(m)
        return out

    def fit(
        self,
        example_texts: Sequence[str],
        example_dense: np.ndarray,
        example_tasks: Sequence[str],
        example_domains: Sequence[str | None] | None = None,
    ) -> "HybridRepresentation":
        """Learn the task document frequencies and the within-domain whitening."""
        import scipy.sparse as sp

        dense = _check_dense(example_texts, example_dense)
        if len(example_tasks) != len(example_texts):
            raise InvalidInputError("example_tasks must have one task id per example text")
        if example_domains is not None and len(example_domains) != len(example_texts):
            raise InvalidInputError("example_domains must have one domain (or None) per example text")
        if not example_texts:
            raise InvalidInputError("cannot fit a representation on zero examples")
        task_ids = {t: i for i, t in enumerate(dict.fromkeys(example_tasks))}
        rows = np.array([task_ids[t] for t in example_tasks])
        # (tasks x examples) membership times (examples x buckets) presence -> tasks x buckets
        member = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, np.arange(len(rows)))), shape=(len(task_ids), len(rows))
        )
        df = []
        for m in self._counts(example_texts):
            present = (m > 0).astype(np.float32)
            df.append(np.asarray(((member @ present) > 0).sum(axis=0)).ravel().astype(np.int32))
        self._set_counts_state(np.stack(df), len(task_ids))
        self._dense_dim = dense.shape[1]
        self._whitening = None
        if self.config.whitening_shrinkage is not None:
            domains = example_domains if example_domains is not None else [None] * len(example_tasks)
            groups = [f"domain:{d}" if d is not None else f"task:{t}" for d, t in zip(domains, example_tasks)]
            w = within_group_whitening(unit_rows(dense), groups, self.config.whitening_shrinkage)
            # Kept at float16 precision (ample for routing) so the persisted state is half the size
            # and a reloaded representation featurises bit-for-bit like the fitted one.
            self._whitening = w.astype(np.float16).astype(np.float32)
        self._discriminant = None
        if self.config.discriminant_ridge is not None:
            feats = self.featurize(example_texts, dense)
            resid = _group_residuals(feats, [str(t) for t in example_tasks])
            if len(resid) > self.config.discriminant_max_rows:
                keep = np.random.default_rng(self.config.seed).choice(
                    len(resid), self.config.discriminant_max_rows, replace=False)
                resid = resid[np.sort(keep)]
            self._discriminant = RidgeCovarianceInverse(resid, self.config.discriminant_ridge)
        return self

    def _set_counts_state(self, df: np.ndarray, n_tasks: int) -> None:
        """Store the task document frequencies and fold the IDF into the projection.

        ``diag(idf) @ projection`` is precomputed so featurising a query is one sparse product
        per block (a few ms on CPU, independent of the number of tasks).
        """
        import scipy.sparse as sp

        self._df, self._n_tasks = df, n_tasks
        idf = (np.log((1.0 + n_tasks) / (1.0 + df)) + 1.0).astype(np.float32)
        self._idf_projection = [sp.diags(idf[b]).tocsr() @ self._projection for b in range(len(df))]

    # -- features -------------------------------------------------------------------------------
    def dense_features(self, dense: np.ndarray) -> np.ndarray:
        """``(n, dense_dim)`` unit rows: the dense vectors, whitened when the config says so."""
        x = unit_rows(dense)
        return unit_rows(x @ self._whitening) if self._whitening is not None else x

    def lexical_features(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per lexical block (word, char), ``(n, lexical_dim)`` unit rows of projected tf-idf."""
        self._require_fitted()
        return [unit_rows((m @ proj).toarray()) for m, proj in zip(self._counts(texts), self._idf_projection)]

    def featurize(self, texts: Sequence[str], dense: np.ndarray) -> np.ndarray:
        dense = _check_dense(texts, dense)
        self._require_fitted()
        _check_width(dense, self._dense_dim)
        a = self.config.dense_weight
        word, char = self.lexical_features(texts)
        lex_scale = np.sqrt((1.0 - a) / 2.0)
        rows = np.hstack([np.sqrt(a) * self.dense_features(dense), lex_scale * word, lex_scale * char])
        # A text with no word token leaves its word block zero: renormalise so rows stay unit.
        return unit_rows(rows)

    def task_vectors(self, features: np.ndarray) -> np.ndarray:
        """The task's discriminant direction ``(S_w + ridge I)^-1 mean``, unit (or the plain mean).

        ``S_w`` is the within-task covariance of the examples seen by `fit`. Only the stored side
        changes: queries are featurised as before, so a query costs the same, and its cosine to
        the prototype is (up to the prototype's norm) the linear discriminant score of the task.
        Needs the representation fitted in this process (the store refits before rebuilding).
        """
        mean = _mean_prototype(features)
        if self.config.discriminant_ridge is None:
            return mean
        if self._discriminant is None:
            raise StoreError(
                "discriminant task vectors need the examples: fit() this representation on them "
                "(a representation loaded from a store's state can featurise queries only)"
            )
        return unit_rows(self._discriminant.solve(mean))

    def release_fit_data(self) -> None:
        """Free what only `task_vectors` needs (the residuals and factor: up to ~300 MB for large
        stores); queries are featurised as before, building task vectors then needs a refit."""
        self._discriminant = None

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``meta`` (JSON: name, config, dense_dim, n_tasks), ``task_df`` and, if on, ``whitening``.

        For MiniLM: 384x384 float16 + 2x16384 int32, about 0.4 MB (less in a compressed npz).
        """
        self._require_fitted()
        state = {
            "meta": _meta({
                "name": self.name, "config": self.config.model_dump(mode="json"),
                "dense_dim": self._dense_dim, "n_tasks": self._n_tasks,
            }),
            "task_df": self._df.copy(),
        }
        if self._whitening is not None:
            state["whitening"] = self._whitening.astype(np.float16)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "HybridRepresentation":
        meta = _read_meta(state)
        # States written before discriminant prototypes existed lack the field: their task
        # vectors are plain means, so say so (the store then knows they are out of date).
        rep = cls(HybridConfig.model_validate({"discriminant_ridge": None, **meta["config"]}))
        df = np.asarray(state["task_df"], dtype=np.int32)
        if df.shape != (2, 2**rep.config.hash_bits):
            raise StoreError(f"representation state is corrupt: task_df has shape {df.shape}; re-index the store")
        rep._set_counts_state(df, int(meta["n_tasks"]))
        rep._dense_dim = int(meta["dense_dim"])
        if rep.config.whitening_shrinkage is not None:
            if "whitening" not in state:
                raise StoreError("representation state is corrupt: whitening matrix missing; re-index the store")
            rep._whitening = np.asarray(state["whitening"], dtype=np.float32)
        return rep


def within_group_whitening(x: np.ndarray, groups: Sequence[str], shrinkage: float) -> np.ndarray:
    """Symmetric ``(d, d)`` matrix ``(S_w + shrinkage * mean_eig(S_w) * I) ** -1/2``.

    ``S_w`` is the covariance of the rows of ``x`` around the mean of their group (the scatter
    that does not tell groups apart). The ridge keeps directions of tiny within-group variance
    from being blown up.
    """
    resid = _group_residuals(x, groups)
    cov = resid.T @ resid / max(len(x), 1)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 0.0, None)
    ridge = shrinkage * max(float(eigval.mean()), 1e-12)
    return ((eigvec / np.sqrt(eigval + ridge)) @ eigvec.T).astype(np.float32)


def _group_residuals(x: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Rows of ``x`` minus the mean of their group (float64)."""
    x = np.asarray(x, dtype=np.float64)
    labels, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    means = np.zeros((len(labels), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= np.bincount(inverse, minlength=len(labels))[:, None]
    return x - means[inverse]


class RidgeCovarianceInverse:
    """Applies ``(R^T R / n + ridge * mean_eig * I)^-1`` for residual rows ``R`` (n x d).

    Factorised once (Cholesky, scipy) in whichever form is smaller: the d x d covariance when
    n >= d, else the n x n Gram matrix through the Woodbury identity
    ``(R^T R/n + l I)^-1 = (I - R^T (n l I + R R^T)^-1 R) / l``. Hand-written because it is
    four lines of linear algebra that no routing library exposes in this form.
    """

    def __init__(self, residuals: np.ndarray, ridge: float):
        import scipy.linalg as sla

        r = np.asarray(residuals, dtype=np.float64)
        n, d = r.shape
        self._lam = ridge * max(float((r * r).sum()) / max(n * d, 1), 1e-12)
        self._r = r if n < d else None
        if n < d:
            self._factor = sla.cho_factor(r @ r.T + n * self._lam * np.eye(n))
        else:
            self._factor = sla.cho_factor(r.T @ r / n + self._lam * np.eye(d))

    def solve(self, m: np.ndarray) -> np.ndarray:
        """``(S_w + l I)^-1`` applied to each row of ``m`` (returned as rows, float32)."""
        import scipy.linalg as sla

        m = np.asarray(m, dtype=np.float64)
        if self._r is None:
            return sla.cho_solve(self._factor, m.T).T.astype(np.float32)
        inner = sla.cho_solve(self._factor, self._r @ m.T)
        return ((m.T - self._r.T @ inner) / self._lam).T.astype(np.float32)


def _meta(obj: dict[str, Any]) -> np.ndarray:
    return np.array(json.dumps(obj, sort_keys=True))


def _read_meta(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    try:
        return json.loads(str(np.asarray(state["meta"])))
    except (KeyError, ValueError) as exc:
        raise StoreError(f"representation state has no readable 'meta' entry ({exc}); re-index the store") from exc


REPRESENTATIONS: dict[str, type] = {"paper": PaperRepresentation, "hybrid": HybridRepresentation}
DEFAULT_REPRESENTATION = "hybrid"


def make_representation(name: str = DEFAULT_REPRESENTATION, **config: Any) -> TaskRepresentation:
    """A new, unfitted representation by name (``hybrid`` -- the default -- or ``paper``)."""
    try:
        cls = REPRESENTATIONS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown task representation '{name}'; choose one of {sorted(REPRESENTATIONS)}"
        ) from None
    return cls(**config)


def representation_from_state(state: Mapping[str, np.ndarray] | str | Path) -> TaskRepresentation:
    """Rebuild a fitted representation from `state_dict()`, or from an ``.npz`` saved by `save_state`."""
    if isinstance(state, (str, Path)):
        try:
            with np.load(state, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the representation state {state}: {exc}; re-index the store") from exc
    meta = _read_meta(state)
    name = meta.get("name")
    if name == "paper":
        return PaperRepresentation(dense_dim=meta.get("dense_dim"))
    if name == "hybrid":
        return HybridRepresentation.from_state(state)
    raise StoreError(
        f"the store's representation state names '{name}', which this version does not know; "
        "re-index the store (`lorauter index`)"
    )


def save_state(representation: TaskRepresentation, path: str | Path) -> Path:
    """Write ``representation.state_dict()`` to a compressed ``.npz`` (no pickles)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # a file object keeps numpy from appending ".npz" to the name
        np.savez_compressed(fh, **representation.state_dict())
    return path


def task_scores(
    similarities: np.ndarray, record_tasks: Sequence[str], exclude_tasks: Sequence[str] = ()
) -> dict[str, float]:
    """Per-task score from per-record cosine similarities: the max over a task's prototypes.

    ``similarities[i]`` is the cosine of the query to record ``i`` (cosine similarity, i.e.
    ``1 - distance`` of a Chroma cosine collection) and ``record_tasks[i]`` its task. Tasks
    in ``exclude_tasks`` are dropped. Returns tasks best first.
    """
    sims = np.asarray(similarities, dtype=np.float64).ravel()
    if sims.shape[0] != len(record_tasks):
        raise InvalidInputError("similarities and record_tasks must have the same length")
    excluded = set(exclude_tasks)
    best: dict[str, float] = {}
    for s, t in zip(sims, record_tasks):
        if t in excluded:
            continue
        if t not in best or s > best[t]:
            best[t] = float(s)
    return dict(sorted(best.items(), key=lambda kv: (-kv[1], kv[0])))
