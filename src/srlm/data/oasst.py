"""Build the paper's seed data from OpenAssistant: IFT pairs and human-ranked EFT groups (spec sections 2.1, 2.2).

What the paper does, and how it is implemented here:

- **IFT** (Li et al. 2023 selection): the first user turn of each conversation (the tree's root prompt), in English,
  with its rank-0 assistant reply, human-written only. Here: a root prompt in `langs`, not deleted, not failed in
  review, non-empty and (unless `include_synthetic`) not synthetic, paired with an eligible reply whose `rank` is 0.
  When several replies tie at rank 0, the one with the smallest message id is used (any fixed choice would do).
- **EFT source**: root prompts with several human-ranked replies, from which judge demonstrations are built and
  judge accuracy is measured. Here: a root prompt that passes the same checks and has at least 2 eligible ranked
  replies with at least 2 distinct ranks (a group whose replies all tie orders nothing, so it cannot score a judge).
  Ties inside a group are kept. Unranked replies are dropped. Ranks are re-numbered densely after dropping
  replies (0 = best, ties keep equal ranks), so rank 0 always exists and means "best of what is left".
- **Disjoint prompt sets** (the paper's EFT has "no overlap with the IFT data"): almost every root prompt with
  ranked replies also has a rank-0 reply, so a prompt could serve either set. Assignment rule:
    1. a prompt usable only for IFT (a rank-0 reply, fewer than 2 ranked ones) goes to IFT;
    2. a prompt usable only for EFT (ranked replies, but its rank-0 reply was filtered) goes to EFT;
    3. a prompt usable for both goes to IFT with share `ift_share_of_ranked` and to EFT otherwise.
       The default 0.6 approximates the paper's proportions, 3,200 IFT : 2,171 EFT (1,630 train + 541 eval).
  EFT prompts are then split into train and eval with `eft_eval_fraction` going to eval.
- **Determinism**: each split orders the prompts by `stable_id(seed, salt, normalised prompt)` (sha256, unlike
  Python's `hash`, it is the same in every process) and takes the first `round(fraction * n)`. Counts are exact and
  the same seed always gives the same files. Prompts are keyed by their normalised text, not their message id:
  OASST holds the same question in several trees, and all copies must land on the same side of every split.
  IFT keeps one record per distinct prompt; EFT keeps every ranked group (each is a separate human ranking).

Inputs: the tree export (`*.trees.jsonl[.gz]`: one tree per line with nested `replies`), the flat message table
(`message_id`, `parent_id`, `text`, `role`, `lang`, `rank`, `deleted`, `synthetic`, `review_result`; JSONL or
Parquet, as in the oasst1/oasst2 Hub datasets), or a Hub id such as `OpenAssistant/oasst1` (all splits are read).
Trees are rebuilt from `parent_id`; messages in a cycle or below a missing parent are counted and skipped.

Every filter is counted by reason in the returned dict (also written to `counts.json`); a prompt or reply is
counted under the first check it fails, in the order the checks are listed in `_PROMPT_CHECKS`/`_REPLY_CHECKS`.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from srlm.data.formats import iter_source
from srlm.errors import DataError
from srlm.io import stable_id, write_json, write_jsonl

DEFAULT_IFT_SHARE_OF_RANKED = 0.6


@dataclass
class Message:
    """One OASST message, validated; `children` is filled in by `build_trees`."""

    message_id: str | None  # None only where a reader allows ids to be missing (`parse_message(require_id=False)`)
    parent_id: str | None
    text: str
    role: str  # as stored: "prompter" or "assistant" (or whatever `parse_message(roles=...)` allowed)
    lang: str | None
    rank: int | None
    deleted: bool
    synthetic: bool
    review_result: bool | None
    children: list["Message"] = field(default_factory=list)

    @property
    def chat_role(self) -> str:
        """The role as chat messages name it: "user" for OASST's "prompter"."""
        return CHAT_ROLES.get(self.role, self.role)


# --------------------------------------------------------------------------------------------------------------
# Reading one message and one nested tree. The one OASST parser: `srlm.evaluation.human_data` reads its trees with
# `walk_tree` too. Every check raises DataError(f"{label(field path)} must be ..."), where `label` words the place the
# reader's way: `field_label` here ("file:3: field 'prompt.replies[0].rank'"), "file:3: prompt.replies[0].rank:" there.

Label = Callable[[str], str]

# OpenAssistant calls the user "prompter"; chat messages call it "user".
CHAT_ROLES = {"prompter": "user", "assistant": "assistant"}


def field_label(where: str) -> Label:
    """This module's wording: "<where>: field '<path>'"."""
    return lambda path: f"{where}: field '{path}'"


def parse_flag(value: Any, name: str, default: bool | None) -> bool | None:
    """A true/false/null field (`deleted`, `synthetic`, `review_result`); null and missing give `default`."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise DataError(f"{name} must be true, false or null, got {value!r}")


def parse_rank(value: Any, name: str) -> int | None:
    """A human rank (0 = best) or None for an unranked message."""
    if value is None:
        return None
    # Parquet and pandas round-trips turn integer ranks into floats (0.0); accept whole numbers only.
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 0:
        raise DataError(f"{name} must be a non-negative whole number or null, got {value!r}")
    return int(value)


def parse_string(value: Any, name: str, *, required: bool) -> str | None:
    """A string field: `required` ones must be non-empty strings, the others strings or null."""
    if required and (not isinstance(value, str) or not value):
        raise DataError(f"{name} must be a non-empty string, got {value!r}")
    if value is not None and not isinstance(value, str):
        raise DataError(f"{name} must be a string or null, got {value!r:.60}")
    return value


def parse_message(
    raw: Any, path: str, label: Label, *, roles: Mapping[str, str] = CHAT_ROLES, require_id: bool = True,
    require_text: bool = False,
) -> Message:
    """Validate one message dict. `path` locates a message nested in a tree ("prompt.replies[1]"), "" a flat row.

    `roles`: the roles accepted. `require_id`: a missing or empty `message_id` is an error (else None).
    `require_text`: a missing `text` is an error (else it reads as "" and later checks drop the message as empty).
    The stored `parent_id` is returned as it is; a tree reader decides what it means beside the nesting.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{label(path or 'message')} must be an object, got {type(raw).__name__}")

    def name(key: str) -> str:
        return label(f"{path}.{key}" if path else key)

    message_id = parse_string(raw.get("message_id"), name("message_id"), required=require_id)
    role = parse_string(raw.get("role"), name("role"), required=True)
    if role not in roles:
        raise DataError(f"{name('role')} must be {' or '.join(map(repr, roles))}, got {role!r}")
    if require_text and "text" not in raw:
        raise DataError(f"{label(path or 'message')} missing field 'text'")
    text = parse_string(raw.get("text"), name("text"), required=False)
    if require_text and text is None:
        raise DataError(f"{name('text')} must be a string, got null")
    parent_id = parse_string(raw.get("parent_id"), name("parent_id"), required=False)
    lang = raw.get("lang")
    return Message(
        message_id=message_id,
        parent_id=parent_id or None,  # an empty string also marks a root
        text=text or "",
        role=role,
        lang=lang if isinstance(lang, str) and lang else None,
        rank=parse_rank(raw.get("rank"), name("rank")),
        deleted=bool(parse_flag(raw.get("deleted"), name("deleted"), False)),
        synthetic=bool(parse_flag(raw.get("synthetic"), name("synthetic"), False)),
        review_result=parse_flag(raw.get("review_result"), name("review_result"), None),
    )


@dataclass
class TreeNode:
    """One message of a nested tree, met by `walk_tree`: where it is, above it, and its replies (parsed)."""

    message: Message
    path: str  # "prompt.replies[1]", for error messages
    parent: "TreeNode | None"
    replies: list[Message]


def walk_tree(prompt: Any, label: Label, **parse: Any) -> Iterator[TreeNode]:
    """Every message of one nested tree (`prompt` and its `replies`, at any depth), parents before children and
    replies in stored order, each parsed by `parse_message(..., **parse)` when its parent is reached.

    An explicit stack, so long conversations meet no recursion limit.
    """
    stack: list[tuple[Any, Message, str, TreeNode | None]] = [
        (prompt, parse_message(prompt, "prompt", label, **parse), "prompt", None)
    ]
    while stack:
        raw, message, path, parent = stack.pop()
        raw_replies = [] if raw.get("replies") is None else raw["replies"]
        if not isinstance(raw_replies, list):
            raise DataError(f"{label(path + '.replies')} must be a list, got {type(raw_replies).__name__}")
        paths = [f"{path}.replies[{index}]" for index in range(len(raw_replies))]
        replies = [parse_message(child, at, label, **parse) for child, at in zip(raw_replies, paths)]
        node = TreeNode(message, path, parent, replies)
        yield node
        # Reversed so that popping from the stack visits replies in their stored order.
        stack.extend(reversed([(raw_replies[i], replies[i], paths[i], node) for i in range(len(replies))]))


def read_oasst_messages(source: str | Path, *, split: str | None = None) -> Iterator[Message]:
    """Every message of an OASST tree export, flat table (JSONL/Parquet) or Hub dataset, in input order."""
    for where, record in iter_source(source, split=split, allow_strings=False):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if isinstance(record.get("prompt"), dict):  # tree export: {"message_tree_id", "tree_state", "prompt": {...}}
            for node in walk_tree(record["prompt"], field_label(where)):
                # The nesting is the truth, whatever a stored parent_id says.
                node.message.parent_id = node.parent.message.message_id if node.parent else None
                yield node.message
        elif "message_id" in record:  # flat message table
            yield parse_message(record, "", field_label(where))
        else:
            raise DataError(
                f"{where}: field 'message_id' missing: neither an OASST message row nor a tree (a 'prompt' object)"
            )


# --------------------------------------------------------------------------------------------------------------
# Trees from parent links, tolerating broken ones

_CYCLE = "\x00cycle"
_MISSING = "\x00missing"


def build_trees(messages: Iterable[Message], counts: dict[str, int]) -> list[Message]:
    """Link messages to their parents and return the roots, in input order, with `children` filled in.

    A message whose chain of parents loops is counted in `skipped_cycle`; one whose chain reaches an id that is
    not in the input, in `skipped_missing_parent`; a repeated message id, in `skipped_duplicate_id` (the first
    copy wins). Those messages and everything below them are left out; nothing raises.
    """
    by_id: dict[str, Message] = {}
    for message in messages:
        counts["messages_read"] += 1
        if message.message_id in by_id:
            counts["skipped_duplicate_id"] += 1
            continue
        by_id[message.message_id] = message

    # root_of[id] = id of the root the message hangs from, or a _CYCLE/_MISSING marker. Each chain is walked once:
    # the walk stops at the first message already resolved, so the whole pass is linear in the number of messages.
    root_of: dict[str, str] = {}
    for start in by_id:
        path: list[str] = []
        on_path: set[str] = set()
        current = start
        while True:
            if current in root_of:
                outcome = root_of[current]
                break
            message = by_id.get(current)
            if message is None:
                outcome = _MISSING
                break
            if current in on_path:
                outcome = _CYCLE
                break
            path.append(current)
            on_path.add(current)
            if message.parent_id is None:
                outcome = current
                break
            current = message.parent_id
        for message_id in path:
            root_of[message_id] = outcome

    roots: list[Message] = []
    for message in by_id.values():  # dicts keep insertion order: input order
        outcome = root_of[message.message_id]
        if outcome == _CYCLE:
            counts["skipped_cycle"] += 1
        elif outcome == _MISSING:
            counts["skipped_missing_parent"] += 1
        elif message.parent_id is None:
            roots.append(message)
        else:
            by_id[message.parent_id].children.append(message)
    return roots


# --------------------------------------------------------------------------------------------------------------
# Filters


def normalise_prompt(text: str) -> str:
    """The key two prompts share when they are the same question: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _common_checks(message: Message, include_synthetic: bool) -> Iterator[tuple[str, bool]]:
    yield "deleted", message.deleted
    yield "review_failed", message.review_result is False  # None means "not reviewed yet", which is kept
    yield "empty", not message.text.strip()
    yield "synthetic", message.synthetic and not include_synthetic


def _prompt_drop_reason(root: Message, langs: frozenset[str] | None, include_synthetic: bool) -> str | None:
    if root.role != "prompter":
        return "not_prompter"
    if langs is not None and root.lang not in langs:
        return "lang"
    for reason, failed in _common_checks(root, include_synthetic):
        if failed:
            return reason
    return None


def _reply_drop_reason(reply: Message, include_synthetic: bool) -> str | None:
    if reply.role != "assistant":
        return "not_assistant"
    for reason, failed in _common_checks(reply, include_synthetic):
        if failed:
            return reason
    if reply.rank is None:
        return "unranked"
    return None


# Orders of the checks, for documentation and for laying out the counts (every key is present, even at 0).
_PROMPT_CHECKS = ("not_prompter", "lang", "deleted", "review_failed", "empty", "synthetic")
_REPLY_CHECKS = ("not_assistant", "deleted", "review_failed", "empty", "synthetic", "unranked")


def _new_counts() -> dict[str, int]:
    keys = ["messages_read", "skipped_duplicate_id", "skipped_cycle", "skipped_missing_parent", "trees", "trees_used"]
    keys += [f"prompt_dropped_{reason}" for reason in _PROMPT_CHECKS]
    keys += ["prompts_kept", "replies_seen"]
    keys += [f"reply_dropped_{reason}" for reason in _REPLY_CHECKS]
    keys += [
        "replies_kept",
        "prompts_dropped_no_rank0_reply",  # neither a rank-0 reply (IFT) nor >= 2 ranked ones (EFT)
        "prompts_dropped_all_ranks_tied",  # >= 2 ranked replies, all tied, and no rank-0 reply for IFT
        # The next three count distinct prompt texts (see normalise_prompt), the unit the splits are made of.
        "prompts_ift_only", "prompts_eft_only", "prompts_either",
        "ift_dropped_duplicate_prompt",
        # A repeated question whose text was assigned to one side, in a tree that can only serve the other side.
        "prompts_dropped_copy_on_other_side",
        "eft_groups_with_rank_ties",
        "ift", "eft_train", "eft_eval", "eft_train_replies", "eft_eval_replies",
    ]
    return {key: 0 for key in keys}


# --------------------------------------------------------------------------------------------------------------
# Assignment to IFT / EFT train / EFT eval


@dataclass
class _Candidate:
    """A root prompt that passed the filters, with what it could contribute."""

    root: Message
    key: str
    best: Message | None  # the rank-0 reply, if eligible (IFT)
    ranked: list[Message]  # the eligible ranked replies, if they make a usable EFT group; else empty


def _first_fraction(keys: Iterable[str], fraction: float, seed: int, salt: str) -> set[str]:
    """round(fraction * n) of the distinct keys, chosen by a seeded sha256 order: exact size, reproducible."""
    ordered = sorted(set(keys), key=lambda key: (stable_id(seed, salt, key), key))
    return set(ordered[: round(fraction * len(ordered))])


def renumber_ranks(ranks: Sequence[int], method: str) -> list[int]:
    """Ranks renumbered from 0 (best), ties kept, by scipy's `rankdata`: "dense" gives 0, 1, 2, ... over the
    distinct ranks; "min" gives each the number of ranks strictly better than it (1, 1, 3 -> 0, 0, 2)."""
    from scipy.stats import rankdata

    return [int(rank) - 1 for rank in rankdata(ranks, method=method)] if len(ranks) else []


def _dense_ranks(replies: Sequence[Message]) -> list[tuple[Message, int]]:
    """(reply, rank) best first, ranks renumbered densely 0, 1, 2, ... with ties kept."""
    ordered = sorted(replies, key=lambda reply: (reply.rank, reply.message_id))
    return list(zip(ordered, renumber_ranks([reply.rank for reply in ordered], "dense")))


def build_from_oasst(
    source: str | Path,
    out_dir: str | Path,
    *,
    langs: Sequence[str] | None = ("en",),
    include_synthetic: bool = False,
    eft_eval_fraction: float = 0.25,
    ift_share_of_ranked: float = DEFAULT_IFT_SHARE_OF_RANKED,
    seed: int = 0,
    limit: int | None = None,
    split: str | None = None,
) -> dict[str, int]:
    """Write `ift.jsonl`, `eft_source_train.jsonl`, `eft_source_eval.jsonl` and `counts.json` into `out_dir`.

    `source`: a tree export or flat message table (JSONL, optionally gzipped, or Parquet) or a Hub id.
    `langs`: root-prompt languages to keep (None keeps all). `limit`: use only the first `limit` trees (in input
    order) that survived tree building; for quick runs. `split`: Hub split to read (None: all splits).
    Returns the counts (see the module docstring for the rules they count).
    """
    if not 0.0 <= eft_eval_fraction <= 1.0:
        raise ValueError(f"eft_eval_fraction must be in [0, 1], got {eft_eval_fraction}")
    if not 0.0 <= ift_share_of_ranked <= 1.0:
        raise ValueError(f"ift_share_of_ranked must be in [0, 1], got {ift_share_of_ranked}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of trees, got {limit}")
    lang_set = frozenset(langs) if langs else None
    counts = _new_counts()

    roots = build_trees(read_oasst_messages(source, split=split), counts)
    counts["trees"] = len(roots)
    if limit is not None:
        roots = roots[:limit]
    counts["trees_used"] = len(roots)

    candidates = [c for c in (_candidate(root, lang_set, include_synthetic, counts) for root in roots) if c]

    # Decide per distinct prompt text, so that duplicated questions cannot straddle a split.
    ift_able = {c.key for c in candidates if c.best is not None}
    eft_able = {c.key for c in candidates if c.ranked}
    either = ift_able & eft_able
    counts["prompts_ift_only"] = len(ift_able - eft_able)
    counts["prompts_eft_only"] = len(eft_able - ift_able)
    counts["prompts_either"] = len(either)
    ift_keys = (ift_able - eft_able) | _first_fraction(either, ift_share_of_ranked, seed, "oasst-ift-or-eft")
    eft_keys = eft_able - ift_keys
    eval_keys = _first_fraction(eft_keys, eft_eval_fraction, seed, "oasst-eft-eval")

    ift, eft_train, eft_eval = _assign(candidates, ift_keys, eval_keys, counts)
    counts["ift"] = len(ift)
    counts["eft_train"] = len(eft_train)
    counts["eft_eval"] = len(eft_eval)
    counts["eft_train_replies"] = sum(len(g["replies"]) for g in eft_train)
    counts["eft_eval_replies"] = sum(len(g["replies"]) for g in eft_eval)

    out = Path(out_dir)
    write_jsonl(out / "ift.jsonl", ift)
    write_jsonl(out / "eft_source_train.jsonl", eft_train)
    write_jsonl(out / "eft_source_eval.jsonl", eft_eval)
    write_json(out / "counts.json", counts)
    return counts


def _assign(
    candidates: list[_Candidate], ift_keys: set[str], eval_keys: set[str], counts: dict[str, int]
) -> tuple[list[dict], list[dict], list[dict]]:
    """(IFT records, EFT train groups, EFT eval groups): each candidate on the side its prompt text was given."""
    ift: list[dict] = []
    eft_train: list[dict] = []
    eft_eval: list[dict] = []
    seen_ift: set[str] = set()
    for c in candidates:
        if c.key in ift_keys:
            if c.best is None:
                counts["prompts_dropped_copy_on_other_side"] += 1
                continue
            if c.key in seen_ift:
                counts["ift_dropped_duplicate_prompt"] += 1
                continue
            seen_ift.add(c.key)
            record = {
                "id": stable_id("oasst", c.root.message_id, c.best.message_id),
                "prompt": c.root.text.strip(),
                "response": c.best.text.strip(),
                "source": "oasst",
            }
            if c.root.lang:
                record["lang"] = c.root.lang
            ift.append(record)
        else:
            if not c.ranked:
                counts["prompts_dropped_copy_on_other_side"] += 1
                continue
            if len({reply.rank for reply in c.ranked}) < len(c.ranked):
                counts["eft_groups_with_rank_ties"] += 1
            group = {
                "group_id": stable_id("oasst", c.root.message_id),
                "prompt": c.root.text.strip(),
                "replies": [
                    {"text": reply.text.strip(), "rank": rank, "reply_id": reply.message_id}
                    for reply, rank in _dense_ranks(c.ranked)
                ],
            }
            (eft_eval if c.key in eval_keys else eft_train).append(group)
    return ift, eft_train, eft_eval


def _candidate(root: Message, langs: frozenset[str] | None, include_synthetic: bool, counts: dict) -> _Candidate | None:
    """Apply the prompt and reply filters to one tree's root; None if it can serve neither IFT nor EFT."""
    reason = _prompt_drop_reason(root, langs, include_synthetic)
    if reason is not None:
        counts[f"prompt_dropped_{reason}"] += 1
        return None
    counts["prompts_kept"] += 1

    ranked: list[Message] = []
    for reply in root.children:
        counts["replies_seen"] += 1
        reason = _reply_drop_reason(reply, include_synthetic)
        if reason is not None:
            counts[f"reply_dropped_{reason}"] += 1
            continue
        counts["replies_kept"] += 1
        ranked.append(reply)

    rank0 = sorted((r for r in ranked if r.rank == 0), key=lambda r: r.message_id)
    best = rank0[0] if rank0 else None
    distinct_ranks = {r.rank for r in ranked}
    group = ranked if len(ranked) >= 2 and len(distinct_ranks) >= 2 else []
    if best is None and not group:
        tied = len(ranked) >= 2
        counts["prompts_dropped_all_ranks_tied" if tied else "prompts_dropped_no_rank0_reply"] += 1
        return None
    return _Candidate(root=root, key=normalise_prompt(root.text), best=best, ranked=group)
