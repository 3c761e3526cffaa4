"""vLLM scoring backend: exact completion log-probabilities at about the cost of one prefill.

How a request (one prompt, K completions) is scored with the `shared` strategy:

1. One prefill of the prompt with ``logprob_token_ids`` = every completion's first token: the
   first-token log-probs of all completions at once. It also puts the prompt in the prefix cache.
2. Completions longer than one token: one ``prompt_logprobs`` request per leaf of the
   completions' token trie (a completion that is a prefix of another rides along with it), reading
   the prompt from the prefix cache so only the uncached tail is computed. Entries for cached
   positions are garbage, so only positions the engine computed are read.
3. A token whose position the engine did not compute (its prefix was cached beyond the prompt by
   a sibling completion) is scored by a next-token request on its own prefix; rare.

The `per_candidate` strategy (one ``prompt_logprobs`` request per completion, re-reading the
prompt every time) is the fallback and the benchmark's baseline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from labelq.backends import reaper
from labelq.backends.base import ScoreRequest
from labelq.backends.precision import engine_dtype
from labelq.errors import EngineStopped, LabelqError
from labelq.settings import Settings

log = logging.getLogger(__name__)

# vLLM accepts at most this many ids in `logprob_token_ids` (MAX_LOGPROB_TOKEN_IDS).
_MAX_IDS_PER_REQUEST = 128

# One engine starts at a time in a process: an engine's processes are found as the children
# that appeared while it started, so two starts at once would each take the other's too (and
# a kill of one would kill the other mid-start, which then waits for its engine forever).
_STARTING = threading.Lock()

# A path in the completions' token trie: the tokens after the prompt, so far.
TriePath = tuple[int, ...]


class VllmBackend:
    """One vLLM engine, created on first use; holds nothing else between calls."""

    def __init__(
        self,
        model: str,
        settings: Settings,
        strategy: Literal["shared", "per_candidate"] | None = None,
    ):
        self.model = model
        self.settings = settings
        self.strategy = strategy or self.settings.scoring_strategy
        self._llm: Any = None
        self._tokenizer: Any = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._engine_pids: list[int] = []
        self._stopped = False
        self._fingerprint: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        if self._llm is None:
            with _STARTING:
                if self._llm is None:
                    self._start()
        return self._llm

    @property
    def fingerprint(self) -> str | None:
        """This engine's identity (`labelq.backends.identity`); None before it started."""
        if self._fingerprint is None and self._llm is not None:  # an engine handed in
            self._fingerprint = self._identify()
        return self._fingerprint

    def _identify(self) -> str:
        import vllm

        from labelq import __version__
        from labelq.backends.identity import describe, fingerprint

        config = self._llm.llm_engine.model_config
        return fingerprint(
            describe(
                self.model,
                dtype=str(config.dtype).removeprefix("torch."),
                max_model_len=config.max_model_len,
                engine=f"vllm {vllm.__version__}",
                labelq=__version__,
                strategy=self.strategy,
            )
        )

    @property
    def stopped(self) -> bool:
        """Killed, or closed for good (`close(final=True)`): it raises EngineStopped rather
        than start again."""
        return self._stopped

    def _start(self) -> None:
        if self._stopped:
            raise EngineStopped(f"the engine of {self.model} was stopped: it does not restart")
        s = self.settings
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.kv_cache_gib))
        if s.in_process_engine:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self._check_path()
        dtype, why = engine_dtype(s.dtype, self.model)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "dtype": dtype,
            "enforce_eager": s.enforce_eager,
            "gpu_memory_utilization": s.memory_fraction,
            "enable_prefix_caching": True,
            "seed": s.seed,
            "use_tqdm_on_load": False,  # a progress bar of one shard: labelq logs the load
        }
        if s.max_model_len:
            kwargs["max_model_len"] = s.max_model_len
        if s.block_size:
            kwargs["block_size"] = s.block_size
        started = time.monotonic()
        before = reaper.children_now()
        self._llm = LLM(**kwargs)
        # If this process dies without close() (SIGKILL, OOM), the engine processes die too.
        self._engine_pids = reaper.new_children(before)
        self._reaper = reaper.watch(self._engine_pids)
        self._fingerprint = self._identify()
        loaded = time.monotonic() - started
        warm = self._warm_up()
        log.info(
            "loaded model %s in %s (%s) in %.1f s, warmed up in %.1f s, engine fingerprint %s",
            self.model,
            self._llm.llm_engine.model_config.dtype,
            why,
            loaded,
            warm,
            self._fingerprint,
        )

    def _warm_up(self) -> float:
        """One small scoring request through the path jobs take, at load: the first call on a
        fresh engine pays for its lazy set-up (3.0 s against 0.05 s for the next, 6 items on
        a 2-layer model, measured here), which would otherwise fall on the first job. Its
        seconds."""
        started = time.monotonic()
        ids = list(self.tokenizer.encode("labelq warm-up", add_special_tokens=False)) or [0]
        self.token_logprobs([ScoreRequest(ids, [[ids[-1]], [ids[0], ids[-1]]])])
        return time.monotonic() - started

    def load(self) -> None:
        """Start the engine now rather than on first use."""
        self.llm  # noqa: B018 - the property starts it

    def close(self, *, final: bool = False) -> None:
        """Stop the engine's processes; a process that built an engine should call this. With
        `final` it never starts again (its owner dropped it): see `stopped`."""
        self._stopped = self._stopped or final
        if self._llm is not None:
            try:
                self._llm.llm_engine.engine_core.shutdown()
            finally:
                self._llm = None
                if self._reaper is not None:
                    self._reaper.kill()
                    self._reaper.wait(timeout=5)
                    self._reaper = None

    def kill(self) -> None:
        """Kill the engine's processes outright (SIGKILL: it reaches a stopped or wedged
        process too) and forget the engine, without asking it to shut down: it does not
        answer. It never starts again (a call still running on it fails with EngineStopped);
        its owner makes a new one."""
        self._stopped = True
        reaper.kill_tree(self._engine_pids)
        self._engine_pids = []
        self._llm = None
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait(timeout=5)
            self._reaper = None

    def _check_path(self) -> None:
        looks_local = self.model.startswith((os.sep, ".", "~"))
        if looks_local and not Path(self.model).expanduser().exists():
            raise LabelqError(
                f"model path {self.model} does not exist: set LABELQ_MODEL, the spec's "
                "`model` or --model to a model folder or hub id",
                field="model",
            )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._check_path()
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    # -- scoring -----------------------------------------------------------------------------
    def token_logprobs(self, requests: Sequence[ScoreRequest]) -> list[list[list[float]]]:
        if self.strategy == "per_candidate":
            return self._per_candidate(requests)
        return self._shared(requests)

    def _generate(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        return list(
            self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )
        )

    def _next_token_params(self, token_ids: list[int]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(max_tokens=1, logprob_token_ids=token_ids, detokenize=False)

    def _prompt_logprob_params(self, read_prefix_cache: bool) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            skip_reading_prefix_cache=not read_prefix_cache,
            detokenize=False,
        )

    def _next_token_logprobs(
        self, wanted: dict[tuple[int, TriePath], set[int]], prompts: Sequence[list[int]]
    ) -> dict[tuple[int, TriePath], dict[int, float]]:
        """log P(token | prompt + path) for each wanted (request index, path) -> tokens, one
        prefill per prefix (more if it wants over 128 tokens)."""
        keys, token_lists = [], []
        for key, tokens in wanted.items():
            ordered = sorted(tokens)
            for start in range(0, len(ordered), _MAX_IDS_PER_REQUEST):
                keys.append(key)
                token_lists.append(ordered[start : start + _MAX_IDS_PER_REQUEST])
        outputs = self._generate(
            [prompts[r] + list(path) for r, path in keys],
            [self._next_token_params(ids) for ids in token_lists],
        )
        found: dict[tuple[int, TriePath], dict[int, float]] = defaultdict(dict)
        for key, ids, output in zip(keys, token_lists, outputs, strict=True):
            logprobs = output.outputs[0].logprobs[0]
            for token in ids:
                found[key][token] = float(logprobs[token].logprob)
        return found

    def _shared(self, requests: Sequence[ScoreRequest]) -> list[list[list[float]]]:
        prompts = [r.prompt for r in requests]
        # values[(r, path)] = log P(path[-1] | prompt_r + path[:-1])
        values: dict[tuple[int, TriePath], float] = {}

        # 1. First tokens: one prefill per prompt.
        first = self._next_token_logprobs(
            {(r, ()): {c[0] for c in req.completions} for r, req in enumerate(requests)}, prompts
        )
        for (r, _), by_token in first.items():
            for token, value in by_token.items():
                values[(r, (token,))] = value

        # 2. Tails: one prefix-cached prompt_logprobs request per trie leaf.
        leaves: list[tuple[int, TriePath]] = []
        for r, req in enumerate(requests):
            paths = {tuple(c) for c in req.completions if len(c) > 1}
            leaves.extend(
                (r, p) for p in sorted(paths) if not any(q != p and q[: len(p)] == p for q in paths)
            )
        outputs = self._generate(
            [prompts[r] + list(path) for r, path in leaves],
            [self._prompt_logprob_params(read_prefix_cache=True)] * len(leaves),
        )
        missing: dict[tuple[int, TriePath], set[int]] = defaultdict(set)
        for (r, path), output in zip(leaves, outputs, strict=True):
            start = len(prompts[r])
            computed_from = output.num_cached_tokens or 0
            for j in range(1, len(path)):
                key = (r, path[: j + 1])
                if key in values:
                    continue
                index = start + j
                # Entry `index` is computed from position index - 1; cached positions are garbage.
                if index - 1 >= computed_from:
                    values[key] = float(output.prompt_logprobs[index][path[j]].logprob)
                else:
                    missing[(r, path[:j])].add(path[j])

        # 3. Positions the engine read from the cache: score them from their own prefix.
        if missing:
            for (r, prefix), by_token in self._next_token_logprobs(missing, prompts).items():
                for token, value in by_token.items():
                    values[(r, (*prefix, token))] = value

        return [
            [[values[(r, tuple(c[: j + 1]))] for j in range(len(c))] for c in req.completions]
            for r, req in enumerate(requests)
        ]

    def _per_candidate(self, requests: Sequence[ScoreRequest]) -> list[list[list[float]]]:
        pairs = [(r, c) for r, req in enumerate(requests) for c in req.completions]
        outputs = self._generate(
            [requests[r].prompt + c for r, c in pairs],
            [self._prompt_logprob_params(read_prefix_cache=False)] * len(pairs),
        )
        out: list[list[list[float]]] = [[] for _ in requests]
        for (r, completion), output in zip(pairs, outputs, strict=True):
            start = len(requests[r].prompt)
            out[r].append(
                [
                    float(output.prompt_logprobs[start + j][token].logprob)
                    for j, token in enumerate(completion)
                ]
            )
        return out
