"""vLLM data parallelism (backend.data_parallel_size > 1): one plain vLLM engine per rank, each in its own process
with its own GPUs, behind the one-engine interface `VLLMBackend` drives (see srlm.backends.vllm's docstring)."""

from __future__ import annotations

import contextlib
import gc
import os
from types import SimpleNamespace

from srlm.backends.vllm import _engine_max_model_len, _first_line, _import_vllm, _shutdown
from srlm.errors import SrlmError


# -- data parallelism: one engine per rank, each in its own process --------------------------------------------------
# Variables of vLLM's own DP group; a rank here is a plain single engine and must not see them (lm-eval removes them
# from its Ray replicas for the same reason: an engine that sees them computes a DP-shifted device index).
_VLLM_DP_VARIABLES = ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT")
_CLOSE_TIMEOUT_SECONDS = 120


class SamplingKwargs:
    """What the backend builds per request for data-parallel engines: vllm.SamplingParams' keywords, kept as plain
    values so they cross to the rank processes, which build the real SamplingParams from them."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (indices or UUIDs), else 0 .. device_count - 1."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if listed:
        return listed
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def rank_environment(rank: int, tensor_parallel_size: int, gpus: list[str]) -> dict[str, str | None]:
    """The environment changes for rank `rank`'s process (None = removed): its own group of GPUs, no VLLM_DP_*."""
    group = gpus[rank * tensor_parallel_size:(rank + 1) * tensor_parallel_size]
    if len(group) != tensor_parallel_size:
        raise SrlmError(f"vllm backend: data-parallel rank {rank} needs GPUs {rank * tensor_parallel_size} .. "
                        f"{(rank + 1) * tensor_parallel_size - 1} of the visible {', '.join(gpus) or 'none'}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(group), **dict.fromkeys(_VLLM_DP_VARIABLES)}


def _set_environment(values: dict[str, str | None]) -> None:
    """Set each variable of `values` in os.environ; None removes it."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]):
    """os.environ with `changes` applied while a rank process is started (it inherits them), then restored."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        _set_environment(changes)
        yield
    finally:
        _set_environment(saved)


class RankEngine:
    """One rank's `vllm.LLM`, in that rank's process: generates from token ids and plain sampling keywords, and
    answers with plain values (what crosses the pipe)."""

    def __init__(self, engine_kwargs: dict):
        vllm = _import_vllm()
        self.llm = vllm.LLM(**engine_kwargs)
        self.sampling_params_class = vllm.SamplingParams
        self.max_model_len = _engine_max_model_len(self.llm)

    def generate(self, prompts: list[dict], params: list[dict]) -> list[dict]:
        outputs = self.llm.generate(prompts, sampling_params=[self.sampling_params_class(**p) for p in params],
                                    use_tqdm=False)
        return [{"outputs": [{"token_ids": list(o.token_ids), "finish_reason": o.finish_reason,
                              "stop_reason": getattr(o, "stop_reason", None)} for o in out.outputs],
                 "num_cached_tokens": getattr(out, "num_cached_tokens", None)} for out in outputs]

    def shutdown(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            _shutdown(llm)
        del llm
        gc.collect()


def rank_reply(engine: RankEngine, message: tuple) -> tuple[tuple, bool]:
    """A rank's answer to one message from the backend, and whether the rank is done."""
    if message[0] == "generate":
        try:
            return ("ok", engine.generate(message[1], message[2])), False
        except Exception as exc:  # reported to the backend, which raises it there; the rank stays up
            return ("error", f"{type(exc).__name__}: {_first_line(exc)}"), False
    if message[0] == "close":
        engine.shutdown()
        return ("closed",), True
    return ("error", f"unknown message {message[0]!r}"), False


def _rank_main(conn, engine_kwargs: dict) -> None:
    """A rank process: start the engine, say so, then answer messages until told to close (or the pipe closes)."""
    try:
        engine = RankEngine(engine_kwargs)
    except BaseException as exc:  # the backend reports it, with the rank; this process just ends
        conn.send(("error", f"{type(exc).__name__}: {_first_line(exc)}"))
        conn.close()
        return
    conn.send(("ready", engine.max_model_len))
    done = False
    while not done:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the backend's process went away: free the GPU and stop
            engine.shutdown()
            return
        reply, done = rank_reply(engine, message)
        conn.send(reply)
    conn.close()


class ProcessRank:
    """The backend's handle on one rank process (spawned: CUDA does not survive a fork)."""

    def __init__(self, rank: int, environment: dict[str, str | None], engine_kwargs: dict):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.rank = rank
        self.conn, child = context.Pipe()
        # Not a daemon: vLLM's engine starts processes of its own, which a daemonic process may not.
        self.process = context.Process(target=_rank_main, args=(child, engine_kwargs), name=f"srlm-vllm-dp{rank}")
        with _environment(environment):
            self.process.start()
        child.close()

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (OSError, EOFError):
            raise SrlmError(self._gone()) from None

    def recv(self, timeout: float | None = None) -> tuple:
        waited = 0.0
        while not self.conn.poll(1.0):
            waited += 1.0
            if not self.process.is_alive() and not self.conn.poll(0):
                raise SrlmError(self._gone())
            if timeout is not None and waited >= timeout:
                raise SrlmError(f"vllm backend: data-parallel rank {self.rank} did not answer within {timeout:.0f} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise SrlmError(self._gone()) from None

    def _gone(self) -> str:
        return (f"vllm backend: data-parallel rank {self.rank} (process {self.process.pid}) exited with code "
                f"{self.process.exitcode}; its own output above says why")

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.send(("close",))
                while self.recv(timeout=_CLOSE_TIMEOUT_SECONDS)[0] != "closed":
                    pass  # an answer still on its way from a generate call that failed elsewhere
            except SrlmError:
                pass
            self.process.join(_CLOSE_TIMEOUT_SECONDS)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _start_rank(rank: int, environment: dict[str, str | None], engine_kwargs: dict):
    """Start rank `rank` (tests replace this with an in-process stand-in)."""
    return ProcessRank(rank, environment, engine_kwargs)


class DataParallelEngine:
    """In the place of `vllm.LLM` for data_parallel_size > 1: `generate` deals the requests out to the ranks (request
    i to rank i mod D), all at once, and returns the outputs in request order; `shutdown` closes every rank."""

    def __init__(self, ranks: list, max_model_len: int | None = None):
        self.ranks = list(ranks)
        self.model_config = SimpleNamespace(max_model_len=max_model_len)

    @classmethod
    def start(cls, engine_kwargs: dict, *, data_parallel_size: int, tensor_parallel_size: int) -> "DataParallelEngine":
        gpus = visible_gpus()
        environments = [rank_environment(r, tensor_parallel_size, gpus) for r in range(data_parallel_size)]
        ranks = []
        try:
            for rank, environment in enumerate(environments):  # all start at once; each loads its own weights
                ranks.append(_start_rank(rank, environment, engine_kwargs))
            replies = [rank.recv() for rank in ranks]
        except BaseException:
            for rank in ranks:
                rank.close()
            raise
        failed = [(r, reply[1]) for r, reply in enumerate(replies) if reply[0] != "ready"]
        if failed:
            for rank in ranks:
                rank.close()
            rank, why = failed[0]
            raise SrlmError(f"vllm backend: cannot start the engine on {engine_kwargs.get('model')}: data-parallel "
                            f"rank {rank} (GPUs {environments[rank]['CUDA_VISIBLE_DEVICES']}): {why} (see "
                            "backend.max_model_len, backend.gpu_memory_utilization, backend.tensor_parallel_size, "
                            "backend.data_parallel_size)")
        lengths = [reply[1] for reply in replies if isinstance(reply[1], int)]
        return cls(ranks, min(lengths) if lengths else None)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=False):
        count = len(self.ranks)
        shares = [list(range(r, len(prompts), count)) for r in range(count)]
        busy = []
        for index, (rank, share) in enumerate(zip(self.ranks, shares)):
            if share:
                rank.send(("generate", [prompts[i] for i in share], [sampling_params[i].kwargs for i in share]))
                busy.append((index, rank, share))
        outputs, errors = [None] * len(prompts), []
        for index, rank, share in busy:  # every busy rank's answer is read, even after one failed
            reply = rank.recv()
            if reply[0] != "ok":
                errors.append(f"rank {index}: {reply[1]}")
                continue
            if len(reply[1]) != len(share):
                errors.append(f"rank {index}: {len(share)} requests gave {len(reply[1])} outputs")
                continue
            for i, out in zip(share, reply[1]):
                outputs[i] = SimpleNamespace(outputs=[SimpleNamespace(**o) for o in out["outputs"]],
                                             num_cached_tokens=out["num_cached_tokens"])
        if errors:
            raise SrlmError(f"vllm backend: generation failed on data-parallel {'; '.join(errors)}")
        return outputs

    def shutdown(self) -> None:
        ranks, self.ranks = self.ranks, []
        for rank in ranks:
            rank.close()
