"""Routing quality of task representations (issue 2), in memory, without Chroma.

For each representation, prints task top-1, domain top-1, task recall@3 and unseen-task
("OOD": the query's own task is not a candidate) domain top-1, measured

- ``val-cv``: on the validation set by 5-fold cross-validation inside each task (example ``j``
  of a task is in fold ``j % 5``): state and task vectors are fitted on four folds, the fifth
  fold's examples are the queries. This is what the knobs are chosen on.
- ``val-loto``: OOD domain top-1 with leave-one-task-out -- the state is fitted without the
  query's task at all (a task the router has truly never seen).
- ``test_dev``: fitted on the whole validation set, queried with ``test_dev.jsonl``
  (confirmation only; nothing is tuned on it).

MiniLM embeddings are cached under ``.cache/representation_study/`` (keyed by file content).

    python scripts/representation_study.py                 # the table
    python scripts/representation_study.py --grid          # + the knob sweep (val-cv)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from lorauter_integrations.data import bundled_data_dir, read_jsonl
from lorauter_integrations.representations import HybridRepresentation, PaperRepresentation

CACHE = Path(".cache/representation_study")


def embed_cached(texts: list[str], tag: str, encoder_name: str) -> np.ndarray:
    """MiniLM embeddings of texts, cached on disk by content hash (encoding 2k texts takes minutes on CPU)."""
    digest = hashlib.sha256(("\x00".join(texts) + encoder_name).encode()).hexdigest()[:16]
    path = CACHE / f"{tag}-{digest}.npy"
    if path.exists():
        return np.load(path)
    from lorauter_integrations.encoders import get_encoder

    print(f"encoding {len(texts)} {tag} texts (cached afterwards in {path})", file=sys.stderr)
    vecs = get_encoder(encoder_name).encode(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


class Split:
    """Texts, dense vectors, task ids and domains of one JSONL file."""

    def __init__(self, path: Path, tag: str, encoder_name: str):
        examples = read_jsonl(path)
        self.texts = [e.inputs for e in examples]
        self.tasks = np.array([e.task for e in examples])
        self.domains = np.array([e.domain or e.task for e in examples])
        self.dense = embed_cached(self.texts, tag, encoder_name)

    def subset(self, mask: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """(texts, dense, tasks, domains) of the rows in ``mask`` (all rows by default)."""
        idx = np.arange(len(self.texts)) if mask is None else np.flatnonzero(mask)
        return [self.texts[i] for i in idx], self.dense[idx], self.tasks[idx], self.domains[idx]


def fit_and_score(make_rep, train: tuple, queries: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Fit on ``train``, build one prototype per task, return (task ids, query x task cosine)."""
    texts, dense, tasks, domains = train
    rep = make_rep().fit(texts, dense, tasks, domains)
    feats = rep.featurize(texts, dense)
    task_ids = np.array(list(dict.fromkeys(tasks)))
    protos = np.vstack([rep.task_vectors(feats[tasks == t]) for t in task_ids])
    q = rep.featurize(queries[0], queries[1])
    return task_ids, q @ protos.T  # one prototype per task, so max-over-prototypes is the identity


def metrics(task_ids, sims, true_tasks, task_domain: dict[str, str], k: int = 3) -> dict[str, float]:
    domains = np.array([task_domain[t] for t in task_ids])
    true_dom = np.array([task_domain[t] for t in true_tasks])
    order = np.argsort(-sims, axis=1)
    top = task_ids[order[:, 0]]
    in_k = (task_ids[order[:, :k]] == true_tasks[:, None]).any(axis=1)
    ood = sims.copy()
    ood[task_ids[None, :] == true_tasks[:, None]] = -np.inf  # own task is not a candidate
    ood_top = ood.argmax(axis=1)
    return {
        "task_top1": float(np.mean(top == true_tasks)),
        "domain_top1": float(np.mean(domains[order[:, 0]] == true_dom)),
        "task_recall_at_3": float(np.mean(in_k)),
        "ood_domain_top1": float(np.mean(domains[ood_top] == true_dom)),
    }


def cross_validate(make_rep, val: Split, task_domain, folds: int = 5) -> dict[str, float]:
    position = np.zeros(len(val.texts), dtype=int)
    seen: dict[str, int] = {}
    for i, t in enumerate(val.tasks):
        position[i] = seen.get(t, 0)
        seen[t] = position[i] + 1
    per_fold = []
    for f in range(folds):
        test = position % folds == f
        task_ids, sims = fit_and_score(make_rep, val.subset(~test), val.subset(test))
        per_fold.append((metrics(task_ids, sims, val.tasks[test], task_domain), int(test.sum())))
    total = sum(n for _, n in per_fold)
    return {key: sum(m[key] * n for m, n in per_fold) / total for key in per_fold[0][0]}


def leave_one_task_out(make_rep, val: Split, task_domain) -> float:
    hits = []
    for t in tqdm(list(dict.fromkeys(val.tasks)), desc="leave-one-task-out", leave=False, file=sys.stderr):
        own = val.tasks == t
        task_ids, sims = fit_and_score(make_rep, val.subset(~own), val.subset(own))
        top = task_ids[sims.argmax(axis=1)]
        hits.extend(task_domain[p] == task_domain[t] for p in top)
    return float(np.mean(hits))


def representations() -> dict[str, Callable[[], object]]:
    """The table's rows: the paper, our default, and two ablations of it."""
    return {
        "paper": PaperRepresentation,
        "hybrid (default)": HybridRepresentation,
        "hybrid, plain means": lambda: HybridRepresentation(discriminant_ridge=None),
        "hybrid, no whiten": lambda: HybridRepresentation(whitening_shrinkage=None),
        "lexical only": lambda: HybridRepresentation(dense_weight=0.0, whitening_shrinkage=None),
    }


def sweep(val: Split, task_domain) -> None:
    """Dense weight x whitening ridge x discriminant ridge on val-cv.

    The default is the best mean of the four figures (flat near the optimum: a 0.2-0.3,
    whitening 0.1, discriminant ridge 4-8).
    """
    print("val-cv sweep                        task@1  dom@1  task@3  ood-dom@1   mean")
    grid = [(a, lam, disc) for a in (0.2, 0.3, 0.4) for lam in (0.1, None) for disc in (2.0, 5.0, 10.0, None)]
    for a, lam, disc in tqdm(grid, desc="sweep", leave=False, file=sys.stderr):
        m = cross_validate(lambda: HybridRepresentation(dense_weight=a, whitening_shrinkage=lam,
                                                        discriminant_ridge=disc), val, task_domain)
        print(f"  a={a:<4} ridge={str(lam):5} disc={str(disc):5}    {m['task_top1']:.3f}  {m['domain_top1']:.3f}  "
              f"{m['task_recall_at_3']:.3f}  {m['ood_domain_top1']:.3f}      {np.mean(list(m.values())):.3f}",
              flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--validation", type=Path, default=bundled_data_dir() / "validation.jsonl")
    ap.add_argument("--test", type=Path, default=bundled_data_dir() / "test_dev.jsonl")
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--grid", action="store_true", help="also sweep dense weight x whitening ridge on val-cv")
    ap.add_argument("--no-loto", action="store_true", help="skip the leave-one-task-out column (slowest)")
    args = ap.parse_args()

    val = Split(args.validation, "validation", args.encoder)
    test = Split(args.test, "test", args.encoder)
    task_domain = dict(zip(val.tasks, val.domains))

    if args.grid:
        sweep(val, task_domain)

    header = f"{'representation':18} {'eval':9} {'task@1':>7} {'dom@1':>7} {'task@3':>7} {'ood-dom@1':>10}"
    print(header)
    print("-" * len(header))
    for name, make_rep in representations().items():
        cv = cross_validate(make_rep, val, task_domain)
        loto = float("nan") if args.no_loto else leave_one_task_out(make_rep, val, task_domain)
        task_ids, sims = fit_and_score(make_rep, val.subset(), test.subset())
        td = metrics(task_ids, sims, test.tasks, task_domain)
        for label, m in (("val-cv", cv), ("test_dev", td)):
            print(f"{name:18} {label:9} {m['task_top1']:7.3f} {m['domain_top1']:7.3f} "
                  f"{m['task_recall_at_3']:7.3f} {m['ood_domain_top1']:10.3f}")
        print(f"{name:18} {'val-loto':9} {'':7} {'':7} {'':7} {loto:10.3f}", flush=True)


if __name__ == "__main__":
    main()
