"""Tests for data/generate_support.py, helpers/data.py and helpers/scoring.py: dataset, loading, scores."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers import ROOT
from helpers import data as hd
from helpers import scoring as hs

SPLIT_NAMES = ("train", "validation", "test")

LLAMA_STYLE_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endgeneration %}{%- else %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
]


def load_generator():
    """Import data/generate_support.py as a module (data/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_support", ROOT / "data" / "generate_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return load_generator()


@pytest.fixture(scope="module")
def support():
    return hd.load_support()


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE tokenizer with Llama-3-style special tokens and chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [
        "Hello, my order 48213 has not arrived yet.",
        "category: refund\norder: 48213\nproduct: trail running shoes",
        "Thank you for reaching out. I have started a refund for your desk lamp.",
    ]
    bpe.train_from_iterator(lines, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        extra_special_tokens=SPECIAL_TOKENS[3:],
    )
    tok.chat_template = LLAMA_STYLE_TEMPLATE
    return tok


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def qa_rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(n)]


# ---------------------------------------------------------------------------
# The generator and the checked-in files
# ---------------------------------------------------------------------------


def test_generator_is_deterministic_and_matches_checked_in_files(generator, tmp_path):
    generator.main(tmp_path / "a")
    generator.main(tmp_path / "b")
    files = [f"support/{split}.jsonl" for split in SPLIT_NAMES] + [
        "pretrain/corpus.txt",
        "pretrain/heldout.txt",
    ]
    for name in files:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), f"{name} differs between two runs"
        assert first == (ROOT / "data" / name).read_bytes(), (
            f"data/{name} is stale: run python data/generate_support.py"
        )


def test_split_sizes_ids_and_key_order(support):
    assert {split: len(ds) for split, ds in support.items()} == {
        "train": 3000,
        "validation": 300,
        "test": 300,
    }
    first_line = (hd.SUPPORT_DIR / "train.jsonl").read_text(encoding="utf-8").split("\n", 1)[0]
    assert list(json.loads(first_line)) == ["id", "category", "order_id", "product", "prompt", "completion"]
    for split, ds in support.items():
        assert ds["id"][0] == f"{split}-00001"
        assert ds["id"][-1] == f"{split}-{len(ds):05d}"


def test_order_numbers_are_disjoint_across_splits(support):
    orders = {split: [o for o in ds["order_id"] if o is not None] for split, ds in support.items()}
    for split, numbers in orders.items():
        assert all(re.fullmatch(r"\d{5}", number) for number in numbers), split
        assert len(numbers) == len(set(numbers)), f"order numbers repeat inside {split}"
    assert not set(orders["train"]) & set(orders["validation"])
    assert not set(orders["train"]) & set(orders["test"])
    assert not set(orders["validation"]) & set(orders["test"])


def test_prompts_are_unique_across_splits(support):
    prompts = [p for split in SPLIT_NAMES for p in support[split]["prompt"]]
    assert len(prompts) == len(set(prompts))


def test_every_completion_has_the_three_header_lines(support, generator):
    for ds in support.values():
        for row in ds:
            rule = generator.CATEGORY_RULES[row["category"]]
            lines = row["completion"].split("\n")
            assert len(lines) == 4, row["id"]
            assert lines[0] == f"category: {row['category']}"
            assert hs.parse_reply(row["completion"]) == {
                "category": row["category"],
                "order": row["order_id"] or "none",
                "product": row["product"] or "none",
            }, row["id"]
            assert (row["order_id"] is None) == (rule["order"] == "never"), row["id"]
            if rule["product"] == "never":
                assert row["product"] is None, row["id"]
            if rule["product"] == "required":
                assert row["product"] is not None, row["id"]
            if row["order_id"]:
                assert row["order_id"] in row["prompt"], row["id"]
            if row["product"]:
                assert row["product"] in row["prompt"], row["id"]
            assert 12 <= len(row["prompt"].split()) <= 60, row["id"]
            assert 15 <= len(lines[3].split()) <= 35, row["id"]
            assert len(row["prompt"].split()) + len(row["completion"].split()) < 120, row["id"]


def test_categories_are_balanced(support, generator):
    counts = {category: support["train"]["category"].count(category) for category in generator.CATEGORIES}
    assert len(counts) == 8
    assert set(counts.values()) == {375}


def test_corpus_is_prose_without_the_reply_format():
    text = (ROOT / "data" / "pretrain" / "corpus.txt").read_text(encoding="utf-8")
    assert 1_400_000 < len(text.encode("utf-8")) < 1_700_000
    assert not re.search(r"(category|order|product)\s*:", text, re.IGNORECASE)
    paragraphs = text.strip().split("\n")
    with_repeated_number = [
        p for p in paragraphs if any(p.count(n) >= 2 for n in re.findall(r"\b\d{5}\b", p))
    ]
    assert len(with_repeated_number) > len(paragraphs) / 3


def _sentence_set(paragraphs) -> set[str]:
    """Every sentence of the paragraphs, lower-cased, without punctuation or repeated spaces."""
    return {
        " ".join(re.sub(r"[^\w\s]", " ", sentence.lower()).split())
        for paragraph in paragraphs
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph)
        if sentence.strip()
    }


def test_the_sentence_check_finds_a_corpus_sentence_in_another_paragraph():
    """The held-out check can fail: one shared sentence, in other company and case, is found."""
    corpus = ["Order 12345 left the depot. The parcel came on Monday!"]
    assert _sentence_set(corpus) & _sentence_set(["Nobody asked. the  PARCEL came on monday"])
    assert not _sentence_set(corpus) & _sentence_set(["The parcel came on Tuesday."])


def test_general_texts_are_held_out_prose_without_the_task():
    """The forgetting check's texts: the tiny model's never read, the real model's not about the task."""
    corpus = set((ROOT / "data" / "pretrain" / "corpus.txt").read_text(encoding="utf-8").splitlines())
    heldout = (ROOT / "data" / "pretrain" / "heldout.txt").read_text(encoding="utf-8").splitlines()
    assert len(heldout) == 200 and not corpus & set(heldout)
    assert not _sentence_set(corpus) & _sentence_set(heldout), (
        "a held-out sentence is in the pretraining corpus"
    )
    general = (ROOT / "data" / "general" / "paragraphs.txt").read_text(encoding="utf-8").splitlines()
    assert len(general) == len(set(general)) == 80 and all(60 <= len(p.split()) <= 110 for p in general)
    for text in heldout + general:
        assert not re.search(r"(category|order|product)\s*:", text, re.IGNORECASE)
    assert not re.search(r"\b(refund|parcel|password|customer)\b", " ".join(general), re.IGNORECASE)


def test_corpus_uses_no_evaluation_order_numbers(support):
    text = (ROOT / "data" / "pretrain" / "corpus.txt").read_text(encoding="utf-8")
    corpus_numbers = set(re.findall(r"\b\d{5}\b", text))
    for split in ("validation", "test"):
        assert not corpus_numbers & {o for o in support[split]["order_id"] if o}


# ---------------------------------------------------------------------------
# load_support
# ---------------------------------------------------------------------------


def test_load_support_takes_the_first_n(support):
    small = hd.load_support({"train": 800, "test": 100})
    assert (len(small["train"]), len(small["validation"]), len(small["test"])) == (800, 300, 100)
    assert small["train"]["id"] == support["train"]["id"][:800]


def test_load_support_rejects_bad_split_sizes():
    with pytest.raises(
        ValueError,
        match=r"split_sizes names split 'dev', but the splits are \['train', 'validation', 'test'\]",
    ):
        hd.load_support({"dev": 10})
    with pytest.raises(ValueError, match=r"asks for 5000 rows of 'train', but it has only 3000"):
        hd.load_support({"train": 5000})


# ---------------------------------------------------------------------------
# Reading files and validating examples
# ---------------------------------------------------------------------------


def test_malformed_jsonl_reports_file_and_line(tmp_path):
    path = write(
        tmp_path / "x.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": }\n'
    )
    with pytest.raises(ValueError, match=r"x\.jsonl line 3 is not valid JSON: Expecting value"):
        hd.load_dataset_any(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"prompt": "a", "completion": "b"}\n["a", "b"]\n')
    with pytest.raises(ValueError, match=r"x\.jsonl line 2 is a JSON list, not an object"):
        hd.load_dataset_any(str(path))


def test_missing_columns_list_available_columns_and_suggest_column_map(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(ValueError) as info:
        hd.load_dataset_any(str(path))
    message = str(info.value)
    assert "missing column(s) ['prompt', 'completion']" in message
    assert "Available columns: ['question', 'answer']" in message
    assert "column_map={'prompt':" in message


def test_empty_answer_reports_row_index(tmp_path):
    rows = qa_rows(5)
    rows[2]["completion"] = "   "
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"'completion' is empty or only whitespace in 1 row\(s\), first rows \[2\]"
    ):
        hd.load_dataset_any(str(path))


def test_mixed_types_in_jsonl_are_reported(tmp_path):
    rows = qa_rows(4)
    rows[1]["completion"] = 42
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"column 'completion' mixes value types: mostly string, but number in rows \[1\]"
    ):
        hd.load_dataset_any(str(path))


def test_non_string_values_are_reported():
    ds = Dataset.from_dict({"prompt": ["a", "b", "c"], "completion": [1, 2, 3]})
    with pytest.raises(
        ValueError,
        match=r"'completion' is not a string in 3 row\(s\), first rows \[0, 1, 2\] \(row 0 holds number 1\)",
    ):
        hd.validate_examples(ds, "numbers.jsonl")
    ds = Dataset.from_dict({"prompt": ["a", None], "completion": ["b", "c"]})
    with pytest.raises(
        ValueError,
        match=r"^nulls: 'prompt' is not a string in 1 row\(s\), first rows \[1\] "
        r"\(row 1 holds NoneType None\)",
    ):
        hd.validate_examples(ds, "nulls")


def test_validate_examples_accepts_good_data():
    hd.validate_examples(Dataset.from_list(qa_rows(3)), "good")


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.jsonl", "")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty\. Expected at least one example"):
        hd.load_dataset_any(str(path))
    path = write(tmp_path / "blank.csv", "\n  \n")
    with pytest.raises(ValueError, match=r"blank\.csv is empty"):
        hd.load_dataset_any(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.jsonl does not exist"):
        hd.load_dataset_any(str(tmp_path / "nothere.jsonl"))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        '{"prompt": "a", "completion": "b"}\n{"prompt": "café", "completion": "b"}\n'.encode("latin-1")
    )
    with pytest.raises(ValueError) as info:
        hd.load_dataset_any(str(path))
    message = str(info.value)
    assert "latin.jsonl is not UTF-8 text: byte 0xe9 on line 2 cannot be decoded" in message
    assert "Re-save the file as UTF-8" in message


def test_json_list_file(tmp_path):
    path = write(tmp_path / "x.json", json.dumps(qa_rows(10)))
    dd = hd.load_dataset_any(str(path))
    assert sum(len(ds) for ds in dd.values()) == 10


# ---------------------------------------------------------------------------
# Normalising other formats
# ---------------------------------------------------------------------------


def test_alpaca_columns_are_mapped(tmp_path):
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
        {"instruction": "Say hi.", "input": "   ", "output": "Hi"},
    ] * 4
    dd = hd.load_dataset_any(str(write_jsonl(tmp_path / "alpaca.jsonl", rows)))
    pairs = {(p, c) for ds in dd.values() for p, c in zip(ds["prompt"], ds["completion"], strict=True)}
    assert pairs == {
        ("Translate to French.\n\nGood morning", "Bonjour"),
        ("Name a colour.", "Blue"),
        ("Say hi.", "Hi"),
    }
    assert "instruction" in dd["train"].column_names  # other columns are kept


def test_messages_are_mapped_to_the_last_exchange():
    ds = Dataset.from_dict(
        {
            "messages": [
                [
                    {"role": "system", "content": "Be kind."},
                    {"role": "user", "content": "first question"},
                    {"role": "assistant", "content": "first answer"},
                    {"role": "user", "content": "second question"},
                    {"role": "assistant", "content": "second answer"},
                ],
                [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
            ]
        }
    )
    out = hd.normalise_columns(ds)
    assert out["prompt"] == ["second question", "hello"]
    assert out["completion"] == ["second answer", "hi"]


def test_messages_without_assistant_reply_are_reported():
    ds = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
                [{"role": "user", "content": "anyone there?"}],
            ]
        }
    )
    with pytest.raises(
        ValueError,
        match=r"chat: 1 row\(s\) of 'messages' have no user message followed by an assistant message, "
        r"first rows \[1\]",
    ):
        hd.normalise_columns(ds, source_name="chat")


def test_csv_with_column_map(tmp_path):
    lines = ["question,answer,topic"] + [f"q{i},a{i},t{i}" for i in range(20)]
    path = write(tmp_path / "faq.csv", "\n".join(lines) + "\n")
    dd = hd.load_dataset_any(str(path), column_map={"prompt": "question", "completion": "answer"})
    assert list(dd) == ["train", "validation", "test"]
    assert [len(ds) for ds in dd.values()] == [16, 2, 2]
    assert set(dd["train"].column_names) == {"prompt", "completion", "topic"}
    everything = sorted(p for ds in dd.values() for p in ds["prompt"])
    assert everything == sorted(f"q{i}" for i in range(20))
    again = hd.load_dataset_any(str(path), column_map={"prompt": "question", "completion": "answer"})
    assert again["test"]["prompt"] == dd["test"]["prompt"]  # the split is deterministic


def test_column_map_errors(tmp_path):
    path = write(tmp_path / "faq.csv", "question,answer\nq,a\nq2,a2\nq3,a3\n")
    with pytest.raises(
        ValueError,
        match=r"column_map refers to column\(s\) \['reply'\] that do not exist\. "
        r"Available columns: \['question', 'answer'\]",
    ):
        hd.load_dataset_any(str(path), column_map={"prompt": "question", "completion": "reply"})
    with pytest.raises(
        ValueError, match=r"column_map keys must be 'prompt' and/or 'completion', got \['answer'\]"
    ):
        hd.load_dataset_any(str(path), column_map={"answer": "answer"})


def test_too_few_rows_to_split(tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", qa_rows(2))
    with pytest.raises(ValueError, match=r"cannot split off a validation split from only 1 training rows"):
        hd.load_dataset_any(str(path))


def test_hub_dataset_is_loaded_with_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(source):
        calls.append(source)
        return DatasetDict(
            {
                "train": Dataset.from_dict({"question": [f"q{i}" for i in range(30)], "answer": ["a"] * 30}),
                "test": Dataset.from_dict({"question": ["tq1", "tq2"], "answer": ["a", "b"]}),
            }
        )

    monkeypatch.setattr(hd.datasets, "load_dataset", fake_load_dataset)
    dd = hd.load_dataset_any("someone/faq", column_map={"prompt": "question", "completion": "answer"})
    assert calls == ["someone/faq"]
    assert [len(dd[s]) for s in SPLIT_NAMES] == [28, 2, 2]
    assert dd["test"]["prompt"] == ["tq1", "tq2"]
    with pytest.raises(
        ValueError, match=r"someone/faq has no split 'dev'\. Available splits: \['train', 'test'\]"
    ):
        hd.load_dataset_any("someone/faq", split="dev")


def test_support_source_name():
    dd = hd.load_dataset_any("support")
    assert [len(dd[s]) for s in SPLIT_NAMES] == [3000, 300, 300]


# ---------------------------------------------------------------------------
# Conversational format and token lengths
# ---------------------------------------------------------------------------


def test_to_conversational():
    ds = Dataset.from_list(
        [{"prompt": "Where is order 12345?", "completion": "category: shipping_delay", "id": "x"}]
    )
    plain = hd.to_conversational(ds)[0]
    assert plain["prompt"] == [{"role": "user", "content": "Where is order 12345?"}]
    assert plain["completion"] == [{"role": "assistant", "content": "category: shipping_delay"}]
    assert plain["id"] == "x"
    with_system = hd.to_conversational(ds, system_prompt="You are a support agent.")[0]
    assert with_system["prompt"][0] == {"role": "system", "content": "You are a support agent."}
    assert with_system["prompt"][1]["role"] == "user"


def test_length_report(tokenizer):
    ds = Dataset.from_list(
        [
            {"prompt": "hi", "completion": "ok"},
            {"prompt": "Hello, my order 48213 has not arrived yet. " * 3, "completion": "category: refund"},
            {"prompt": "where is it", "completion": "on its way"},
        ]
    )
    expected = [
        len(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
            )["input_ids"]
        )
        for p, c in zip(ds["prompt"], ds["completion"], strict=True)
    ]
    report = hd.length_report(ds, tokenizer, max_length=max(expected) - 1)
    assert report["n"] == 3
    assert report["max"] == max(expected)
    assert report["mean"] == round(sum(expected) / 3, 1)
    assert report["p95"] == max(expected)
    assert report["too_long"] == 1
    assert report["too_long_indices"] == [1]
    assert hd.length_report(hd.to_conversational(ds), tokenizer, 10_000)["max"] == max(expected)


def test_check_lengths_and_drop_too_long(tokenizer, capsys):
    ds = Dataset.from_list(
        [{"prompt": "hi", "completion": "ok"}, {"prompt": "a much longer question " * 5, "completion": "ok"}]
    )
    longest = hd.length_report(ds, tokenizer, 10_000)["max"]
    limit = longest - 1
    with pytest.raises(ValueError) as info:
        hd.check_lengths(ds, tokenizer, limit)
    message = str(info.value)
    assert (
        f"1 of 2 examples are longer than max_length={limit} tokens (longest: "
        f"{longest} tokens; first rows [1])"
        in message
    )
    assert f"raise max_length to at least {longest}" in message
    assert f"drop_too_long(ds, tokenizer, {limit})" in message
    assert hd.check_lengths(ds, tokenizer, longest)["too_long"] == 0
    kept = hd.drop_too_long(ds, tokenizer, limit)
    assert kept["prompt"] == ["hi"]
    assert f"dropped 1 of 2 examples longer than {limit} tokens" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Parsing and scoring replies
# ---------------------------------------------------------------------------


def test_parse_reply():
    text = (
        "\n  category:  refund \norder:48213\nproduct: trail running shoes\n"
        "Thanks! product: other\ncategory: x"
    )
    assert hs.parse_reply(text) == {"category": "refund", "order": "48213", "product": "trail running shoes"}
    assert hs.parse_reply("category: refund\norder: none") == {
        "category": "refund",
        "order": "none",
        "product": None,
    }
    assert hs.parse_reply("I am not sure.") == {"category": None, "order": None, "product": None}


def test_score_replies():
    references = [
        "category: refund\norder: 11111\nproduct: desk lamp\nThanks.",
        "category: return\norder: 22222\nproduct: yoga mat\nThanks.",
        "category: account_access\norder: none\nproduct: none\nThanks.",
        "category: cancel_order\norder: 44444\nproduct: none\nThanks.",
    ]
    predictions = [
        "category: refund\norder: 11111\nproduct: desk lamp\nSomething else entirely.",
        "category: return\norder: 22223\nproduct: yoga mat\nThanks.",
        "category: account_access\nproduct: none\nThanks.",
        "category: refund\norder: 44444\nproduct: none\nThanks.",
    ]
    scores = hs.score_replies(predictions, references)
    assert scores == {
        "n": 4,
        "accuracy": 0.25,
        "category": 0.75,
        "order": 0.5,
        "product": 1.0,
        "per_reply": [1, 0, 0, 0],
    }
    with pytest.raises(ValueError, match=r"score_replies got 1 predictions but 4 references"):
        hs.score_replies(predictions[:1], references)
    with pytest.raises(ValueError, match=r"reference 0 has no line for \['order', 'product'\]"):
        hs.score_replies(["x"], ["category: refund"])


def test_chrf_is_100_for_identical_texts_and_low_for_unrelated_ones():
    texts = [
        "Water the fern twice a week.",
        "Paris is the capital of France.",
        "Ünïcode, émojis 🌿 and\nnew lines.",
    ]
    same = hs.chrf_scores(texts, texts)
    assert same == {"metric": "chrF", "n": 3, "chrF": pytest.approx(100), "chrF_mean": pytest.approx(100),
                    "per_reply": pytest.approx([100, 100, 100])}
    unrelated = hs.chrf_scores(["zebra quokka 4711", "xylophone"], texts[:2])
    assert 0 <= unrelated["chrF"] < 15 and 0 <= unrelated["chrF_mean"] < 15
    empty = hs.chrf_scores(["", "Paris is the capital of France."], texts[:2])  # a model may say nothing
    assert empty["chrF_mean"] == pytest.approx(50) and 0 < empty["chrF"] < 100
    assert hs.chrf_scores(["", " "], ["a", "b"])["chrF"] == 0
    with pytest.raises(ValueError, match=r"chrf_scores got 1 predictions but 2 references"):
        hs.chrf_scores(["x"], texts[:2])


def test_score_any_uses_task_accuracy_only_when_every_reference_has_the_header_lines():
    support = [
        "category: refund\norder: 11111\nproduct: desk lamp\nThanks.",
        "category: return\norder: none\nproduct: none",
    ]
    scores = hs.score_any(support, support)
    assert scores == {"metric": "task accuracy", **hs.score_replies(support, support)}
    assert hs.headline(scores) == 1.0
    # one reference without the header lines
    mixed = hs.score_any(["Bonjour", "Blue"], ["Bonjour", support[0]])
    assert mixed["metric"] == "chrF" and mixed["n"] == 2 and hs.headline(mixed) == mixed["chrF"]


def test_split_sizes_take_at_most_what_your_data_has(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(30))  # 3 rows split off for test, 3 for validation
    dd = hd.load_dataset_any(str(path), split_sizes={"train": 2000, "validation": 2, "test": 300})
    assert [len(dd[s]) for s in SPLIT_NAMES] == [24, 2, 3]
    with pytest.raises(ValueError, match=r"asks for 5000 rows of 'train', but it has only 3000"):
        hd.load_dataset_any("support", split_sizes={"train": 5000})  # the course's data: exact sizes


def test_a_hub_dataset_that_cannot_be_loaded_names_the_fix(monkeypatch):
    def offline(source):
        raise ConnectionError("Couldn't reach 'someone/faq' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hd.datasets, "load_dataset", offline)
    with pytest.raises(
        ValueError,
        match=r"Could not load 'someone/faq' from the Hugging Face Hub \(ConnectionError: "
        r"Couldn't reach.*`hf auth login`.*local \.jsonl, \.json or \.csv file",
    ):
        hd.load_dataset_any("someone/faq")
