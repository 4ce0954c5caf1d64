"""`LoRAuterLLM`: the completion-style twin of `ChatLoRAuter` (text in, text out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.language_models.llms import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig

from ..calls import METADATA_KEY, CallPlan, plan_call
from ._params import RoutedModelParams


class LoRAuterLLM(RoutedModelParams, LLM):
    """Completion model over an `Engine`: each prompt is routed on its text, then generated.

    Each generation's route is in ``generation_info["lorauter"]``; ``llm_output["lorauter"]``
    holds the route (one prompt) or the list of routes (several). ``batch``/``abatch`` run the
    inputs concurrently in the engine's running batch, each with its own config's override
    (``config={"metadata": {"lorauter": {...}}}``, see `RoutingOverride`).

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

    # Overrides in a config travel as a keyword too, so that the LLM cache keys answers by route.
    def invoke(self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
               **kwargs: Any) -> str:
        with self._call_scope(config, kwargs) as kwargs:
            return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
                      **kwargs: Any) -> str:
        with self._call_scope(config, kwargs) as kwargs:
            return await super().ainvoke(input, config, stop=stop, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
               **kwargs: Any) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **self._with_override(config, kwargs))

    def astream(self, input: Any, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
                **kwargs: Any) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **self._with_override(config, kwargs))

    # LangChain's BaseLLM.batch makes one `generate` call that sees only the first input's run
    # (and so its override); each input is its own call here, run concurrently, which the
    # engine's decode loop batches anyway.
    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[str]:
        """Many prompts at once, each routed with its own config's override; a failing prompt
        fails alone with ``return_exceptions=True``."""
        return Runnable.batch(self, inputs, self._concurrent(config, len(inputs)),
                              return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[str]:
        """Async `batch`."""
        return await Runnable.abatch(self, inputs, self._concurrent(config, len(inputs)),
                                     return_exceptions=return_exceptions, **kwargs)

    def _plans(self, prompts: list[str], stop, run_manager, kwargs: dict[str, Any]) -> list[CallPlan]:
        options = self._options(stop, kwargs)
        override = self._override(run_manager, kwargs)
        return [plan_call(self.engine, p, options=options, override=override, strategy=self.strategy) for p in prompts]

    def _result(self, results) -> LLMResult:
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
        return LLMResult(generations=generations, llm_output={
            METADATA_KEY: dumped[0] if len(dumped) == 1 else dumped,
            "model_name": self.model_name,
            "token_usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens},
        })

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        plans = self._plans(prompts, stop, run_manager, kwargs)
        return self._result(self.engine.generate([p.prompt for p in plans], [p.route for p in plans],
                                                 **plans[0].options))

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        plans = await asyncio.to_thread(self._plans, prompts, stop, run_manager, kwargs)
        return self._result(await self.engine.agenerate([p.prompt for p in plans], [p.route for p in plans],
                                                        **plans[0].options))

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _chunk(self, piece, first: bool) -> GenerationChunk | None:
        if not piece.text and piece.finish_reason is None:
            return None
        info: dict[str, Any] = {}
        if first:  # the route is decided before the first token
            info[METADATA_KEY] = piece.route.model_dump()
        if piece.finish_reason is not None:
            info.update(finish_reason=piece.finish_reason, prompt_tokens=piece.prompt_tokens,
                        completion_tokens=piece.completion_tokens, model_name=self.model_name)
        return GenerationChunk(text=piece.text, generation_info=info or None)

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        [plan] = self._plans([prompt], stop, run_manager, kwargs)
        first = True
        for piece in self.engine.stream(plan.prompt, plan.route, **plan.options):
            chunk = self._chunk(piece, first)
            if chunk is not None:
                first = False
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        [plan] = await asyncio.to_thread(self._plans, [prompt], stop, run_manager, kwargs)
        first = True
        async for piece in self.engine.astream(plan.prompt, plan.route, **plan.options):
            chunk = self._chunk(piece, first)
            if chunk is not None:
                first = False
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
