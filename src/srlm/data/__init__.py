"""Seed data: building srlm's IFT and EFT inputs from public data sets, and keeping evaluation prompts out of them.

- `srlm.data.oasst`: OpenAssistant (OASST1/OASST2) trees or message tables -> IFT pairs and ranked EFT groups,
  with the paper's prompt sets kept disjoint (Yuan et al. 2024, section 2; spec section 2.1-2.2).
- `srlm.data.formats`: common instruction-data formats (Alpaca, ShareGPT, OpenAI messages, ...) -> srlm's schemas.
- `srlm.data.decontaminate`: drops records whose prompt is (nearly) an evaluation prompt.
- the `srlm data ...` subcommands live in `srlm.cli.data`.

Nothing is imported here on purpose: `datasets`, `pyarrow` and `rouge_score` are slow to import, and only the
submodule that needs them should pay for it.
"""
