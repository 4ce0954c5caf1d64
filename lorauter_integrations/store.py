"""`TaskStore`: task representations and validation examples in Chroma.

Layout (every collection in cosine space, every vector computed by us, never by Chroma):

- ``{name}-examples``  one record per validation example: the dense sentence embedding of its
  input, the input as document, ``task``/``domain`` metadata. Used by the ``examples`` and
  ``retriever`` strategies and to (re)compute task vectors without re-encoding.
- ``{name}-tasks-{rep}``  one or a few records (prototypes) per task for each task
  representation ``rep`` (``paper``: the LoRAuter mean embedding; ``hybrid``: our default).
- ``{name}-meta``  the task registry (one record per *completely indexed* task: domain, metric,
  size, content hash, created-at) and the fitted state of each representation.

A task is written examples first, vectors next, registry record last, so a killed index run
leaves the store queryable and a re-run finishes the job (content hashes make re-runs idempotent).

Several processes may share one store through a ``chroma run`` server: every write also stamps a
new version in ``{name}-meta``, and a store re-reads its cached registry and representation
state when it sees another version (checked at most every ``refresh_s`` seconds).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import numpy as np
from pydantic import BaseModel
from tqdm.auto import tqdm

from .data import TaskSet, load_tasks
from .encoders import DEFAULT_ENCODER, Encoder, get_encoder
from .errors import EncoderMismatchError, InvalidInputError, StoreError, UnknownTaskError
from .representations import (
    REPRESENTATIONS, TaskRepresentation, make_representation, representation_from_state, task_scores,
)

DEFAULT_STORE_NAME = "lorauter"
_STATE_PREFIX = "state:"
_TASK_PREFIX = "task:"
_VERSION_ID = "version"
_BATCH = 1000  # below Chroma's max batch size on every backend
#: HNSW settings of the task collections (``{name}-tasks-{rep}``), beyond the cosine space.
#: Measured on 10,000 task vectors of 4,480 dimensions, 240 queries, recall@1 against an exact
#: search (BENCHMARKS.md): Chroma's defaults (max_neighbors 16, ef_search 100) 0.85-0.98 (graphs
#: differ run to run); ef_search 1000 alone 0.98-1.0; with max_neighbors 32 too, 0.988-1.0 over
#: four builds - at about the same query time (6-10 ms: at this size a query's cost is not the
#: graph walk), for an index that takes ~2x longer to build. The remaining misses are nodes the
#: graph leaves unreachable (ef_search 3000 does not find them): exactness needs an exact search.
#: An existing collection keeps its build settings, so older stores get the larger ef_search only
#: (measured 0.92 -> 0.98 on one such store).
TASK_INDEX_HNSW: dict[str, int] = {"max_neighbors": 32, "ef_search": 1000}


class TaskRecord(BaseModel):
    """What the store knows of one task."""

    task: str
    domain: str | None = None
    metric: str = "em"
    size: int = 0
    created_at: str = ""
    content_hash: str = ""


@dataclass
class IndexReport:
    """What an `index` call did."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Task vectors were rebuilt because the store's were made by an older recipe.
    refitted: bool = False

    def __str__(self) -> str:
        text = f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged"
        return text + ("; task vectors rebuilt with this version's representation" if self.refitted else "")


def _content_hash(ts: TaskSet) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([ts.domain, ts.metric], sort_keys=True).encode())
    for ex in ts.examples:
        h.update(json.dumps([ex.inputs, ex.targets], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _encode_state(state: dict[str, np.ndarray]) -> str:
    """A representation's numpy state as text (base64 of a compressed npz, no pickles): it
    lives in a Chroma document, so every process sharing a Chroma server sees the same state."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **state)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_state(doc: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(base64.b64decode(doc)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise StoreError(f"the store's representation state is unreadable ({exc}); re-index the store") from exc


def _wrap_chroma(action: str):
    """Turn Chroma/transport exceptions into `StoreError` with the action that failed."""

    def deco(fn):
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except (StoreError, InvalidInputError):
                raise
            except Exception as exc:  # chromadb raises many unrelated types (httpx, sqlite, rust)
                raise StoreError(f"task store: cannot {action}: {type(exc).__name__}: {exc}") from exc

        inner.__name__, inner.__doc__ = fn.__name__, fn.__doc__
        return inner

    return deco


def _check_server(host: str, port: int, timeout_s: float) -> None:
    """One heartbeat with a bounded timeout, before chromadb's client (which has none) is built."""
    import httpx

    try:
        httpx.get(f"http://{host}:{port}/api/v2/heartbeat", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as exc:
        raise StoreError(
            f"cannot reach the Chroma server at {host}:{port} within {timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start one with `chroma run --path DIR --host {host} "
            f"--port {port}` or check the address"
        ) from exc


def _bound_timeouts(client, timeout_s: float, request_timeout_s: float) -> None:
    """Give the HTTP client's session bounded timeouts.

    chromadb 1.x builds its httpx session with ``timeout=None`` and no setting reaches it, so a
    server that stops answering would hang every call (chroma-core/chroma#5805).
    """
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(request_timeout_s, connect=timeout_s)


def make_client(path: str | Path | None = None, *, host: str | None = None, port: int = 8000,
                timeout_s: float = 10.0, request_timeout_s: float = 120.0):
    """A Chroma client: embedded `PersistentClient(path)`, or `HttpClient(host, port)`.

    The HTTP client has bounded timeouts (``timeout_s`` to connect and for the first heartbeat,
    ``request_timeout_s`` per request), so a server that is down or silent is a `StoreError`,
    not a hang.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    try:
        if host is not None:
            _check_server(host, port, timeout_s)
            client = chromadb.HttpClient(host=host, port=port, settings=Settings(anonymized_telemetry=False))
            _bound_timeouts(client, timeout_s, request_timeout_s)
            client.heartbeat()
            return client
        if path is None:
            raise InvalidInputError("give a store path (embedded Chroma) or a server host")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(p), settings=settings)
    except (InvalidInputError, StoreError):
        raise
    except Exception as exc:
        where = f"server {host}:{port}" if host else f"path {path}"
        raise StoreError(f"cannot open the Chroma store at {where}: {type(exc).__name__}: {exc}") from exc


class TaskStore:
    """Chroma collections of task vectors and example vectors.

    >>> store = TaskStore(".lorauter-store")                # embedded, persistent
    >>> store.index_file("data/flan/validation.jsonl")      # idempotent; progress bar
    >>> store.nearest_tasks("hybrid", store.featurize("hybrid", ["Is this review positive?"]), k=3)

    ``client`` may be any chromadb client (``chromadb.HttpClient`` for a shared ``chroma run``
    server). ``encoder`` defaults to the encoder the store was built with (or all-MiniLM-L6-v2
    for a new store); a store built with another encoder refuses to open. ``refresh_s``: how
    often (at most) to check whether another process changed the store, so that its new tasks
    are routed without an explicit `refresh()` (None: only on `refresh()`).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        client: Any = None,
        encoder: Encoder | str | None = None,
        name: str = DEFAULT_STORE_NAME,
        representations: Sequence[str] = tuple(REPRESENTATIONS),
        refresh_s: float | None = 2.0,
    ):
        self.client = client if client is not None else make_client(path)
        self.name = name
        self.refresh_s = refresh_s
        self._lock = threading.RLock()
        self._examples = self._collection(f"{name}-examples")
        self._meta = self._collection(f"{name}-meta")
        recorded = self._examples.metadata or {}
        enc_name = recorded.get("encoder")
        if encoder is None:
            encoder = get_encoder(enc_name or DEFAULT_ENCODER)
        elif isinstance(encoder, str):
            encoder = get_encoder(encoder)
        self.encoder: Encoder = encoder
        if enc_name is not None and (enc_name != encoder.name or int(recorded.get("dim", -1)) != encoder.dim):
            raise EncoderMismatchError(
                f"store '{name}' was built with encoder {enc_name} (dim {recorded.get('dim')}), "
                f"not {encoder.name} (dim {encoder.dim}): open it with that encoder or re-index "
                "into a new store"
            )
        self.representations: dict[str, TaskRepresentation] = {}
        for rep in representations:
            self.representations[rep] = make_representation(rep)
        self._task_cols = {rep: self._collection(f"{name}-tasks-{rep}", TASK_INDEX_HNSW)
                           for rep in self.representations}
        self._version = self._read_version()
        self._checked_at = time.monotonic()
        self._load_states()
        self._registry_cache: dict[str, TaskRecord] | None = None

    # -- collections ------------------------------------------------------------------------
    @_wrap_chroma("open a collection")
    def _collection(self, cname: str, hnsw: dict[str, int] | None = None):
        hnsw = dict(hnsw or {})
        col = self.client.get_or_create_collection(
            cname, embedding_function=None, configuration={"hnsw": {"space": "cosine", **hnsw}}
        )
        # An existing collection keeps the settings it was created with; ef_search is the one
        # Chroma lets us change afterwards, so a store built by an older version gets it too
        # (never lowered: a store tuned higher stays so).
        wanted = hnsw.get("ef_search")
        current = ((getattr(col, "configuration", None) or {}).get("hnsw") or {}).get("ef_search")
        if wanted is not None and current is not None and current < wanted:
            col.modify(configuration={"hnsw": {"ef_search": wanted}})
        return col

    def _stamp_encoder(self) -> None:
        if not (self._examples.metadata or {}).get("encoder"):
            self._examples.modify(metadata={"encoder": self.encoder.name, "dim": int(self.encoder.dim)})

    def _load_states(self) -> None:
        ids = [_STATE_PREFIX + rep for rep in self.representations]
        got = self._meta.get(ids=ids, include=["documents"])
        for rid, doc in zip(got["ids"], got["documents"] or []):
            if doc:
                self.representations[rid[len(_STATE_PREFIX):]] = representation_from_state(_decode_state(doc))

    # -- freshness (several processes on one server) ----------------------------------------
    @_wrap_chroma("read the store version")
    def _read_version(self) -> str | None:
        got = self._meta.get(ids=[_VERSION_ID], include=["documents"])
        return (got["documents"] or [None])[0]

    @property
    def version(self) -> str | None:
        """Changes whenever any process writes the store (routers that cache derived data watch it)."""
        self._maybe_refresh()
        return self._version

    def _bump_version(self) -> None:
        """Stamp a write, so that other processes sharing the store reload their cached view."""
        self._version = uuid.uuid4().hex
        self._meta.upsert(ids=[_VERSION_ID], embeddings=np.ones((1, 1), dtype=np.float32),
                          documents=[self._version], metadatas=[{"kind": "version"}])

    def _maybe_refresh(self) -> None:
        """`refresh()` if another process wrote since we last looked (checked every ``refresh_s``)."""
        if self.refresh_s is None or time.monotonic() - self._checked_at < self.refresh_s:
            return
        with self._lock:
            self._checked_at = time.monotonic()
            version = self._read_version()
            if version != self._version:
                self._version = version
                self.refresh()

    # -- reading ----------------------------------------------------------------------------
    @_wrap_chroma("read the task registry")
    def _registry(self) -> dict[str, TaskRecord]:
        self._maybe_refresh()
        with self._lock:
            if self._registry_cache is None:
                got = self._meta.get(where={"kind": "task"}, include=["metadatas"])
                recs = {}
                for md in got["metadatas"] or []:
                    rec = TaskRecord.model_validate({k: v for k, v in md.items() if k != "kind"})
                    recs[rec.task] = rec
                self._registry_cache = recs
            return self._registry_cache

    def refresh(self) -> None:
        """Forget cached registry and state (another process may have changed a shared store)."""
        with self._lock:
            self._registry_cache = None
            self._load_states()

    def tasks(self) -> list[TaskRecord]:
        """Every completely indexed task, sorted by id."""
        return sorted(self._registry().values(), key=lambda r: r.task)

    def task(self, task: str) -> TaskRecord:
        try:
            return self._registry()[task]
        except KeyError:
            raise UnknownTaskError(f"task '{task}' is not in the store; `lorauter index` it first") from None

    def __contains__(self, task: str) -> bool:
        return task in self._registry()

    def __len__(self) -> int:
        return len(self._registry())

    def domains(self) -> dict[str, str | None]:
        return {r.task: r.domain for r in self._registry().values()}

    @_wrap_chroma("read examples")
    def examples(self, tasks: Collection[str] | None = None, *, limit: int | None = None) -> dict[str, np.ndarray]:
        """Dense example vectors per task (first ``limit`` of each, in indexing order)."""
        where = {"task": {"$in": list(tasks)}} if tasks is not None else None
        got = self._examples.get(where=where, include=["embeddings", "metadatas"])
        rows: dict[str, list[tuple[str, np.ndarray]]] = {}
        for rid, emb, md in zip(got["ids"], got["embeddings"], got["metadatas"]):
            rows.setdefault(md["task"], []).append((rid, np.asarray(emb, dtype=np.float32)))
        out = {}
        for t, items in rows.items():
            items.sort(key=lambda x: x[0])
            vecs = [v for _, v in items][: limit or None]
            out[t] = np.stack(vecs)
        return out

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Dense, unit-norm encoder vectors."""
        return self.encoder.encode(list(texts))

    def featurize(self, rep: str, texts: Sequence[str], dense: np.ndarray | None = None) -> np.ndarray:
        """Query vectors of representation ``rep`` (encodes ``texts`` unless ``dense`` is given)."""
        self._maybe_refresh()  # a query must be featurised with the state the task vectors were built with
        representation = self._rep(rep)
        if getattr(representation, "fitted", True) is False:
            raise StoreError("the task store is empty: run `lorauter index --validation FILE` first")
        if dense is None:
            dense = self.encode(texts)
        return representation.featurize(list(texts), dense)

    def _rep(self, rep: str) -> TaskRepresentation:
        try:
            return self.representations[rep]
        except KeyError:
            raise InvalidInputError(
                f"representation '{rep}' is not kept in this store; kept: {sorted(self.representations)}"
            ) from None

    # -- querying ---------------------------------------------------------------------------
    @_wrap_chroma("query task vectors")
    def nearest_tasks(
        self, rep: str, vectors: np.ndarray, k: int, *, exclude: Collection[str] = ()
    ) -> list[list[tuple[str, float]]]:
        """For each query vector: the ``k`` most similar tasks as (task, cosine), best first.

        A task with several prototypes scores with its best one. ``exclude`` removes tasks from
        the candidates inside the Chroma query (no post-filtering, so ``k`` results still come back).
        """
        col = self._task_cols[self._rep(rep).name]
        total = col.count()
        if total == 0:
            raise StoreError("the task store is empty: run `lorauter index --validation FILE` first")
        per_task = max(1, getattr(self._rep(rep), "prototypes_per_task", 1))
        n = min(total, k * per_task + per_task)
        where = {"task": {"$nin": list(exclude)}} if exclude else None
        res = col.query(query_embeddings=np.asarray(vectors, dtype=np.float32), n_results=n,
                        where=where, include=["distances", "metadatas"])
        return [
            list(task_scores(1.0 - np.asarray(dists), [md["task"] for md in mds]).items())[:k]
            for dists, mds in zip(res["distances"], res["metadatas"])
        ]

    @_wrap_chroma("query example vectors")
    def nearest_examples(
        self, vectors: np.ndarray, n: int, *, exclude: Collection[str] = ()
    ) -> list[list[tuple[str, float]]]:
        """For each dense query vector: its ``n`` nearest examples as (task, cosine distance)."""
        total = self._examples.count()
        if total == 0:
            raise StoreError("the task store is empty: run `lorauter index --validation FILE` first")
        where = {"task": {"$nin": list(exclude)}} if exclude else None
        res = self._examples.query(query_embeddings=np.asarray(vectors, dtype=np.float32),
                                   n_results=min(n, total), where=where, include=["distances", "metadatas"])
        return [[(md["task"], float(d)) for d, md in zip(ds, mds)] for ds, mds in zip(res["distances"], res["metadatas"])]

    # -- writing ----------------------------------------------------------------------------
    def index_file(self, path: str | Path, *, progress: bool = True) -> IndexReport:
        """Index (add or update) every task of a validation JSONL file."""
        return self.index(load_tasks(path), progress=progress)

    @_wrap_chroma("index tasks")
    def index(self, tasks: Iterable[TaskSet], *, progress: bool = True) -> IndexReport:
        """Add new tasks and update changed ones; unchanged tasks are skipped (idempotent)."""
        tasks = list(tasks)
        seen: set[str] = set()
        for ts in tasks:
            if ts.task in seen:
                raise InvalidInputError(f"task '{ts.task}' is given twice; merge its examples into one task")
            seen.add(ts.task)
            if not ts.examples:
                raise InvalidInputError(f"task '{ts.task}' has no examples")
        report = IndexReport()
        with self._lock:
            self._registry_cache = None
            registry = self._registry()
            todo = []
            for ts in tasks:
                h = _content_hash(ts)
                old = registry.get(ts.task)
                if old is not None and old.content_hash == h:
                    report.unchanged.append(ts.task)
                else:
                    todo.append((ts, h))
                    (report.updated if old is not None else report.added).append(ts.task)
            if not todo:
                if self._representations_outdated():
                    self._rebuild_task_vectors()
                    report.refitted = True
                return report
            self._stamp_encoder()
            bar = tqdm(todo, desc="indexing tasks", unit="task", disable=not progress)
            for ts, _ in bar:
                bar.set_postfix_str(ts.task)
                dense = self.encode(ts.inputs)
                self._examples.delete(where={"task": ts.task})
                ids = [f"{ts.task}/{i:05d}" for i in range(len(ts.examples))]
                md = {"task": ts.task, "domain": ts.domain or ""}
                for s in range(0, len(ids), _BATCH):
                    self._examples.upsert(ids=ids[s:s + _BATCH], embeddings=dense[s:s + _BATCH],
                                          documents=ts.inputs[s:s + _BATCH], metadatas=[md] * len(ids[s:s + _BATCH]))
            self._rebuild_task_vectors()
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            recs = [TaskRecord(task=ts.task, domain=ts.domain, metric=ts.metric, size=len(ts.examples),
                               created_at=now, content_hash=h) for ts, h in todo]
            self._write_registry(recs)
        return report

    def _write_registry(self, recs: list[TaskRecord]) -> None:
        for s in range(0, len(recs), _BATCH):
            chunk = recs[s:s + _BATCH]
            self._meta.upsert(
                ids=[_TASK_PREFIX + r.task for r in chunk],
                embeddings=np.ones((len(chunk), 1), dtype=np.float32),
                metadatas=[{"kind": "task", **r.model_dump(exclude_none=True)} for r in chunk],
            )
        self._registry_cache = None
        self._bump_version()

    def _representations_outdated(self) -> bool:
        """Whether a stored representation was fitted with other knobs than this version's defaults.

        Re-indexing unchanged data is a no-op, except that task vectors built by an older recipe
        (e.g. plain means before discriminant prototypes) are rebuilt from the stored examples.
        """
        if not self._examples.count():
            return False
        return any(getattr(rep, "config", None) != getattr(make_representation(name), "config", None)
                   for name, rep in self.representations.items())

    def _rebuild_task_vectors(self) -> None:
        """Refit every representation on all examples and rewrite all task vectors.

        Representations may hold corpus statistics (e.g. IDF), so one task's change can move
        every task's vector; with tens of thousands of examples this is seconds, no re-encoding.
        """
        got = self._examples.get(include=["embeddings", "metadatas", "documents"])
        if not got["ids"]:
            for col in self._task_cols.values():
                if col.count():
                    col.delete(ids=col.get(include=[])["ids"])
            self._bump_version()
            return
        order = np.argsort(np.asarray(got["ids"]), kind="stable")
        dense = np.asarray(got["embeddings"], dtype=np.float32)[order]
        texts = [got["documents"][i] for i in order]
        mds = [got["metadatas"][i] for i in order]
        task_of = [m["task"] for m in mds]
        domains = [m.get("domain") or None for m in mds]
        domain_of = dict(zip(task_of, domains))
        for rep_name in list(self.representations):
            # Always this version's recipe: a state loaded from the store may be an older one.
            rep = self.representations[rep_name] = make_representation(rep_name)
            rep.fit(texts, dense, task_of, domains)
            feats = rep.featurize(texts, dense)
            ids, vecs, metas = [], [], []
            idx_by_task: dict[str, list[int]] = {}
            for i, t in enumerate(task_of):
                idx_by_task.setdefault(t, []).append(i)
            for t, idx in idx_by_task.items():
                protos = rep.task_vectors(feats[idx])
                for j, v in enumerate(protos):
                    ids.append(f"{t}/{j}")
                    vecs.append(v)
                    metas.append({"task": t, "domain": domain_of[t] or "", "prototype": j})
            if hasattr(rep, "release_fit_data"):
                rep.release_fit_data()  # the next rebuild refits anyway
            col = self._task_cols[rep_name]
            existing = set(col.get(include=[])["ids"])
            stale = sorted(existing - set(ids))
            if stale:
                col.delete(ids=stale)
            vecs_arr = np.asarray(vecs, dtype=np.float32)
            for s in range(0, len(ids), _BATCH):
                col.upsert(ids=ids[s:s + _BATCH], embeddings=vecs_arr[s:s + _BATCH], metadatas=metas[s:s + _BATCH])
            self._meta.upsert(ids=[_STATE_PREFIX + rep_name], embeddings=np.ones((1, 1), dtype=np.float32),
                              documents=[_encode_state(rep.state_dict())], metadatas=[{"kind": "state"}])
        self._bump_version()

    @_wrap_chroma("remove a task")
    def remove(self, task: str) -> None:
        """Remove a task (registry first, so a killed removal never leaves a half-routable task)."""
        with self._lock:
            self.task(task)  # raises UnknownTaskError
            self._meta.delete(ids=[_TASK_PREFIX + task])
            self._registry_cache = None
            self._examples.delete(where={"task": task})
            self._rebuild_task_vectors()

    @_wrap_chroma("write synthetic task vectors")
    def add_task_vectors(self, rep: str, tasks: Sequence[str], vectors: np.ndarray,
                         domains: Sequence[str | None] | None = None) -> None:
        """Write precomputed task vectors directly (benchmarks with synthetic tasks at scale)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(tasks) != len(vectors):
            raise InvalidInputError("one vector per task is needed")
        domains = list(domains) if domains is not None else [None] * len(tasks)
        col = self._task_cols[self._rep(rep).name]
        for s in range(0, len(tasks), _BATCH):
            sl = slice(s, s + _BATCH)
            col.upsert(ids=[f"{t}/0" for t in tasks[sl]], embeddings=vectors[sl],
                       metadatas=[{"task": t, "domain": d or "", "prototype": 0} for t, d in zip(tasks[sl], domains[sl])])
        self._write_registry([TaskRecord(task=t, domain=d, size=0) for t, d in zip(tasks, domains)])
