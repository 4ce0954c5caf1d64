"""`TaskStore`: task representations and validation examples in Chroma.

Layout (every collection in cosine space, every vector computed by us, never by Chroma):

- ``{name}-examples``  one record per validation example: the dense sentence embedding of its
  input, the input as document, ``task``/``domain`` metadata. Used by the ``examples`` and
  ``retriever`` strategies and to (re)compute task vectors without re-encoding.
- ``{name}-tasks-{rep}``  one or a few records (prototypes) per task for each task
  representation ``rep`` (``paper``: the LoRAuter mean embedding; ``hybrid``: our default).
- ``{name}-meta``  the task registry (one record per *completely indexed* task: domain, metric,
  size, content hash, created-at), the fitted state of each representation and the similarity
  floor calibrated for each on the store's examples (`floor`; recorded by `index` when
  every task has 5 examples or more, dropped and recalibrated whenever the tasks change, and
  ignored if it was calibrated on other tasks than the registry's).

A task is written examples first, vectors next, registry record last, so a killed index run
leaves the store queryable and a re-run finishes the job (content hashes make re-runs idempotent).
Every write run first records the tasks it is about to change in a journal (``journal`` in
``{name}-meta``) and clears it last: a run killed at any point leaves the journal behind, and the
next `index` rewrites every task it names (even one whose registry hash still matches: an update
killed midway may have replaced some of its examples), drops the examples of journalled tasks
that never completed, and rebuilds the task vectors. Before its first write a run validates the
texts, encodes them and fits every representation in memory, so input that cannot be stored or
fitted is refused with the store unchanged.

One process per embedded store folder: a `PersistentClient` folder is not safe to share between
processes (not even for reading: opening one may write it, and a reader never sees another
process's writes), so a `TaskStore` over a folder holds an exclusive lock on
``{folder}/lorauter.lock`` (which records the holder's pid) from opening to `close()` and a
second process gets `StoreBusyError` naming the holder. The lock is an OS lock (``flock``), so
the lock of a killed process is released by the OS and taken over. Several `TaskStore` objects of
one process share the lock. Several processes share a store through a ``chroma run`` server.

Every call into Chroma runs with a deadline (``call_timeout_s``, 300 s by default, or
``$LORAUTER_STORE_TIMEOUT_S``): a call that does not return in time raises `StoreError` ("timed
out after N s") instead of hanging, and later calls fail at once until the stuck call returns.

The store's metadata never chooses what is loaded: the encoder is the one the caller configures
(all-MiniLM-L6-v2 by default) and a store recorded with another encoder is refused
(`EncoderMismatchError`); malformed metadata and stores written by a newer version of this
package (``schema``) are refused with a `StoreError` that names the store and the fix.

Several processes may share one store through a ``chroma run`` server: every write also stamps a
new version in ``{name}-meta``, and a store re-reads its cached registry and representation
state when it sees another version (checked at most every ``refresh_s`` seconds).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import queue
import shutil
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
from .errors import EncoderMismatchError, InvalidInputError, StoreBusyError, StoreError, UnknownTaskError
from .representations import (
    REPRESENTATIONS, TaskRepresentation, make_representation, representation_from_state, task_scores,
)

DEFAULT_STORE_NAME = "lorauter"
_STATE_PREFIX = "state:"
_TASK_PREFIX = "task:"
_VERSION_ID = "version"
_JOURNAL_ID = "journal"
_FLOOR_PREFIX = "floor:"
#: The layout version this code writes and reads; a store stamped with a higher one was written by
#: a newer version of the package (stores without a stamp are schema 1).
STORE_SCHEMA = 1
LOCK_FILE = "lorauter.lock"
#: Deadline of one call into Chroma (seconds); ``$LORAUTER_STORE_TIMEOUT_S`` overrides it.
DEFAULT_CALL_TIMEOUT_S = 300.0
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
    #: Tasks rewritten because an earlier run was interrupted while changing them.
    repaired: list[str] = field(default_factory=list)
    #: Tasks an interrupted run had started to add, not given again: their examples were dropped.
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged"
        if self.repaired or self.dropped:
            text += (f"; repaired after an interrupted run: {len(self.repaired)} rewritten, "
                     f"{len(self.dropped)} unfinished additions dropped")
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


def _sorted_rows(ids, embeddings, documents, metadatas) -> tuple[list[str], np.ndarray, list[str], list[str | None]]:
    """Example rows as (texts, dense, task ids, domains), sorted by record id (``task/00000``...)."""
    order = np.argsort(np.asarray(ids), kind="stable")
    dense = np.asarray(embeddings, dtype=np.float32)[order]
    mds = [metadatas[i] for i in order]
    return ([documents[i] for i in order], dense, [m["task"] for m in mds], [m.get("domain") or None for m in mds])


def _client_address(client: Any) -> str:
    settings = getattr(getattr(client, "_system", None), "settings", None)
    host = getattr(settings, "chroma_server_host", None)
    if host:
        return f"server {host}:{getattr(settings, 'chroma_server_http_port', '?')}"
    return "an in-memory client" if settings is not None else f"client {type(client).__name__}"

_DISK_FULL_MARKS = ("no space left on device", "database or disk is full", "disk is full", "enospc",
                    "disk quota exceeded")


def _disk_full(exc: BaseException, folder: Path | None) -> bool:
    """Whether ``exc`` (or an exception it chains) says the disk is full. Chroma reports a full disk
    as OSError(ENOSPC), as sqlite's "database or disk is full", or only as "Error in compaction"
    (its Rust writer drops the cause): that one counts when the store's disk has < 1 MiB free."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if any(mark in text for mark in _DISK_FULL_MARKS):
            return True
        if "compaction" in text and folder is not None:
            try:
                if shutil.disk_usage(folder).free < 1 << 20:
                    return True
            except OSError:
                pass
        e = e.__cause__ or e.__context__
    return False


def _store_error(action: str, exc: BaseException, where: str, folder: Path | None) -> StoreError:
    if _disk_full(exc, folder):
        free = ""
        if folder is not None:
            try:
                free = f" ({shutil.disk_usage(folder).free / 2**20:.1f} MiB free)"
            except OSError:
                pass
        return StoreError(
            f"task store {where}: cannot {action}: the disk is full{free}; free some space (or move "
            f"the store to a larger disk) and run the command again ({type(exc).__name__}: {exc})"
        )
    return StoreError(f"task store {where}: cannot {action}: {type(exc).__name__}: {exc}")


def _wrap_chroma(action: str):
    """Turn Chroma/transport exceptions into `StoreError` with the action that failed."""

    def deco(fn):
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except (StoreError, InvalidInputError):
                raise
            except Exception as exc:  # chromadb raises many unrelated types (httpx, sqlite, rust)
                raise _store_error(action, exc, getattr(self, "_where", "?"), getattr(self, "_folder", None)) from exc

        inner.__name__, inner.__doc__ = fn.__name__, fn.__doc__
        return inner

    return deco


_inside_deadline = threading.local()


class _Deadline:
    """Runs calls into Chroma in a daemon thread and waits at most ``seconds`` for each.

    A call that overruns raises `StoreError`; until it returns, every later call fails at once
    (a stuck Chroma call usually holds Chroma's locks, so the next would hang too). Calls made
    from inside a bounded call run directly (the outer deadline covers them).
    """

    def __init__(self, seconds: float | None, where: str):
        self.seconds = seconds
        self.where = where
        self.stuck: str | None = None  # the call that overran and has not returned yet
        self._mutex = threading.Lock()

    def call(self, what: str, fn, *args, **kwargs):
        if self.seconds is None or getattr(_inside_deadline, "on", False):
            return fn(*args, **kwargs)
        stuck = self.stuck
        if stuck is not None:
            raise StoreError(
                f"task store {self.where}: an earlier call ({stuck}) has not returned after its "
                f"{self.seconds:g} s deadline; Chroma is stuck: restart the process (if another "
                "process uses the same store folder, stop it: an embedded store is one process only)"
            )
        box: dict[str, Any] = {}
        done = threading.Event()

        def run():
            _inside_deadline.on = True
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc
            finally:
                with self._mutex:
                    done.set()
                    if self.stuck == what:
                        self.stuck = None

        _WORKERS.submit(run)
        done.wait(self.seconds)
        with self._mutex:
            overran = not done.is_set()
            if overran:
                self.stuck = what
        if overran:
            raise StoreError(
                f"task store {self.where}: {what} timed out after {self.seconds:g} s (Chroma did not "
                "answer); if another process uses the same store folder, stop it (an embedded store is "
                "one process only), otherwise raise call_timeout_s / $LORAUTER_STORE_TIMEOUT_S"
            )
        if "error" in box:
            raise box["error"]
        return box["value"]


class _WorkerPool:
    """Daemon threads that run bounded Chroma calls, reused (a fresh thread per call costs ~0.3 ms
    per call, measured); a thread stuck in a call simply never comes back, and the next call gets
    a new one. Daemon threads never keep the interpreter from exiting."""

    def __init__(self):
        self._idle: list[queue.SimpleQueue] = []
        self._guard = threading.Lock()

    def submit(self, job) -> None:
        with self._guard:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="lorauter-store-call", daemon=True).start()
        inbox.put(job)

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        while True:
            job = inbox.get()
            job()
            with self._guard:
                self._idle.append(inbox)


_WORKERS = _WorkerPool()
_BOUNDED_METHODS = frozenset({"get", "query", "count", "add", "upsert", "update", "delete", "modify", "peek"})


class _BoundedCollection:
    """A Chroma collection whose data calls run under a `_Deadline` (attributes pass through)."""

    def __init__(self, col, deadline: _Deadline):
        self._col = col
        self._deadline = deadline

    def __getattr__(self, name: str):
        attr = getattr(self._col, name)
        if name in _BOUNDED_METHODS and callable(attr):
            cname = getattr(self._col, "name", "?")

            def bounded(*args, **kwargs):
                return self._deadline.call(f"{cname}.{name}()", attr, *args, **kwargs)

            return bounded
        return attr


def _resolve_timeout(call_timeout_s: float | None | str) -> float | None:
    if call_timeout_s == "env":
        raw = os.environ.get("LORAUTER_STORE_TIMEOUT_S")
        if raw is None or raw.strip() == "":
            return DEFAULT_CALL_TIMEOUT_S
        if raw.strip().lower() in ("none", "off", "0"):
            return None
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(f"$LORAUTER_STORE_TIMEOUT_S={raw!r} is not a number of seconds") from None
        call_timeout_s = value
    if call_timeout_s is None:
        return None
    if isinstance(call_timeout_s, bool) or not isinstance(call_timeout_s, (int, float)) \
            or not np.isfinite(call_timeout_s) or call_timeout_s <= 0:
        raise InvalidInputError(f"call_timeout_s must be a positive number of seconds or None, not {call_timeout_s!r}")
    return float(call_timeout_s)


class _FolderLock:
    """An exclusive, process-wide lock on one store folder: ``flock`` on ``{folder}/lorauter.lock``,
    which holds the holder's pid. Shared (counted) by the `TaskStore` objects of one process; the
    OS drops it when the holder dies, so a stale file of a dead process is simply taken over."""

    _held: dict[str, "_FolderLock"] = {}
    _guard = threading.Lock()

    def __init__(self, key: str, fd: int, pid: int):
        self.key, self.fd, self.pid, self.count = key, fd, pid, 0

    @classmethod
    def acquire(cls, folder: Path, wait_s: float = 0.0) -> "_FolderLock":
        folder = Path(folder)
        key = str(folder.resolve())
        with cls._guard:
            held = cls._held.get(key)
            if held is not None and held.pid == os.getpid():
                held.count += 1
                return held
            lock_path = folder / LOCK_FILE
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot create the lock file {lock_path} of the task store: {exc}") from exc
            deadline = time.monotonic() + max(0.0, wait_s)
            while True:
                try:
                    _lock_fd(fd)
                    break
                except (BlockingIOError, PermissionError):
                    if time.monotonic() >= deadline:
                        holder = _read_pid(fd)
                        os.close(fd)
                        who = f"process {holder}" if holder else "another process"
                        raise StoreBusyError(
                            f"the task store {folder} is in use by {who} (lock file {lock_path}); an "
                            "embedded store is one process at a time: wait for it to finish or stop it"
                            f"{f' (kill {holder})' if holder else ''}, or share the store through a "
                            "Chroma server (`chroma run --path DIR`, then --server HOST:PORT)"
                        ) from None
                    time.sleep(0.05)
                except OSError as exc:
                    os.close(fd)
                    raise StoreError(f"cannot lock the task store {folder} ({lock_path}): {exc}") from exc
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass  # the OS lock is what counts; the pid is for the message
            lock = cls._held[key] = cls(key, fd, os.getpid())
            lock.count = 1
            return lock

    def release(self) -> None:
        with self._guard:
            self.count -= 1
            if self.count > 0 or self.pid != os.getpid():
                return
            if self._held.get(self.key) is self:
                del self._held[self.key]
            try:
                os.close(self.fd)  # drops the flock
            except OSError:
                pass


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from exc
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def _persist_folder(client: Any) -> Path | None:
    """The folder of an embedded (`PersistentClient`) client, None for a server or in-memory one."""
    settings = getattr(getattr(client, "_system", None), "settings", None)
    if settings is None or not getattr(settings, "is_persistent", False):
        return None
    folder = getattr(settings, "persist_directory", None)
    return Path(folder) if folder else None


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
        call_timeout_s: float | None | str = "env",
        lock_wait_s: float = 0.0,
    ):
        self._folder_lock: _FolderLock | None = None
        self._owned_client: Any = None  # a client this store made from `path`: closed by close()
        timeout = _resolve_timeout(call_timeout_s)
        if isinstance(lock_wait_s, bool) or not isinstance(lock_wait_s, (int, float)) or not lock_wait_s >= 0:
            raise InvalidInputError(f"lock_wait_s must be a number of seconds >= 0, not {lock_wait_s!r}")
        self.name = name
        if client is None:
            if path is None:
                raise InvalidInputError("give a store path (embedded Chroma) or a client")
            folder = Path(path)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the Chroma store at path {path}: {type(exc).__name__}: {exc}") from exc
            # Lock before Chroma opens the folder (opening may migrate or write it).
            self._folder_lock = _FolderLock.acquire(folder, lock_wait_s)
            self._folder, self._where = folder, f"'{name}' at {folder}"
            self._deadline = _Deadline(timeout, self._where)
            try:
                self.client = self._owned_client = self._deadline.call("opening the folder", make_client, folder)
            except BaseException:
                self.close()
                raise
        else:
            self.client = client
            self._folder = _persist_folder(client)
            if self._folder is not None:
                self._folder_lock = _FolderLock.acquire(self._folder, lock_wait_s)
                self._where = f"'{name}' at {self._folder}"
            else:
                self._where = f"'{name}' on {_client_address(client)}"
            self._deadline = _Deadline(timeout, self._where)
        try:
            self._open(encoder, representations, refresh_s)
        except BaseException:
            self.close()
            raise

    @_wrap_chroma("open the store")
    def _open(self, encoder, representations, refresh_s) -> None:
        name = self.name
        self.refresh_s = refresh_s
        self._lock = threading.RLock()
        self._examples = self._collection(f"{name}-examples")
        self._meta = self._collection(f"{name}-meta")
        enc_name, dim = self._check_metadata(self._examples.metadata)
        # The configured encoder (the default unless the caller gives one), never the stored name:
        # a store's metadata must not choose code or weights to load.
        if encoder is None:
            encoder = get_encoder(DEFAULT_ENCODER)
        elif isinstance(encoder, str):
            encoder = get_encoder(encoder)
        self.encoder: Encoder = encoder
        if enc_name is not None and (enc_name != encoder.name or dim != int(encoder.dim)):
            raise EncoderMismatchError(
                f"task store {self._where} was built with encoder {enc_name!r} (dim {dim}), but this "
                f"process is configured with {encoder.name!r} (dim {encoder.dim}); the store's record "
                "is never loaded by itself: if you trust that encoder, pass it "
                "(TaskStore(..., encoder=...)), or re-index into a new store"
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
        self._floor_cache: dict[str, Any] = {}

    def close(self) -> None:
        """Release the store: close the Chroma client it opened from ``path`` (its SQLite and index
        files; a client passed in stays open) and the folder's lock (another process may then
        open it). Idempotent; the store cannot be used afterwards."""
        client, self._owned_client = getattr(self, "_owned_client", None), None
        try:
            if client is not None and hasattr(client, "close"):
                client.close()
        finally:
            lock, self._folder_lock = getattr(self, "_folder_lock", None), None
            if lock is not None:
                lock.release()

    def __enter__(self) -> "TaskStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _check_metadata(self, recorded: Any) -> tuple[str | None, int | None]:
        """The recorded encoder name and dimension; typed errors for a malformed or newer store."""
        fix = "re-index into a new store (`lorauter index --store NEW_DIR`) or delete this one"
        if recorded is None:
            recorded = {}
        if not isinstance(recorded, dict):
            raise StoreError(f"task store {self._where}: its metadata is malformed ({recorded!r}); {fix}")
        schema = recorded.get("schema", 1)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise StoreError(f"task store {self._where}: its schema stamp {schema!r} is malformed "
                             f"(a positive integer is expected); {fix}")
        if schema > STORE_SCHEMA:
            raise StoreError(
                f"task store {self._where} was written by a newer version of lorauter-integrations "
                f"(store schema {schema}; this version reads schema {STORE_SCHEMA} and below): upgrade "
                "(pip install -U lorauter-integrations) or use another store"
            )
        enc_name, dim = recorded.get("encoder"), recorded.get("dim")
        if enc_name is None and dim is None:
            return None, None
        if not isinstance(enc_name, str) or not enc_name.strip():
            raise StoreError(f"task store {self._where}: its recorded encoder {enc_name!r} is malformed "
                             f"(a name is expected); {fix}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise StoreError(f"task store {self._where}: its recorded encoder dimension {dim!r} is malformed "
                             f"(a positive integer is expected); {fix}")
        return enc_name, dim

    # -- collections ------------------------------------------------------------------------
    @_wrap_chroma("open a collection")
    def _collection(self, cname: str, hnsw: dict[str, int] | None = None):
        hnsw = dict(hnsw or {})
        col = self._deadline.call(
            f"get_or_create_collection({cname})", self.client.get_or_create_collection,
            cname, embedding_function=None, configuration={"hnsw": {"space": "cosine", **hnsw}},
        )
        col = _BoundedCollection(col, self._deadline)
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
            self._examples.modify(metadata={"encoder": self.encoder.name, "dim": int(self.encoder.dim),
                                            "schema": STORE_SCHEMA})

    @_wrap_chroma("read the representation state")
    def _load_states(self) -> None:
        ids = [_STATE_PREFIX + rep for rep in self.representations]
        got = self._meta.get(ids=ids, include=["documents"])
        for rid, doc in zip(got["ids"], got["documents"] or []):
            if not doc:
                continue
            rep = rid[len(_STATE_PREFIX):]
            try:
                self.representations[rep] = representation_from_state(_decode_state(doc))
            except StoreError as exc:
                raise StoreError(f"task store {self._where}: {exc}") from exc
            except Exception as exc:  # a state missing a field, of the wrong type...
                raise StoreError(
                    f"task store {self._where}: the fitted state of representation '{rep}' is malformed "
                    f"({type(exc).__name__}: {exc}); re-index into a new store (`lorauter index --store "
                    "NEW_DIR`) or delete this one"
                ) from exc

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
        self._floor_cache = {}
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
                for rid, md in zip(got["ids"], got["metadatas"] or []):
                    try:
                        rec = TaskRecord.model_validate({k: v for k, v in (md or {}).items() if k != "kind"})
                    except Exception as exc:
                        raise StoreError(
                            f"task store {self._where}: the registry record {rid!r} is malformed "
                            f"({exc.__class__.__name__}: {str(exc).splitlines()[0]}); re-index into a new "
                            "store (`lorauter index --store NEW_DIR`) or delete this one"
                        ) from exc
                    recs[rec.task] = rec
                self._registry_cache = recs
            return self._registry_cache

    def refresh(self) -> None:
        """Forget cached registry and state (another process may have changed a shared store)."""
        with self._lock:
            self._registry_cache = None
            self._floor_cache = {}
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

    # -- the calibrated similarity floor ----------------------------------------------------
    def tasks_fingerprint(self) -> str:
        """A hash of the registry (every task's id, content hash and size): what a calibrated floor
        depends on. A floor recorded for other tasks is stale and not used."""
        h = hashlib.sha256()
        for r in self.tasks():
            h.update(json.dumps([r.task, r.content_hash, r.size]).encode())
        return h.hexdigest()[:16]

    @_wrap_chroma("record the similarity floor")
    def record_floor(self, calibration: Any) -> None:
        """Record a calibrated similarity floor (`floor.FloorCalibration`) for its
        representation; ``LoRAuterRouter(floor="auto")`` routes with it. Recording is what
        `floor.calibrate_floor(store, record=True)` and `index` do."""
        from .floor import FloorCalibration

        if not isinstance(calibration, FloorCalibration):
            raise InvalidInputError(f"record_floor takes a FloorCalibration, got {type(calibration).__name__}")
        self._rep(calibration.representation)
        with self._lock:
            if not calibration.tasks_fingerprint:
                calibration = calibration.model_copy(update={"tasks_fingerprint": self.tasks_fingerprint()})
            self._meta.upsert(ids=[_FLOOR_PREFIX + calibration.representation],
                              embeddings=np.ones((1, 1), dtype=np.float32),
                              documents=[calibration.model_dump_json()],
                              metadatas=[{"kind": "floor", "representation": calibration.representation}])
            self._bump_version()

    def recorded_floor(self, rep: str = "hybrid") -> Any:
        """The similarity floor calibrated for representation ``rep`` (a `FloorCalibration`), or None
        when none is recorded or the one recorded was calibrated on other tasks (the store changed
        since). A malformed record is a `StoreError`."""
        self._maybe_refresh()
        self._rep(rep)
        with self._lock:
            if rep not in self._floor_cache:
                self._floor_cache[rep] = self._read_floor(rep)
            return self._floor_cache[rep]

    @_wrap_chroma("read the similarity floor")
    def _read_floor(self, rep: str) -> Any:
        from .floor import FloorCalibration

        got = self._meta.get(ids=[_FLOOR_PREFIX + rep], include=["documents"])
        if not got["ids"]:
            return None
        doc = (got["documents"] or [None])[0]
        try:
            cal = FloorCalibration.model_validate_json(doc or "")
            if cal.representation != rep:
                raise ValueError(f"it is recorded for representation {cal.representation!r}")
        except Exception as exc:
            raise StoreError(
                f"task store {self._where}: the recorded similarity floor of representation '{rep}' is malformed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); recalibrate it (`lorauter calibrate-floor "
                "--store DIR`) or route with an explicit floor"
            ) from exc
        return cal if cal.tasks_fingerprint == self.tasks_fingerprint() else None

    def _forget_floors(self) -> None:
        """Drop every recorded floor (before a write run changes the tasks they were calibrated on)."""
        self._meta.delete(ids=[_FLOOR_PREFIX + rep for rep in self.representations])
        self._floor_cache = {}

    def calibrate_floors(self, progress: bool = False) -> dict[str, Any]:
        """Calibrate and record the similarity floor of every representation (`floor`, default
        settings) when the store has two tasks or more and every task has enough examples for the
        cross-validation (5); otherwise, or for a representation a fold cannot be fitted for, none is
        recorded. `index` and `remove` call it after changing the tasks. Returns what was recorded."""
        from .floor import DEFAULT_FOLDS, calibrate_floor, too_few_examples

        done: dict[str, Any] = {}
        rows = self.example_rows()
        if not rows[2] or len(set(rows[2])) < 2 or too_few_examples(rows[2], DEFAULT_FOLDS):
            return done
        # ~3-20 s for 960 examples (hybrid; most of it is fitting the representation once per fold)
        with tqdm(total=DEFAULT_FOLDS * len(self.representations), desc="calibrating the similarity floor",
                  unit="fold", disable=not progress) as bar:
            for rep in list(self.representations):
                try:
                    done[rep] = calibrate_floor(self, rep, rows=rows, record=True, on_fold=lambda: bar.update(1))
                except InvalidInputError:
                    continue
        return done

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
            if not isinstance(ts, TaskSet):
                raise InvalidInputError(f"index() takes TaskSets (see load_tasks), got {type(ts).__name__}")
            if ts.task in seen:
                raise InvalidInputError(f"task '{ts.task}' is given twice; merge its examples into one task")
            seen.add(ts.task)
            if not ts.examples:
                raise InvalidInputError(f"task '{ts.task}' has no examples")
            # Everything is checked before the first write: a refused index leaves the store as it was.
            for what, text in [("task id", ts.task), ("domain", ts.domain or ""), ("metric", ts.metric),
                               *(("an input", t) for t in ts.inputs)]:
                if not isinstance(text, str):
                    raise InvalidInputError(f"task {ts.task!r}: {what} is not a string")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidInputError(
                        f"task {ts.task!r}: {what} holds a lone surrogate at position {exc.start}, which is not "
                        "valid Unicode text; it is refused (nothing was written): fix its source"
                    ) from None
        report = IndexReport()
        with self._lock:
            self._registry_cache = None
            registry = self._registry()
            # tasks an interrupted run may have left half-written; `running`: a run did not finish
            journalled, running, last_run = self._read_journal()
            # a record written by the interrupted run itself was written after all its data
            pending = set(journalled) - self._completed_by(last_run, journalled)
            given = {ts.task for ts in tasks}
            todo = []
            for ts in tasks:
                h = _content_hash(ts)
                old = registry.get(ts.task)
                if old is not None and old.content_hash == h and ts.task not in pending:
                    report.unchanged.append(ts.task)
                else:
                    todo.append((ts, h))
                    (report.updated if old is not None else report.added).append(ts.task)
                    if ts.task in pending:
                        report.repaired.append(ts.task)
            # journalled tasks that never completed and are not given again: drop their examples
            orphans = sorted(t for t in pending if t not in registry and t not in given)
            # journalled tasks that did complete once but are not given: may stay half-updated until
            # a file that holds them is indexed again, so they stay in the journal
            still_dirty = sorted(t for t in pending if t in registry and t not in given)
            if not todo and not orphans and not running:
                if self._representations_outdated():
                    fitted = self._fit_without(())
                    self._forget_floors()
                    self._write_journal(sorted(pending))  # a killed rebuild is redone by the next run
                    self._write_fit(fitted)
                    self._clear_journal(still_dirty)
                    report.refitted = True
                    self.calibrate_floors(progress)
                return report
            # Encode and fit before the first write: what cannot be encoded or fitted is refused
            # with the store unchanged.
            rows: dict[str, tuple[list[str], np.ndarray, dict]] = {}
            for ts, _ in tqdm(todo, desc="encoding tasks", unit="task", disable=not progress):
                dense = np.asarray(self.encode(ts.inputs), dtype=np.float32)
                if dense.shape != (len(ts.inputs), int(self.encoder.dim)) or not np.isfinite(dense).all():
                    raise InvalidInputError(f"task {ts.task!r}: the encoder returned {dense.shape} vectors "
                                            "(or non-finite values); nothing was written")
                rows[ts.task] = ([f"{ts.task}/{i:05d}" for i in range(len(ts.examples))], dense,
                                 {"task": ts.task, "domain": ts.domain or ""})
            fitted = self._fit_without(
                set(rows) | set(orphans),
                [(i, v, d, md) for ts, _ in todo for i, v, d, md in zip(
                    rows[ts.task][0], rows[ts.task][1], ts.inputs, [rows[ts.task][2]] * len(ts.inputs))],
            )
            self._forget_floors()  # calibrated on the tasks this run changes
            self._stamp_encoder()
            run = uuid.uuid4().hex
            self._write_journal(sorted(pending | {ts.task for ts, _ in todo}), run=run)
            for t in orphans:
                self._examples.delete(where={"task": t})
            report.dropped = orphans
            bar = tqdm(todo, desc="indexing tasks", unit="task", disable=not progress)
            for ts, _ in bar:
                bar.set_postfix_str(ts.task)
                ids, dense, md = rows[ts.task]
                self._examples.delete(where={"task": ts.task})
                for s in range(0, len(ids), _BATCH):
                    self._examples.upsert(ids=ids[s:s + _BATCH], embeddings=dense[s:s + _BATCH],
                                          documents=ts.inputs[s:s + _BATCH], metadatas=[md] * len(ids[s:s + _BATCH]))
            self._write_fit(fitted)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            recs = [TaskRecord(task=ts.task, domain=ts.domain, metric=ts.metric, size=len(ts.examples),
                               created_at=now, content_hash=h) for ts, h in todo]
            if recs:
                self._write_registry(recs, run=run)
            self._clear_journal(still_dirty)
            self.calibrate_floors(progress)
        return report

    # -- the journal of write runs ------------------------------------------------------------
    def _read_journal(self) -> tuple[list[str], bool, str | None]:
        """The tasks write runs recorded before changing them and not yet rewrote, whether the last
        run was interrupted, and its id (([], False, None): nothing pending)."""
        got = self._meta.get(ids=[_JOURNAL_ID], include=["documents"])
        if not got["ids"]:
            return [], False, None
        doc = (got["documents"] or [None])[0]
        try:
            record = json.loads(doc or "")
            tasks, running, run = record["tasks"], record.get("running", True), record.get("run")
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise ValueError("'tasks' is not a list of task ids")
            if not isinstance(running, bool):
                raise ValueError("'running' is not a boolean")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"task store {self._where}: the journal of an interrupted write is malformed ({exc}); "
                "re-index into a new store (`lorauter index --store NEW_DIR`) or delete this one"
            ) from exc
        return tasks, running, run if isinstance(run, str) else None

    def _write_journal(self, tasks: list[str], running: bool = True, run: str | None = None) -> None:
        self._meta.upsert(ids=[_JOURNAL_ID], embeddings=np.ones((1, 1), dtype=np.float32),
                          documents=[json.dumps({"tasks": tasks, "running": running, "run": run,
                                                 "pid": os.getpid(),
                                                 "at": datetime.now(timezone.utc).isoformat()})],
                          metadatas=[{"kind": "journal"}])

    def _completed_by(self, run: str | None, tasks: Collection[str]) -> set[str]:
        """Those of ``tasks`` whose registry record the write run ``run`` wrote (after their data)."""
        if not run or not tasks:
            return set()
        got = self._meta.get(ids=[_TASK_PREFIX + t for t in tasks], include=["metadatas"])
        return {rid[len(_TASK_PREFIX):] for rid, md in zip(got["ids"], got["metadatas"] or [])
                if (md or {}).get("run") == run}

    def _clear_journal(self, keep: list[str]) -> None:
        """End a write run; ``keep``: tasks still half-written (rewritten when next given)."""
        if keep:
            self._write_journal(keep, running=False)
        else:
            self._meta.delete(ids=[_JOURNAL_ID])

    def _write_registry(self, recs: list[TaskRecord], run: str | None = None) -> None:
        stamp = {"run": run} if run else {}
        for s in range(0, len(recs), _BATCH):
            chunk = recs[s:s + _BATCH]
            self._meta.upsert(
                ids=[_TASK_PREFIX + r.task for r in chunk],
                embeddings=np.ones((len(chunk), 1), dtype=np.float32),
                metadatas=[{"kind": "task", **r.model_dump(exclude_none=True), **stamp} for r in chunk],
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
        self._write_fit(self._fit_rows(got["ids"], got["embeddings"], got["documents"], got["metadatas"]))

    def _fit_representation(self, rep_name: str, texts: list[str], dense: np.ndarray, task_of: list[str],
                            domains: list[str | None], rep: TaskRepresentation | None = None,
                            ) -> tuple[TaskRepresentation, np.ndarray]:
        """A new ``rep_name`` representation (this version's recipe: a state loaded from the store may
        be an older one; or ``rep``, made by ``make_representation(rep_name)``) fitted on these examples,
        and their feature rows; degenerate data that cannot be fitted is an `InvalidInputError`."""
        rep = rep if rep is not None else make_representation(rep_name)
        try:
            rep.fit(texts, dense, task_of, domains)
            feats = rep.featurize(texts, dense)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # scipy: NaN/inf, singular
            raise InvalidInputError(
                f"task store {self._where}: the '{rep_name}' task representation cannot be fitted on these "
                f"examples ({type(exc).__name__}: {exc}); nothing was written. This happens with degenerate "
                "data (e.g. every task has a single example, or all inputs are identical): give the tasks "
                "several varied examples"
            ) from exc
        return rep, feats

    @_wrap_chroma("read examples")
    def example_rows(self) -> tuple[list[str], np.ndarray, list[str], list[str | None]]:
        """Every indexed example as (texts, dense vectors, task ids, domains), sorted by record id, so
        each task's examples come in indexing order (what the representations are fitted on)."""
        got = self._examples.get(include=["embeddings", "metadatas", "documents"])
        if not got["ids"]:
            return [], np.zeros((0, int(self.encoder.dim)), dtype=np.float32), [], []
        return _sorted_rows(got["ids"], got["embeddings"], got["documents"], got["metadatas"])

    def _fit_rows(self, ids, embeddings, documents, metadatas) -> list[tuple] | None:
        """Fit every representation on these example rows and compute all task vectors, in memory
        (nothing is written: a write run fits first, so data that cannot be fitted is refused before
        the store changes). None when there are no examples."""
        if not len(ids):
            return None
        texts, dense, task_of, domains = _sorted_rows(ids, embeddings, documents, metadatas)
        domain_of = dict(zip(task_of, domains))
        idx_by_task: dict[str, list[int]] = {}
        for i, t in enumerate(task_of):
            idx_by_task.setdefault(t, []).append(i)
        fitted = []
        for rep_name in list(self.representations):
            rep, feats = self._fit_representation(rep_name, texts, dense, task_of, domains)
            vec_ids, vecs, metas = [], [], []
            for t, idx in idx_by_task.items():
                protos = rep.task_vectors(feats[idx])
                for j, v in enumerate(protos):
                    vec_ids.append(f"{t}/{j}")
                    vecs.append(v)
                    metas.append({"task": t, "domain": domain_of[t] or "", "prototype": j})
            if hasattr(rep, "release_fit_data"):
                rep.release_fit_data()  # the next rebuild refits anyway
            vecs_arr = np.asarray(vecs, dtype=np.float32)
            if not np.isfinite(vecs_arr).all():
                bad = sorted({m["task"] for m, v in zip(metas, vecs_arr) if not np.isfinite(v).all()})
                raise InvalidInputError(
                    f"the '{rep_name}' task vectors of {bad[:5]} come out non-finite (degenerate examples, "
                    "e.g. identical inputs whose spread is zero); nothing was written: give those tasks "
                    "varied examples"
                )
            fitted.append((rep_name, rep, vec_ids, vecs_arr, metas))
        return fitted

    def _write_fit(self, fitted: list[tuple] | None) -> None:
        """Write what `_fit_rows` computed: every task vector and each representation's state."""
        if fitted is None:
            for col in self._task_cols.values():
                if col.count():
                    col.delete(ids=col.get(include=[])["ids"])
            self._bump_version()
            return
        for rep_name, rep, ids, vecs_arr, metas in fitted:
            self.representations[rep_name] = rep
            col = self._task_cols[rep_name]
            existing = set(col.get(include=[])["ids"])
            stale = sorted(existing - set(ids))
            if stale:
                col.delete(ids=stale)
            for s in range(0, len(ids), _BATCH):
                col.upsert(ids=ids[s:s + _BATCH], embeddings=vecs_arr[s:s + _BATCH], metadatas=metas[s:s + _BATCH])
            self._meta.upsert(ids=[_STATE_PREFIX + rep_name], embeddings=np.ones((1, 1), dtype=np.float32),
                              documents=[_encode_state(rep.state_dict())], metadatas=[{"kind": "state"}])
        self._bump_version()

    def _fit_without(self, drop: Collection[str], add: list[tuple[str, np.ndarray, list[str], dict]] = ()):
        """`_fit_rows` on the stored examples minus the tasks ``drop``, plus rows ``add``
        (id, vector, document, metadata): the fit a write run will leave, before it writes."""
        got = self._examples.get(include=["embeddings", "metadatas", "documents"])
        rows = [(i, e, d, m) for i, e, d, m in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"])
                if m["task"] not in drop]
        rows += list(add)
        if not rows:
            return None
        ids, embs, docs, mds = zip(*rows)
        return self._fit_rows(list(ids), np.asarray([np.asarray(e, dtype=np.float32) for e in embs]), list(docs),
                              list(mds))

    @_wrap_chroma("remove a task")
    def remove(self, task: str) -> None:
        """Remove a task (registry first, so a killed removal never leaves a half-routable task)."""
        with self._lock:
            self.task(task)  # raises UnknownTaskError
            pending, _, _ = self._read_journal()
            fitted = self._fit_without({task})  # before writing: a refused removal changes nothing
            self._forget_floors()
            self._write_journal(sorted({*pending, task}))  # a killed removal is finished by the next index
            self._meta.delete(ids=[_TASK_PREFIX + task])
            self._registry_cache = None
            self._examples.delete(where={"task": task})
            self._write_fit(fitted)
            self._clear_journal([t for t in pending if t != task])
            self.calibrate_floors()

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
