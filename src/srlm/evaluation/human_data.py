"""Readers for human-ranked replies: the ground truth that a judge's scores are compared with (paper-spec 6.5).

Both readers produce `RankedGroup`s: one conversation context (the messages up to and including the last user turn)
and the replies to it, each with a human rank (0 = best, equal ranks = a human tie). Judge scores are not part of
them: an evaluation stage scores each reply and hands `(rank, score)` groups to `srlm.evaluation.metrics`.

- `read_oasst_trees`: OpenAssistant message trees, where humans ranked sibling assistant replies. Every user turn
  with ranked assistant replies is a group, at any depth of the conversation, not just the first turn.
- `read_preference_pairs`: chosen / rejected pairs, either `{"prompt", "chosen", "rejected"}` records or
  Anthropic HH-RLHF dialogues (`"\\n\\nHuman: ... \\n\\nAssistant: ..."`), plain or gzip-compressed.

Real data is messy, so whatever a reader leaves out is counted by reason and returned beside the groups; malformed
input (wrong types, a missing field, a tree that loops) is a `DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from srlm.data.oasst import CHAT_ROLES, Label, Message, TreeNode, renumber_ranks, walk_tree
from srlm.errors import DataError
from srlm.io import iter_json_lines, stable_id

# The roles an OASST tree may carry here: OpenAssistant's, and "user" for trees already in chat roles.
_OASST_ROLES = CHAT_ROLES | {"user": "user"}


@dataclass
class RankedGroup:
    """Replies to one conversation, ranked by humans.

    context: the conversation so far as chat messages [{"role": "user"|"assistant", "content": str}], ending with
        the user turn that the replies answer.
    replies: [{"text": str, "rank": int, "reply_id": str}], rank 0 = best, equal ranks = tied.
    group_id: `stable_id` of the context and the ranked replies, so it is the same in every run.
    source: where the group came from, "file:line", for messages about it.
    meta: what the source says about the group beyond that (for OASST: message_tree_id, parent_message_id).
    """

    group_id: str
    context: list[dict]
    replies: list[dict]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_ordered_pairs(self) -> int:
        """Reply pairs whose human ranks differ: the pairs a pairwise accuracy is computed on."""
        ranks = [reply["rank"] for reply in self.replies]
        return sum(1 for i in range(len(ranks)) for j in range(i + 1, len(ranks)) if ranks[i] != ranks[j])


class ReadResult(NamedTuple):
    """What a reader returns: `groups, counts = read_...(path)`.

    counts: how many records were read, groups and replies kept, and `skipped_<reason>` for everything left out.
    """

    groups: list[RankedGroup]
    counts: dict[str, int]


def _add_group(group: "RankedGroup", groups: list, seen_group_ids: set[str], counts: Counter) -> None:
    """Keep `group` unless the same group (context and ranked replies) is already kept, which is counted as
    skipped_duplicate; count what it adds (groups, replies, ordered pairs, first-turn groups)."""
    if group.group_id in seen_group_ids:
        counts["skipped_duplicate"] += 1
        return
    seen_group_ids.add(group.group_id)
    groups.append(group)
    counts["groups"] += 1
    counts["replies"] += len(group.replies)
    counts["ordered_pairs"] += group.n_ordered_pairs
    counts["first_turn_groups"] += len(group.context) == 1


def _group_id(context: list[dict], replies: list[dict]) -> str:
    return stable_id(
        json.dumps(context, ensure_ascii=False, sort_keys=True),
        json.dumps([[r["rank"], r["text"]] for r in replies], ensure_ascii=False),
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading JSONL, plain or gzip, with line numbers
# ----------------------------------------------------------------------------------------------------------------


def _iter_numbered_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line, plain or gzip: `srlm.io.iter_json_lines`."""
    return iter_json_lines(path)


# ----------------------------------------------------------------------------------------------------------------
# OpenAssistant trees
# ----------------------------------------------------------------------------------------------------------------


def _label(at: str) -> Label:
    """This module's wording of a place in a tree: "file:line: prompt.replies[2].rank:"."""
    return lambda path: f"{at}: {path}:"


def read_oasst_trees(
    path: str | Path, *, include_synthetic: bool = False, min_replies: int = 2
) -> ReadResult:
    """Groups of human-ranked sibling assistant replies from OpenAssistant tree JSONL (one tree per line).

    Each line is {"message_tree_id", "prompt": message}, where a message has "text", "role" ("prompter" or
    "assistant"), "replies" (child messages) and, on ranked replies, "rank" (0 = best). Every user message whose
    assistant replies carry ranks makes a group, at any depth; its context is the path from the root to it.
    Messages are parsed by `srlm.data.oasst.walk_tree`, the one OASST parser (message ids may be missing here).

    Left out, and counted in `counts`:
    - skipped_unranked: assistant replies without a rank (rank missing or null);
    - skipped_synthetic: model-written replies (`synthetic: true`), unless include_synthetic;
    - skipped_deleted: replies marked deleted or that failed review (`review_result: false`);
    - skipped_synthetic_context / skipped_deleted_context: groups whose context contains such a message: the
      conversation itself is not human-only (or was withdrawn), so its replies are not looked at;
    - skipped_too_few_replies: user turns with assistant replies but fewer than `min_replies` usable ones (one
      reply has no ranking to agree with).
    Also counted: trees, messages, synthetic_messages, groups, replies, ordered_pairs (reply pairs with different
    human ranks), first_turn_groups (groups answering the first user turn).

    Ranks are renumbered among the kept replies so that the best is 0: rank = how many kept replies are strictly
    better ("min" ranking), so filtering away the rank-0 reply keeps "rank 0 = best" true and ties stay ties.
    Raises DataError for malformed trees: a missing or mistyped field, a rank that is not a non-negative whole
    number, an unknown role, a message id seen twice in one tree (a cycle or a duplicate), or a parent_id that does
    not name the enclosing message.
    """
    path = Path(path)
    if min_replies < 1:
        raise ValueError(f"min_replies must be >= 1, got {min_replies}")
    counts: Counter[str] = Counter()
    groups: list[RankedGroup] = []
    seen_group_ids: set[str] = set()

    for line_no, tree in _iter_numbered_records(path):
        at = f"{path}:{line_no}"
        root = tree.get("prompt")
        if not isinstance(root, dict):
            raise DataError(f"{at}: field 'prompt' must be a message object, got {type(root).__name__}")
        counts["trees"] += 1
        for message, conversation, replies in _user_turns(root, at, include_synthetic, counts):
            if len(replies) < min_replies:
                counts["skipped_too_few_replies"] += 1
                continue
            ranks = renumber_ranks([reply["rank"] for reply in replies], "min")
            kept = [dict(reply, rank=rank) for reply, rank in zip(replies, ranks)]
            group = RankedGroup(
                group_id=_group_id(conversation, kept),
                context=[dict(turn) for turn in conversation],  # copies: groups must not share mutable messages
                replies=kept,
                source=at,
                meta={"message_tree_id": tree.get("message_tree_id"), "parent_message_id": message.message_id},
            )
            _add_group(group, groups, seen_group_ids, counts)

    if counts["trees"] == 0:
        raise DataError(f"{path}: no records")
    return ReadResult(groups, _with_all_keys(counts, _OASST_COUNT_KEYS))


def _user_turns(
    root: dict, at: str, include_synthetic: bool, counts: Counter
) -> Iterator[tuple[Message, list[dict], list[dict]]]:
    """(user message, conversation up to and including it, its usable ranked replies) for each user turn of one
    tree that has assistant replies and a human-only context; counts messages and what it leaves out."""
    label = _label(at)
    seen_message_ids: set[str] = set()
    # Per message met so far (by field path): the conversation up to it, and why it or an ancestor is excluded.
    above: dict[str, tuple[list[dict], str | None]] = {}
    for node in walk_tree(root, label, roles=_OASST_ROLES, require_id=False, require_text=True):
        message = node.message
        _check_place(node, label, seen_message_ids)
        counts["messages"] += 1
        counts["synthetic_messages"] += message.synthetic
        history, excluded_by = above[node.parent.path] if node.parent else ([], None)
        excluded_here = excluded_by or _exclusion_reason(message, include_synthetic)
        conversation = history + [{"role": message.chat_role, "content": message.text}]
        above[node.path] = (conversation, excluded_here)

        assistant_replies = [reply for reply in node.replies if reply.chat_role == "assistant"]
        if message.chat_role != "user" or not assistant_replies:
            continue
        if excluded_here:
            counts[f"skipped_{excluded_here}_context"] += 1
            continue
        yield message, conversation, _usable_replies(assistant_replies, conversation, counts, include_synthetic)


def _check_place(node: TreeNode, label: Label, seen_message_ids: set[str]) -> None:
    """A message's place in its tree: its id not met before in the tree, its parent_id naming the enclosing message.

    A nested JSON tree cannot loop by itself; a cycle in the source data shows up as a message id reappearing
    below itself (or a parent_id naming another message), and either is an error.
    """
    message_id = node.message.message_id
    if message_id is not None:
        if message_id in seen_message_ids:
            raise DataError(
                f"{label(node.path + '.message_id')} {message_id} appears twice in the tree (a cycle or a duplicate)"
            )
        seen_message_ids.add(message_id)
    enclosing = node.parent.message.message_id if node.parent else None
    parent_id = node.message.parent_id
    if parent_id is not None and enclosing is not None and parent_id != enclosing:
        raise DataError(
            f"{label(node.path + '.parent_id')} {parent_id} does not match the enclosing message {enclosing}"
        )


def _exclusion_reason(message: Message, include_synthetic: bool) -> str | None:
    """'deleted' or 'synthetic' when this message (and so everything below it) is not usable human data."""
    if message.deleted or message.review_result is False:
        return "deleted"
    if message.synthetic and not include_synthetic:
        return "synthetic"
    return None


def _usable_replies(
    assistant_replies: list[Message], conversation: list[dict], counts: Counter, include_synthetic: bool
) -> list[dict]:
    """The usable ranked replies among a user turn's assistant replies; the others are counted by reason."""
    usable = []
    for reply in assistant_replies:
        reason = _exclusion_reason(reply, include_synthetic) or ("unranked" if reply.rank is None else None)
        if reason is not None:
            counts[f"skipped_{reason}"] += 1
            continue
        reply_id = reply.message_id or stable_id(json.dumps(conversation, ensure_ascii=False), reply.text)
        usable.append({"text": reply.text, "rank": reply.rank, "reply_id": reply_id})
    return usable


_OASST_COUNT_KEYS = (
    "trees", "messages", "synthetic_messages", "groups", "replies", "ordered_pairs", "first_turn_groups",
    "skipped_unranked", "skipped_synthetic", "skipped_deleted", "skipped_synthetic_context",
    "skipped_deleted_context", "skipped_too_few_replies", "skipped_duplicate",
)


def _with_all_keys(counts: Counter, keys: tuple[str, ...]) -> dict[str, int]:
    """Every expected key, zeros included, so that reports always have the same shape."""
    return {key: int(counts.get(key, 0)) for key in keys} | {k: int(v) for k, v in counts.items() if k not in keys}


# ----------------------------------------------------------------------------------------------------------------
# Preference pairs (generic and HH-RLHF)
# ----------------------------------------------------------------------------------------------------------------

# A speaker marker of an HH-RLHF dialogue: every turn starts with "\n\nHuman:" or "\n\nAssistant:".
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _parse_hh_dialogue(dialogue: str, where: str) -> list[dict]:
    """An HH-RLHF dialogue as chat messages, consecutive turns of one speaker merged into one message.

    A few HH dialogues have two "Assistant:" turns in a row (an artefact of the collection interface); chat
    templates expect alternating roles, so such turns are joined with a blank line.
    """
    markers = list(_HH_TURN.finditer(dialogue))
    if not markers or markers[0].start() != 0 and dialogue[: markers[0].start()].strip():
        raise DataError(f"{where}: not an HH-RLHF dialogue (expected it to start with '\\n\\nHuman:')")
    messages: list[dict] = []
    for marker, following in zip(markers, markers[1:] + [None]):
        role = _HH_ROLES[marker.group(1)]
        content = dialogue[marker.end() : following.start() if following else len(dialogue)].strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
        else:
            messages.append({"role": role, "content": content})
    return messages


def _split_hh_pair(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str] | None:
    """(shared context, chosen final reply, rejected final reply), or None when the two dialogues do not differ
    only in their final assistant turn (a handful of HH records diverge earlier, or one side continues)."""
    chosen_messages = _parse_hh_dialogue(chosen, f"{where}: field 'chosen'")
    rejected_messages = _parse_hh_dialogue(rejected, f"{where}: field 'rejected'")
    shared = 0
    while (
        shared < min(len(chosen_messages), len(rejected_messages))
        and chosen_messages[shared] == rejected_messages[shared]
    ):
        shared += 1
    # The replies must be exactly one assistant message each after a shared context that ends with a user turn.
    # If the final turns are equal the whole dialogues are equal, so back off by one to compare them as replies.
    if shared == len(chosen_messages) == len(rejected_messages):
        shared -= 1
    chosen_rest, rejected_rest = chosen_messages[shared:], rejected_messages[shared:]
    if (
        shared == 0
        or chosen_messages[shared - 1]["role"] != "user"
        or len(chosen_rest) != 1
        or len(rejected_rest) != 1
        or chosen_rest[0]["role"] != "assistant"
        or rejected_rest[0]["role"] != "assistant"
    ):
        return None
    return chosen_messages[:shared], chosen_rest[0]["content"], rejected_rest[0]["content"]


def _required_string(record: dict, name: str, at: str) -> str:
    if name not in record:
        raise DataError(f"{at}: missing field '{name}'")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{at}: field '{name}' must be a string, got {type(value).__name__} {json.dumps(value)[:60]}")
    return value


def read_preference_pairs(path: str | Path) -> ReadResult:
    """Chosen / rejected pairs as two-reply groups (chosen rank 0, rejected rank 1). ".gz" files are decompressed.

    Two formats, told apart per record by the presence of "prompt":
    - {"prompt": str, "chosen": str, "rejected": str}: the context is one user message, the replies are chosen
      and rejected as they are;
    - HH-RLHF {"chosen": str, "rejected": str}: two whole dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...") that
      share a prefix; the shared messages become the context and the two final assistant turns the replies.

    Left out, and counted in `counts`:
    - skipped_identical: chosen and rejected are the same string (or the same final reply), so there is no
      preference to agree with;
    - skipped_not_final_turn: HH dialogues that differ before their final assistant turn, or where one side has
      more turns: the two replies do not answer the same context;
    - skipped_duplicate: a record whose context and replies were already read.
    Also counted: records, groups, replies, ordered_pairs, first_turn_groups.
    Raises DataError (file:line and field) for a missing or non-string field, or a dialogue that is not in HH form.
    """
    path = Path(path)
    counts: Counter[str] = Counter()
    groups: list[RankedGroup] = []
    seen_group_ids: set[str] = set()
    for line_no, record in _iter_numbered_records(path):
        at = f"{path}:{line_no}"
        counts["records"] += 1
        chosen = _required_string(record, "chosen", at)
        rejected = _required_string(record, "rejected", at)
        if chosen == rejected:
            counts["skipped_identical"] += 1
            continue
        if "prompt" in record:
            prompt = _required_string(record, "prompt", at)
            context = [{"role": "user", "content": prompt}]
        else:
            split = _split_hh_pair(chosen, rejected, at)
            if split is None:
                counts["skipped_not_final_turn"] += 1
                continue
            context, chosen, rejected = split
            if chosen == rejected:  # possible after whitespace is stripped from the turns
                counts["skipped_identical"] += 1
                continue
        replies = [
            {"text": text, "rank": rank, "reply_id": stable_id(json.dumps(context, ensure_ascii=False), text)}
            for rank, text in ((0, chosen), (1, rejected))
        ]
        group = RankedGroup(group_id=_group_id(context, replies), context=context, replies=replies, source=at)
        _add_group(group, groups, seen_group_ids, counts)

    if counts["records"] == 0:
        raise DataError(f"{path}: no records")
    keys = ("records", "groups", "replies", "ordered_pairs", "first_turn_groups",
            "skipped_identical", "skipped_not_final_turn", "skipped_duplicate")
    return ReadResult(groups, _with_all_keys(counts, keys))
