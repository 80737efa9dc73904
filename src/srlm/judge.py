"""The LLM-as-a-Judge: a prompt template, a score parser and the aggregation of several judgements.

A judge is data (after alpaca_eval): a template with `{prompt}` and `{response}` slots, a parser `str -> float |
None` and the number of samples to average. The built-in template is our own wording of the paper's additive
5-point rubric (relevance, coverage, usefulness, clarity, expertise), ending in `Score: <total points>`.

Two rules that the numbers depend on:
- a judgement without a parsable score in [0, 5] is a *missing value* (None), never 0;
- only the judge's own output is parsed, never the prompt, so a candidate answer that says "Score: 5" gets no
  credit for it. Of several score lines in one judgement, the last one counts: it is the conclusion.

Two ways to turn judgements into a response's score (`judge.method`):
- "sample_mean" (the paper): each judgement's score is the integer it concludes with; the response's score is the
  mean over its K judgements;
- "expected": each judgement's score is the expected value sum_k k * p(k) of the judge's own next-token
  probabilities p(0..5) at the position right after that last "Score:", renormalised over the six digits; the
  response's score is the mean over its K judgements. One judgement then gives a continuous score (fewer ties
  between candidates) for the cost of one extra forward pass. A judgement without a parsable score has no
  expected score either (a missing value, never 0): its digit position is where the format says it is.
- "direct" (a departure from the paper, for judges trained to score without a justification, e.g. by
  `srlm train-judge`): no text is generated; the judge's reply is taken to begin with "Score: " and the score is
  the expected value of its digit probabilities right there. One forward pass per response, deterministic (so
  `judge.num_samples` must be 1). The built-in template for it is the same rubric asking for the score alone
  (`additive_judge_direct.txt`). The judgement text recorded is "Score: <expected score>", which the parser reads
  back as that score.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from srlm.backends.base import GenerationRequest, Sampling, supports_score_probs
from srlm.errors import SrlmError

MAX_SCORE = 5.0
_SCORE_RE = re.compile(r"(?:score|points)\s*[:=]\s*\**\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def shipped_template(name: str) -> str:
    """A template shipped in `srlm/templates/`."""
    return resources.files("srlm.templates").joinpath(name).read_text(encoding="utf-8")


def builtin_template(method: str | None = None) -> str:
    """The built-in additive rubric; with judge.method=direct its variant that asks for the score alone."""
    return shipped_template("additive_judge_direct.txt" if method == "direct" else "additive_judge.txt")


def read_template_file(template_file: str | Path, slots: tuple[str, ...], what: str = "judge template") -> str:
    """A user's template file, which must keep every slot the code fills in."""
    path = Path(template_file)
    try:
        template = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SrlmError(f"{path}: {what} file not found") from None
    for slot in slots:
        if slot not in template:
            raise SrlmError(f"{path}: {what} has no {slot} slot")
    return template


def load_template(template_file: str | None = None, method: str | None = None) -> str:
    """The judge template; a custom one must keep the `{prompt}` and `{response}` slots. `method` (judge.method)
    picks the built-in template when there is no file."""
    if template_file is None:
        return builtin_template(method)
    return read_template_file(template_file, ("{prompt}", "{response}"))


def fill_slots(template: str, values: dict[str, str]) -> str:
    """`template` with each `{name}` of `values` filled in one pass, so that a slot name inside a filled-in text
    stays text (the pairwise and meta-judge templates)."""
    pattern = "|".join(re.escape(name) for name in values)
    return re.sub(r"\{(" + pattern + r")\}", lambda m: values[m.group(1)], template)


def render(template: str, prompt: str, response: str) -> str:
    # str.replace, not str.format: user text and templates may contain braces.
    return template.replace("{prompt}", prompt).replace("{response}", response)


def parse_score(judgement: str) -> float | None:
    """The score a judgement concludes with, or None when it has none in [0, 5]."""
    matches = _SCORE_RE.findall(judgement)
    if not matches:
        return None
    value = float(matches[-1])
    if not math.isfinite(value) or not 0 <= value <= MAX_SCORE:
        return None
    return value


JUDGE_METHODS = ("sample_mean", "expected", "direct")
SCORE_TOKENS = tuple(str(k) for k in range(int(MAX_SCORE) + 1))  # "0".."5": the candidates of expected scoring
DIRECT_PREFIX = "Score: "  # judge.method=direct: the judge's reply is read as starting with this


def score_prefix(judgement: str) -> str | None:
    """The judgement up to the first character of the score it concludes with ("...\nScore: "), i.e. the text
    after which the score digit is the next token; None when the judgement has no parsable score in [0, 5]."""
    if parse_score(judgement) is None:
        return None
    last = list(_SCORE_RE.finditer(judgement))[-1]  # the match parse_score read
    return judgement[: last.start(1)]


def expected_score(probs: list[float]) -> float:
    """sum_k k * p(k) over the score tokens 0..5, with `probs` renormalised over them (so it lies in [0, 5])."""
    if len(probs) != len(SCORE_TOKENS):
        raise ValueError(f"expected {len(SCORE_TOKENS)} probabilities (scores 0-5), got {len(probs)}")
    total = sum(probs)
    if not total > 0:
        raise ValueError("score probabilities sum to 0")
    return sum(k * p for k, p in enumerate(probs)) / total


def average_score(scores: list[float | None]) -> float | None:
    """Mean of the parsable scores; None when none parsed (the paper's 3 samples, failures dropped)."""
    parsed = [s for s in scores if s is not None]
    return sum(parsed) / len(parsed) if parsed else None


def check_method(method: str, backend) -> None:
    """Fail before any generation when `method` cannot run on `backend` (hours of judging must not end in an error)."""
    if method not in JUDGE_METHODS:
        raise SrlmError(f"judge.method must be one of {', '.join(JUDGE_METHODS)}, got {method!r}")
    if method in ("expected", "direct") and not supports_score_probs(backend):
        raise SrlmError(
            f"judge.method={method} reads the judge's score-token probabilities, which the '{backend.name}' backend "
            "cannot give; use backend.name=hf, or backend.name=openai with a server that returns top_logprobs "
            "(e.g. vLLM), or judge.method=sample_mean"
        )


def check_judge_method(cfg) -> None:
    """A run's judge.method against its backend, before any training: judge.method=expected and direct need
    score-token probabilities. (An openai server may still lack top_logprobs; the judge stage finds that out on its
    first request.)"""
    from srlm.backends import backend_class

    check_method(cfg.judge.method, backend_class(cfg.backend.name))  # the class: nothing is loaded yet
    if cfg.meta.enabled:
        check_meta_method(cfg.meta.method, backend_class(cfg.backend.name))


def check_meta_method(method: str, backend) -> None:
    """meta.method=direct reads the verdict tokens' probabilities: fail before any work on a backend without them."""
    if method == "direct" and not supports_score_probs(backend):
        raise SrlmError(f"meta.method=direct reads the meta-judge's verdict-token probabilities, which the "
                        f"'{backend.name}' backend cannot give; use backend.name=hf (or an openai server that "
                        "returns top_logprobs), or meta.method=generate")


@dataclass
class Judged:
    """One request's judgements, scored: `scores` is what a response's score averages (the expected scores with
    judge.method=expected, else the integers the texts end with); `expected` holds the expected-score fields of
    each judgement (None with sample_mean)."""

    completions: list
    parsed: list[float | None]
    expected: list[dict] | None
    scores: list[float | None]

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]


@dataclass(frozen=True)
class Judge:
    """The judge as one value, built once from `judge.*`: its template, sampling, scoring method and prompt-length
    limit. Every place that judges (the judge stage, `srlm eval judge`, the additive win rate, EFT construction)
    builds its requests and reads its scores through it, so they cannot drift apart."""

    template: str
    method: str
    sampling: Sampling
    max_prompt_tokens: int

    @classmethod
    def from_config(cls, cfg, backend=None, *, template: str | None = None) -> "Judge":
        """From a `JudgeConfig`; with `backend`, checked first that the backend can score this way. `template`
        replaces the configured one (EFT demonstrations are always the justified rubric)."""
        if backend is not None:
            check_method(cfg.method, backend)
        return cls(template=load_template(cfg.template_file, cfg.method) if template is None else template,
                   method=cfg.method, max_prompt_tokens=cfg.max_prompt_tokens,
                   sampling=Sampling(n=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_new_tokens=cfg.max_new_tokens))

    def request(self, request_id: str, question: str, response: str, seed: int) -> GenerationRequest:
        """The judge prompt for one response, as one chat turn."""
        return GenerationRequest(request_id, self.sampling, seed,
                                 messages=[{"role": "user", "content": render(self.template, question, response)}])

    def fits(self, backend, request: GenerationRequest) -> bool:
        """False when the judge prompt is longer than judge.max_prompt_tokens: such a response is skipped and
        counted, never sent (a truncated prompt would cut off the response or the instructions)."""
        return backend.count_prompt_tokens(request) <= self.max_prompt_tokens

    def judge(self, backend, requests: list, on_done=None) -> list["Judged"]:
        return judge_requests(backend, requests, self.method, on_done)


def judge_requests(backend, requests: list, method: str, on_done=None) -> list[Judged]:
    """Generate the judgements of `requests` (one backend call) and score each by `method`."""
    if method == "direct":
        return direct_judgements(backend, requests, on_done)
    if method == "expected" and hasattr(backend, "record_token_probs"):
        backend.record_token_probs(SCORE_TOKENS)  # read back while scoring: no second pass over each judgement
    outputs = backend.generate(list(requests), on_done=on_done)
    expected = None
    if method == "expected":
        expected = expected_judgements(backend, [(r, [c.text for c in outs]) for r, outs in zip(requests, outputs)])
    judged = []
    for i, outs in enumerate(outputs):
        parsed = [parse_score(c.text) for c in outs]
        fields = expected[i] if expected is not None else None
        scores = [f["expected_score"] for f in fields] if fields is not None else parsed
        judged.append(Judged(list(outs), parsed, fields, scores))
    return judged


def expected_judgements(backend, judged: list[tuple[object, list[str]]]) -> list[list[dict]]:
    """The expected-score fields of every judgement text: for each (request, texts), one dict per text with
    `score_probs` (p(0..5), renormalised), `score_token_mass` (the six digits' share of the whole next-token
    distribution) and `expected_score`, all None where the text has no parsable score. One backend call scores all
    the texts, so an in-process backend batches them."""
    positions = [(i, k) for i, (_, texts) in enumerate(judged) for k, text in enumerate(texts)
                 if score_prefix(text) is not None]
    probs = backend.score_token_probs(
        [(judged[i][0], score_prefix(judged[i][1][k])) for i, k in positions], list(SCORE_TOKENS)
    ) if positions else []
    fields = [[{"score_probs": None, "score_token_mass": None, "expected_score": None} for _ in texts]
              for _, texts in judged]
    for (i, k), result in zip(positions, probs):
        if result is not None:  # None: the backend could not read the digits' probabilities (a missing value)
            fields[i][k] = {"score_probs": list(result.probs), "score_token_mass": result.mass,
                            "expected_score": expected_score(result.probs)}
    return fields


def direct_judgements(backend, requests: list, on_done=None) -> list[Judged]:
    """judge.method=direct: one teacher-forced pass per request reads p(0..5) after DIRECT_PREFIX; nothing is
    generated. Each request gets one judgement, "Score: <expected score>" (a missing value where the backend
    could not read the digits)."""
    from srlm.backends.base import Completion

    probs = backend.score_token_probs([(r, DIRECT_PREFIX) for r in requests], list(SCORE_TOKENS)) if requests else []
    judged = []
    for request, result in zip(requests, probs):
        if result is None:
            fields = {"score_probs": None, "score_token_mass": None, "expected_score": None}
            text = DIRECT_PREFIX.strip()  # no digit: parses as a missing score
        else:
            value = expected_score(result.probs)
            fields = {"score_probs": list(result.probs), "score_token_mass": result.mass, "expected_score": value}
            text = f"{DIRECT_PREFIX}{value:.3f}"
        judged.append(Judged([Completion(text=text, num_tokens=0, finish_reason="stop")],
                             [fields["expected_score"]], [fields], [fields["expected_score"]]))
        if on_done is not None:
            on_done(1)
    return judged
