from srlm.backends import make_backend
from srlm.config import PromptsConfig
from srlm.io import read_jsonl
from srlm.stages.prompts import PromptFilter, few_shot_prompt, split_items, run_prompts

SEEDS = [
    "Explain how a rainbow forms after a storm.",
    "Give three tips for staying focused while studying.",
    "Summarize the causes of the First World War in a paragraph.",
    "Suggest a name for a bakery that sells vegan bread.",
    "Convert 30 degrees Celsius to Fahrenheit and show the steps.",
    "Describe the taste of a ripe mango to someone who has never had one.",
    "List the planets of the solar system in order from the sun.",
    "Write a short thank-you note to a neighbour who watered my plants.",
]


def test_few_shot_prompt_is_a_numbered_list_ending_in_the_next_number():
    text = few_shot_prompt(["Do a.", "Do  b\\nnow."])
    assert text == "Come up with a series of tasks:\n1. Do a.\n2. Do b\\nnow.\n3."


def test_split_items_drops_the_unfinished_last_item():
    completion = " Plan a picnic for six people.\n10. Explain tides to a child.\n11. Describe the"
    assert split_items(completion, cut_at_length=True) == ["Plan a picnic for six people.", "Explain tides to a child."]
    assert split_items(completion, cut_at_length=False)[-1] == "Describe the"


def test_filters_name_their_reason():
    f = PromptFilter(SEEDS, PromptsConfig())
    assert f.check("Hi there") == "length"
    assert f.check(" ".join(["word"] * 151)) == "length"
    assert f.check("Draw a picture of a cat in the snow.") == "keyword"
    assert f.check("Write a program that sorts numbers quickly.") == "keyword"
    assert f.check("Describe the map of your home town.") == "keyword"
    assert f.check("- Explain the rules of chess briefly.") == "punctuation"
    assert f.check("Écris un poème sur la mer, s'il te plaît.") == "non_ascii"
    assert f.check("explain how a rainbow   forms after a storm.") == "duplicate"
    assert f.check("Explain how a rainbow forms after a big storm.") == "similar"
    assert f.check("Recommend a board game for a family of four.") is None


def test_run_prompts_keeps_the_budget_counts_rejections_and_resumes(tmp_path):
    backend = make_backend("fake")
    cfg = PromptsConfig(num_prompts=10, max_attempts=40)
    out = tmp_path / "prompts.jsonl"
    stats = run_prompts(SEEDS, [], out, backend, cfg, seed=0)
    kept = read_jsonl(out)
    assert stats["kept"] == len(kept) == 10
    assert stats["candidates"] == stats["kept"] + sum(stats["rejected"].values())
    assert len({r["prompt_id"] for r in kept}) == 10
    assert all(r["source"] == "generated" and r["iteration"] == 1 for r in kept)
    log = read_jsonl(tmp_path / "prompts.attempts.jsonl")
    assert len(log) == stats["attempts"]

    # A run killed after its first batch of attempts resumes from the log and keeps the same prompts.
    out2 = tmp_path / "again" / "prompts.jsonl"
    out2.parent.mkdir()
    partial = out2.with_name("prompts.attempts.jsonl.partial")
    partial.write_text("".join(line for line in (tmp_path / "prompts.attempts.jsonl").read_text().splitlines(True)[:8]))
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(backend, name)

        def generate(self, requests, on_done=None):
            calls.append([r.request_id for r in requests])
            return backend.generate(requests, on_done)

    run_prompts(SEEDS, [], out2, Counting(), cfg, seed=0)
    assert read_jsonl(out2) == kept
    assert all(int(rid.split("-")[1]) >= 8 for batch in calls for rid in batch)  # nothing generated twice


def test_prompts_in_other_scripts_are_compared_by_their_words():
    """rouge-score's own tokenizer deletes non-ASCII letters, so two different prompts in another script looked
    identical to the similarity filter; they are compared by their words now, as decontamination does."""
    from srlm.config import PromptsConfig
    from srlm.stages.prompts import PromptFilter

    pool = PromptFilter(["Erkläre mir bitte, wie Photosynthese in Pflanzen funktioniert."], PromptsConfig())
    assert pool.check("Schreibe ein kurzes Gedicht über den Herbst im Wald.") is None
    assert pool.check("Erkläre mir bitte, wie Photosynthese in Pflanzen funktioniert!") == "duplicate"
