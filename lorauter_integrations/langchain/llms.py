"""`LoRAuterLLM`: the completion-style twin of `ChatLoRAuter` (text in, text out)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.language_models.llms import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from ._params import RoutedModelParams
from .overrides import METADATA_KEY, override_from_metadata, resolve_route
from .streaming import iterate_in_thread


_OVERRIDES_KW = "lorauter_overrides"


class LoRAuterLLM(RoutedModelParams, LLM):
    """Completion model over a `RoutedModel`: each prompt is routed on its text, then generated.

    Each generation's route is in ``generation_info["lorauter"]``; ``llm_output["lorauter"]``
    holds the route (one prompt) or the list of routes (several). ``batch``/``abatch`` and
    ``generate`` over many prompts make ONE engine call. Per-call overrides come from
    ``config={"metadata": {"lorauter": {...}}}`` (see `RoutingOverride`); in ``batch``/``abatch``
    with a list of configs each prompt gets its own config's override.

    Example:
        .. code-block:: python

            llm = LoRAuterLLM(engine=RoutedModel.demo(), max_tokens=16)
            llm.invoke("Is this review positive or negative? 'A joyless, plodding film.'")

    The engine applies the model's chat template to a plain prompt by default (instruct models
    answer far better); build the engine with ``chat_template=False`` for raw completion.
    """

    @property
    def _llm_type(self) -> str:
        return "lorauter"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._params_identity()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "lorauter"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        return params

    def _routes(self, prompts: list[str], run_manager, per_prompt: list[tuple[str, Any]] | None = None) -> list:
        """One route per prompt: its own override (``batch``) or the run's, else the router.

        ``per_prompt`` pairs each batch input's text with its override. They are matched by text,
        in order, because LangChain may pass only some of the batch (an LLM cache's misses).
        """
        run_override = override_from_metadata(run_manager.metadata if run_manager is not None else None)
        if per_prompt is None:
            overrides = [run_override] * len(prompts)
        else:
            queued: dict[str, deque] = {}
            for text, value in per_prompt:
                queued.setdefault(text, deque()).append(value)
            overrides = [override_from_metadata({METADATA_KEY: queued[p].popleft()}) if queued.get(p) else None
                         for p in prompts]
        return [resolve_route(self.engine, p, o, strategy=self.strategy) for p, o in zip(prompts, overrides)]

    # LangChain's BaseLLM.batch hands `_generate` only the FIRST run's manager (and metadata), so
    # the per-input overrides travel as a keyword argument, which `generate` forwards to `_generate`.
    # An LLM cache keys answers by prompt and model settings, not by these overrides.
    def _with_overrides(self, inputs: list[Any], config, kwargs: dict[str, Any]) -> dict[str, Any]:
        configs = get_config_list(config, len(inputs))
        values = [(c.get("metadata") or {}).get(METADATA_KEY) for c in configs]
        kwargs = {k: v for k, v in kwargs.items() if k != _OVERRIDES_KW}
        if any(v is not None for v in values):
            texts = [self._convert_input(i).to_string() for i in inputs]
            kwargs[_OVERRIDES_KW] = list(zip(texts, values))
        return kwargs

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Many prompts in one engine call; each routed with its own config's override."""
        kwargs = self._with_overrides(inputs, config, kwargs)
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Async `batch`: one engine call in a worker thread; per-prompt overrides."""
        kwargs = self._with_overrides(inputs, config, kwargs)
        return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        routes = self._routes(prompts, run_manager, kwargs.pop(_OVERRIDES_KW, None))
        results = self.engine.generate(prompts, routes, **self._generation_kwargs(stop, kwargs))
        generations = [
            [Generation(text=r.text, generation_info={
                METADATA_KEY: r.route.model_dump(),
                "finish_reason": r.finish_reason,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
            })]
            for r in results
        ]
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(r.completion_tokens for r in results)
        dumped = [r.route.model_dump() for r in results]
        return LLMResult(
            generations=generations,
            llm_output={
                METADATA_KEY: dumped[0] if len(dumped) == 1 else dumped,
                "model_name": self.model_name,
                "token_usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # One engine call for all prompts, in a worker thread (LLM's default awaits them one by one).
        return await run_in_executor(
            None, self._generate, prompts, stop, run_manager.get_sync() if run_manager else None, **kwargs
        )

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        [route] = self._routes([prompt], run_manager)
        first = True
        for piece in self.engine.stream(prompt, route, **self._generation_kwargs(stop, kwargs)):
            if not piece.text and piece.finish_reason is None:
                continue
            info: dict[str, Any] = {}
            if first:  # the route is decided before the first token
                info[METADATA_KEY] = route.model_dump()
                first = False
            if piece.finish_reason is not None:
                info.update(finish_reason=piece.finish_reason, prompt_tokens=piece.prompt_tokens,
                            completion_tokens=piece.completion_tokens, model_name=self.model_name)
            chunk = GenerationChunk(text=piece.text, generation_info=info or None)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        sync_manager = run_manager.get_sync() if run_manager else None
        async for chunk in iterate_in_thread(lambda: self._stream(prompt, stop, sync_manager, **kwargs)):
            yield chunk
