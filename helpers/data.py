"""Loading and checking the fine-tuning data, its chat format, token lengths and batches.

Every dataset is normalised to two string columns, `prompt` and `completion`.
Problems are reported as ValueError messages that say what is wrong, where, and
how to fix it. Nothing is truncated or dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from helpers import ROOT

SUPPORT_DIR = ROOT / "data" / "support"
_SPLITS = ("train", "validation", "test")
# the tiny model's generator, unseen sentences
_HELDOUT_TEXT = SUPPORT_DIR.parent / "pretrain" / "heldout.txt"
# general English prose written for this course
_GENERAL_TEXT = SUPPORT_DIR.parent / "general" / "paragraphs.txt"
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")
_SPLIT_SEED = 42
_SHOW_ROWS = 5  # how many row indices an error message lists


# ---------------------------------------------------------------------------
# Reading local files
# ---------------------------------------------------------------------------


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with clear errors for missing, empty or non-UTF-8 files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Check the path (relative paths start at {Path.cwd()})."
        )
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty. Expected at least one example with a prompt and a completion.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line} cannot be "
            "decoded. Re-save the file as UTF-8 (in most editors: "
            "Save As, then choose the UTF-8 encoding) and try again."
        ) from None


def _read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON Lines file into a list of dicts; bad lines are reported by line number."""
    text = read_text(path)
    rows = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} line {line_number} is not valid JSON: {err.msg} (column {err.colno}). "
                'Each line must be one complete JSON object, e.g. {"prompt": "...", "completion": "..."}.'
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"{path} line {line_number} is a JSON {type(value).__name__}, not an object. "
                'Each line must be one JSON object, e.g. {"prompt": "...", "completion": "..."}.'
            )
        rows.append(value)
    if not rows:
        raise ValueError(f"{path} has no examples (only blank lines). Expected one JSON object per line.")
    return rows


def _read_json(path: str | Path) -> list[dict]:
    """Read a .json file holding a list of objects (or JSON Lines saved as .json)."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several objects, one per line: JSON Lines with a .json name
            return _read_jsonl(path)
        raise ValueError(
            f"{path} line {err.lineno} is not valid JSON: {err.msg} (column {err.colno}). "
            "Expected a list of objects, or one JSON object per line."
        ) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(
                f"{path} holds one JSON object with keys {list(value)}. "
                'Expected a list of examples, e.g. [{"prompt": "...", "completion": "..."}, ...].'
            )
        value = lists[0]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path} holds no examples. Expected a non-empty list of JSON objects.")
    not_objects = [i for i, row in enumerate(value) if not isinstance(row, dict)]
    if not_objects:
        raise ValueError(
            f"{path}: items {not_objects[:_SHOW_ROWS]} of the list are not JSON objects. "
            'Every item must look like {"prompt": "...", "completion": "..."}.'
        )
    return value


def _read_csv(path: str | Path) -> list[dict]:
    """Read a CSV file with a header row into a list of dicts (all values are strings)."""
    text = read_text(path)
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError(
            f"{path} has a header line but no rows. Expected one example per line after the header."
        )
    return rows


def _rows_to_dataset(rows: list[dict], source_name: str) -> Dataset:
    """Turn a list of dicts into a Dataset, reporting columns whose value types are mixed."""
    columns: dict[str, list] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    for key in columns:
        columns[key] = [row.get(key) for row in rows]
    for key, values in columns.items():
        kinds = [_type_name(v) for v in values if v is not None]
        if len(set(kinds)) > 1:
            common = Counter(kinds).most_common(1)[0][0]
            odd = [i for i, v in enumerate(values) if v is not None and _type_name(v) != common]
            raise ValueError(
                f"{source_name}: column '{key}' mixes value types: mostly {common}, but "
                f"{_type_name(values[odd[0]])} in rows {odd[:_SHOW_ROWS]} (rows counted from 0). "
                f"Expected one type per column; fix: make every '{key}' value a {common} "
                "(for text, put the value in quotes)."
            )
    return Dataset.from_dict(columns)


def _type_name(value: object) -> str:
    """A short, readable type name for error messages ('number' for int and float)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_support(split_sizes: dict | None = None) -> DatasetDict:
    """Load the course's support dataset (train/validation/test), optionally the first N of each split."""
    splits = {}
    for split in _SPLITS:
        path = SUPPORT_DIR / f"{split}.jsonl"
        ds = _rows_to_dataset(_read_jsonl(path), str(path))
        validate_examples(ds, str(path))
        splits[split] = ds
    dd = DatasetDict(splits)
    if split_sizes:
        dd = _take_first(dd, split_sizes)
    return dd


def example_ids(ds: Dataset) -> list[str]:
    """Each example's id: the `id` column where it has one unique value per row, else the row number."""
    if "id" in ds.column_names and len(set(ds["id"])) == len(ds):
        return [str(i) for i in ds["id"]]
    return [str(i) for i in range(len(ds))]


def load_general_text(profile: str, limit: int | None = None) -> tuple[list[str], str]:
    """The forgetting check's texts (the first `limit`; None: all) and a line that says what they are.

    The tiny model gets paragraphs from its own pretraining generator with no sentence its corpus holds
    (shop-domain prose, the task's domain); every other model the course's general English prose,
    unlike the task.
    """
    path = _HELDOUT_TEXT if profile == "tiny" else _GENERAL_TEXT
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    if profile == "tiny":
        source = "the stand-in's pretraining distribution (shop-domain prose), sentences it never read"
    else:
        source = "general English prose, unlike the task"
    return texts, f"{source} ({path.parent.name}/{path.name}, {len(texts)} paragraphs)"


def _take_first(dd: DatasetDict, split_sizes: dict, cap: bool = False) -> DatasetDict:
    """Keep the first N rows of the named splits, e.g. {"train": 800}; cap: N may exceed a split."""
    result = DatasetDict(dict(dd))
    for split, size in split_sizes.items():
        if split not in dd:
            raise ValueError(f"split_sizes names split '{split}', but the splits are {list(dd)}.")
        if size > len(dd[split]) and not cap:
            raise ValueError(
                f"split_sizes asks for {size} rows of '{split}', but it has only {len(dd[split])}. "
                f"Use a size of at most {len(dd[split])}."
            )
        result[split] = dd[split].select(range(min(size, len(dd[split]))))
    return result


def load_dataset_any(
    source: str, column_map: dict | None = None, split_sizes: dict | None = None, split: str | None = None
) -> DatasetDict:
    """Load "support", a local .jsonl/.json/.csv file or a hub dataset id as checked train/validation/test.

    column_map renames your columns, e.g. {"prompt": "question", "completion": "answer"}.
    split_sizes keeps the first N rows of each split, e.g. {"train": 2000}: all of a smaller split.
    split picks one split of the source, which is then divided into train/validation/test.
    """
    if source == "support":
        return load_support(split_sizes)  # checked as it is read
    if Path(source).suffix.lower() in _LOCAL_SUFFIXES:
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
        rows = readers[Path(source).suffix.lower()](source)
        dd = DatasetDict({"train": _rows_to_dataset(rows, source)})
    elif Path(source).exists():
        raise ValueError(
            f"{source} is a local path but not a .jsonl, .json or .csv file. "
            "Save your data in one of those formats, or pass a Hugging Face dataset id."
        )
    else:
        dd = _load_from_hub(source)
    if split is not None:
        if split not in dd:
            raise ValueError(f"{source} has no split '{split}'. Available splits: {list(dd)}.")
        dd = DatasetDict({"train": dd[split]})
    normalised = {}
    for name, ds in dd.items():
        label = source if len(dd) == 1 else f"{source} ({name} split)"
        ds = normalise_columns(ds, column_map, label)
        validate_examples(ds, label)
        normalised[name] = ds
    dd = _ensure_splits(DatasetDict(normalised), source)
    return _take_first(dd, split_sizes, cap=True) if split_sizes else dd


def _load_from_hub(dataset_id: str) -> DatasetDict:
    """load_dataset(dataset_id) as a DatasetDict; a missing, gated or unreachable dataset names the fix."""
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as error:  # datasets raises several types: not found, gated, offline, bad config
        raise ValueError(
            f"Could not load {dataset_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "Check the id (e.g. 'tatsu-lab/alpaca'), your network, and for a gated dataset `hf auth login`; "
            "or pass a local .jsonl, .json or .csv file."
        ) from error
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def normalise_columns(ds: Dataset, column_map: dict | None = None, source_name: str = "dataset") -> Dataset:
    """Give ds `prompt` and `completion` columns from column_map, Alpaca columns or chat `messages`."""
    if column_map:
        ds = _apply_column_map(ds, column_map, source_name)
    columns = ds.column_names
    if "prompt" in columns or "completion" in columns:
        return ds
    if "instruction" in columns and "output" in columns:
        return _from_alpaca(ds)
    if "messages" in columns:
        return _from_messages(ds, source_name)
    return ds  # validate_examples explains what is missing


def _apply_column_map(ds: Dataset, column_map: dict, source_name: str) -> Dataset:
    """Rename the columns named in column_map to `prompt` / `completion`."""
    unknown = [key for key in column_map if key not in ("prompt", "completion")]
    if unknown:
        raise ValueError(
            f"column_map keys must be 'prompt' and/or 'completion', got {unknown}. "
            "Example: column_map={'prompt': 'question', 'completion': 'answer'}."
        )
    missing = [column for column in column_map.values() if column not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source_name}: column_map refers to column(s) {missing} that do not exist. "
            f"Available columns: {ds.column_names}."
        )
    for target, column in column_map.items():
        if column == target:
            continue
        if target in ds.column_names:
            print(
                f"{source_name}: renaming the existing '{target}' column to 'original_{target}' (column_map)."
            )
            ds = ds.rename_column(target, f"original_{target}")
        ds = ds.rename_column(column, target)
    return ds


def _from_alpaca(ds: Dataset) -> Dataset:
    """prompt = instruction (+ blank line + input when input is not empty), completion = output."""
    inputs = ds["input"] if "input" in ds.column_names else [None] * len(ds)
    prompts = []
    for instruction, extra in zip(ds["instruction"], inputs, strict=True):
        if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
            prompts.append(instruction + "\n\n" + extra)
        else:
            prompts.append(instruction)
    ds = ds.add_column("prompt", prompts)
    return ds.add_column("completion", list(ds["output"]))


def _from_messages(ds: Dataset, source_name: str) -> Dataset:
    """prompt = the user message before the last assistant message, completion = that assistant message."""
    prompts, completions, bad_rows = [], [], []
    for index, messages in enumerate(ds["messages"]):
        prompt, completion = _last_exchange(messages)
        if prompt is None:
            bad_rows.append(index)
        prompts.append(prompt)
        completions.append(completion)
    if bad_rows:
        raise ValueError(
            f"{source_name}: {len(bad_rows)} row(s) of 'messages' have no user message followed by an "
            f"assistant message, first rows {bad_rows[:_SHOW_ROWS]} (counted from 0). "
            'Each conversation needs {"role": "user", ...} then {"role": "assistant", ...}; '
            "fix or remove those rows."
        )
    ds = ds.add_column("prompt", prompts)
    return ds.add_column("completion", completions)


def _last_exchange(messages: object) -> tuple:
    """(user text, assistant text) of the last assistant turn in a chat, or (None, None)."""
    if not isinstance(messages, list):
        return None, None
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if "assistant" not in roles:
        return None, None
    answer_at = len(roles) - 1 - roles[::-1].index("assistant")
    users = [i for i in range(answer_at) if roles[i] == "user"]
    if not users:
        return None, None
    return _message_text(messages[users[-1]]), _message_text(messages[answer_at])


def _message_text(message: dict) -> object:
    """A message's content as text (joins the text parts of list-style content)."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts)
    return content


def _ensure_splits(dd: DatasetDict, source_name: str, seed: int = _SPLIT_SEED) -> DatasetDict:
    """Return train/validation/test, splitting missing ones off train deterministically."""
    dd = DatasetDict({_SPLIT_ALIASES.get(name, name): ds for name, ds in dd.items()})
    if len(dd) == 1:
        dd = DatasetDict({"train": next(iter(dd.values()))})
    if "train" not in dd:
        raise ValueError(
            f"{source_name} has no 'train' split. Available splits: {list(dd)}; pick one with split=."
        )
    train = dd["train"]
    tenth = max(1, round(len(train) * 0.1))
    for name in ("test", "validation"):
        if name in dd:
            continue
        size = len(dd["test"]) if name == "validation" and "test" in dd else tenth
        if len(train) - size < 1:
            raise ValueError(
                f"{source_name}: cannot split off a {name} split from only {len(train)} training rows. "
                "Provide more examples (at least 3) or your own validation and test splits."
            )
        parts = train.train_test_split(test_size=size, seed=seed)
        train, dd[name] = parts["train"], parts["test"]
        print(f"{source_name}: split off {size} rows as '{name}' (seed {seed}).")
    return DatasetDict({"train": train, "validation": dd["validation"], "test": dd["test"]})


# ---------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------


def validate_examples(ds: Dataset, source_name: str) -> None:
    """Raise ValueError unless ds has non-empty string `prompt` and `completion` columns."""
    missing = [column for column in ("prompt", "completion") if column not in ds.column_names]
    if missing:
        raise ValueError(
            f"{source_name}: missing column(s) {missing}. Expected text columns 'prompt' and 'completion' "
            "(or Alpaca-style 'instruction'/'input'/'output', or a chat 'messages' column). "
            f"Available columns: {ds.column_names}. Fix: say which columns to use, e.g. "
            "column_map={'prompt': '<question column>', 'completion': '<answer column>'}."
        )
    if len(ds) == 0:
        raise ValueError(f"{source_name} has no rows. Expected at least one example.")
    problems = []
    for column in ("prompt", "completion"):
        values = list(ds[column])
        not_text = [i for i, v in enumerate(values) if not isinstance(v, str)]
        blank = [i for i, v in enumerate(values) if isinstance(v, str) and not v.strip()]
        if not_text:
            example = values[not_text[0]]
            problems.append(
                f"'{column}' is not a string in {len(not_text)} row(s), first rows {not_text[:_SHOW_ROWS]} "
                f"(row {not_text[0]} holds {_type_name(example)} {example!r:.60})"
            )
        if blank:
            problems.append(
                f"'{column}' is empty or only whitespace in {len(blank)} row(s), "
                f"first rows {blank[:_SHOW_ROWS]}"
            )
    if problems:
        raise ValueError(
            f"{source_name}: " + "; ".join(problems) + ". Rows are counted from 0. "
            "Fix: make every prompt and completion a non-empty string, or drop those rows explicitly, e.g. "
            "ds.filter(lambda ex: isinstance(ex['completion'], str) and ex['completion'].strip() != '')."
        )


# ---------------------------------------------------------------------------
# Chat format and token lengths
# ---------------------------------------------------------------------------


def to_conversational(
    ds: Dataset | DatasetDict, system_prompt: str | None = None, chat_template_kwargs: dict | None = None
) -> Dataset | DatasetDict:
    """Turn prompt/completion strings into TRL's conversational prompt-completion format.

    chat_template_kwargs (e.g. {"date_string": "26 Jul 2024"}) is stored per example;
    TRL passes it to the template.
    """

    def convert(example: dict) -> dict:
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": example["prompt"]})
        row = {"prompt": prompt, "completion": [{"role": "assistant", "content": example["completion"]}]}
        if chat_template_kwargs:
            row["chat_template_kwargs"] = dict(chat_template_kwargs)
        return row

    return ds.map(convert, remove_columns=["prompt", "completion"])


def _as_messages(prompt: str | list, completion: str | list) -> list[dict]:
    """One conversation (list of messages) from string or conversational prompt and completion."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(completion, str):
        return messages + [{"role": "assistant", "content": completion}]
    return messages + list(completion)


def token_lengths(ds: Dataset, tokenizer, batch_size: int = 256) -> list[int]:
    """Token count of each example after the tokenizer's chat template (prompt + completion)."""
    conversations = [_as_messages(p, c) for p, c in zip(ds["prompt"], ds["completion"], strict=True)]
    # the same template arguments TRL will use (e.g. a pinned date_string), so lengths match training
    template_kwargs = ds[0]["chat_template_kwargs"] if "chat_template_kwargs" in ds.column_names else {}
    lengths = []
    for start in range(0, len(conversations), batch_size):
        encoded = tokenizer.apply_chat_template(
            conversations[start : start + batch_size], tokenize=True, **(template_kwargs or {})
        )
        # transformers 5 returns a BatchEncoding (a dict) by default; older versions return the ids.
        ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
        lengths.extend(len(row) for row in ids)
    return lengths


def length_report(ds: Dataset, tokenizer, max_length: int) -> dict:
    """Token length statistics of ds and how many examples are longer than max_length."""
    lengths = token_lengths(ds, tokenizer)
    if not lengths:
        raise ValueError("length_report got an empty dataset. Expected at least one example.")
    too_long = [i for i, length in enumerate(lengths) if length > max_length]
    ordered = sorted(lengths)
    return {
        "n": len(lengths),
        "max": ordered[-1],
        "mean": round(sum(lengths) / len(lengths), 1),
        "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max_length": max_length,
        "too_long": len(too_long),
        "too_long_indices": too_long[:10],
    }


def check_lengths(ds: Dataset, tokenizer, max_length: int) -> dict:
    """Return length_report, or raise ValueError if any example is longer than max_length tokens."""
    report = length_report(ds, tokenizer, max_length)
    if report["too_long"]:
        raise ValueError(
            f"{report['too_long']} of {report['n']} examples are longer than max_length={max_length} tokens "
            f"(longest: {report['max']} tokens; first rows {report['too_long_indices'][:_SHOW_ROWS]}). "
            "The trainer would cut them off silently. Fix: raise max_length to at least "
            f"{report['max']}, or drop them explicitly with drop_too_long(ds, tokenizer, {max_length})."
        )
    return report


def drop_too_long(ds: Dataset, tokenizer, max_length: int) -> Dataset:
    """Remove examples longer than max_length tokens, printing how many were dropped."""
    lengths = token_lengths(ds, tokenizer)
    keep = [i for i, length in enumerate(lengths) if length <= max_length]
    print(
        f"drop_too_long: dropped {len(ds) - len(keep)} of {len(ds)} examples longer than {max_length} tokens."
    )
    return ds.select(keep)


def padding_share(ds: Dataset, tokenizer, batch_size: int) -> float:
    """The share of padding over consecutive batches of batch_size examples, each padded to its longest."""
    lengths = token_lengths(ds, tokenizer)
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    return 1 - sum(lengths) / sum(max(batch) * len(batch) for batch in batches)


def batches_of_similar_length(ds: Dataset, tokenizer, batch_size: int, seed: int, pool: int = 50) -> Dataset:
    """Reorder ds so that each run of batch_size rows has similar lengths, the runs in random order.

    Train on the result in order (train_sampling_strategy="sequential"). Rows are shuffled, sorted by length
    within pools of `pool` batches, cut into batches, and the batches shuffled. transformers' own
    train_sampling_strategy="group_by_length" keeps each pool longest-first instead, and that ordering cost
    LoRA half its task accuracy in this course (notebook 4, "Making it faster and leaner").
    """
    lengths = token_lengths(ds, tokenizer)
    rng = random.Random(seed)
    order = list(range(len(ds)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), pool * batch_size):
        chunk = sorted(order[start : start + pool * batch_size], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return ds.select([i for batch in batches for i in batch])
