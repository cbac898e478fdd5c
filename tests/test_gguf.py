"""GGUF export (helpers/gguf.py): llama.cpp's converter on the tiny model; checks that catch bad files."""

import json
import shutil
import sys

import pytest

from helpers import ROOT
from helpers.chat import CHAT_TEMPLATE_KWARGS, end_of_turn, load_tokenizer
from helpers.gguf import (
    export_gguf,
    llama_cpp_lines,
    metadata_problems,
    modelfile_template,
    pre_tokenizer_name,
    quantize_gguf,
    read_metadata,
    token_mismatches,
)

TINY = ROOT / "models" / "tiny-llama-support"
sys.path.insert(0, str(ROOT / "scripts"))
import export_gguf as export_script  # noqa: E402
import gguf_check  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TINY))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model as f16 by scripts/export_gguf.py, which exits with an error if a check fails (q8_0 is
    exported and checked by notebooks 2 and 3)."""
    out = tmp_path_factory.mktemp("gguf")
    files = export_script.main([str(TINY), "--out", str(out), "--outtypes", "f16"])
    return {path.name: path for path in files}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The export a learner gets from a folder saved with the base model's end of text as its end of
    sequence and no chat template."""
    folder = tmp_path_factory.mktemp("broken-model")
    for path in TINY.iterdir():
        if path.name != "chat_template.jinja":
            shutil.copy(path, folder / path.name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|end_of_text|>"
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("config.json", "generation_config.json"):
        data = json.loads((folder / name).read_text())
        data["eos_token_id"] = 1  # <|end_of_text|> in the tiny vocabulary
        (folder / name).write_text(json.dumps(data))
    return export_gguf(folder, tmp_path_factory.mktemp("broken-gguf"), "broken", outtypes=("f16",))


def test_the_tiny_tokenizer_is_named_by_its_split_rule(exported):
    assert pre_tokenizer_name(TINY) == "llama-bpe"  # the converter does not know it by its hash
    assert read_metadata(exported["tiny-llama-support-f16.gguf"])["tokenizer.ggml.pre"] == "llama-bpe"


def test_split_rules_are_read_from_tokenizer_json(tmp_path):
    def folder_with(pre_tokenizer: dict):
        (tmp_path / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": pre_tokenizer}))
        return tmp_path

    assert pre_tokenizer_name(folder_with({"type": "ByteLevel", "use_regex": True})) == "gpt-2"
    assert pre_tokenizer_name(folder_with({"type": "Whitespace"})) is None


def test_a_good_export_has_no_metadata_problems(exported, tokenizer):
    metadata = read_metadata(exported["tiny-llama-support-f16.gguf"])
    eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    assert metadata["tokenizer.ggml.eos_token_id"] == eot
    assert metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert metadata_problems(metadata, tokenizer) == []


def test_a_wrong_end_of_turn_or_missing_template_is_caught(broken, tokenizer):
    metadata = read_metadata(broken.paths["f16"])
    assert metadata["tokenizer.ggml.eos_token_id"] == 1
    problems = metadata_problems(metadata, tokenizer)
    assert [p.split(":")[0] for p in problems] == ["end of turn", "chat template"], problems


def test_each_metadata_fault_is_caught_alone(exported, tokenizer):
    good = read_metadata(exported["tiny-llama-support-f16.gguf"])
    eot = good["tokenizer.ggml.eos_token_id"]
    faults = {
        "end of turn": {"tokenizer.ggml.eos_token_id": eot + 1},
        "chat template": {"tokenizer.chat_template": tokenizer.chat_template.replace("assistant", "bot")},
        "pad": {"tokenizer.ggml.padding_token_id": eot},
    }
    for name, fault in faults.items():
        assert [p.split(":")[0] for p in metadata_problems({**good, **fault}, tokenizer)] == [name]


def test_the_files_vocabulary_encodes_as_the_tokenizer(exported, tokenizer):
    assert token_mismatches(exported["tiny-llama-support-f16.gguf"], tokenizer) == []


def test_a_token_the_file_lacks_is_caught(exported):
    """Training added a pad token, then the folder was saved with the tokenizer from before it."""
    trained = load_tokenizer(str(TINY))
    trained.add_special_tokens({"additional_special_tokens": ["<|pad|>"]})
    wrong = token_mismatches(exported["tiny-llama-support-f16.gguf"], trained)
    assert wrong and all("<|pad|>" in text for text, _, _ in wrong)


def test_the_modelfile_writes_the_prompt_as_trained(exported, tokenizer):
    question = "Where is order 12345?"
    rendered = modelfile_template(tokenizer).replace("{{ .Prompt }}", question).replace("{{ .Response }}", "")
    trained = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                            add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS)
    assert tokenizer.bos_token + rendered == trained + end_of_turn(tokenizer)  # llama.cpp adds the BOS
    text = exported["Modelfile"].read_text()
    assert "FROM ./tiny-llama-support-f16.gguf\n" in text
    assert f'PARAMETER stop "{end_of_turn(tokenizer)}"' in text


def test_the_committed_llama_cpp_check_stopped_at_the_end_of_turn():
    check = json.loads((ROOT / "results" / "gguf.json").read_text())
    lines = llama_cpp_lines(check)
    assert check["prompt_equal"] and check["tokens"]["equal"] == check["tokens"]["texts"]
    for run in check["files"].values():
        assert run["stopped"] >= 0.95 * run["replies"], run  # a wrong end of turn stops none
    f16 = check["files"]["f16"]  # the merged weights: each reply that ran on, runs on in transformers too
    assert f16["stopped"] + f16["same_weights_ran_to_the_limit"] == f16["replies"], f16
    assert len(lines) == 3 + len(check["files"])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gguf_check.readme_block(readme, check) == readme, "run python scripts/gguf_check.py --readme"


def test_a_k_quant_without_the_f16_file_is_refused_before_converting(tmp_path):
    with pytest.raises(ValueError, match="Q4_K_M is quantized from the f16 file: add 'f16'"):
        export_gguf(TINY, tmp_path, "tiny", outtypes=("q8_0", "Q4_K_M"))
    assert list(tmp_path.iterdir()) == []
    # quantizing another file would name the result as that file, and replace it
    with pytest.raises(ValueError, match="needs an f16 file"):
        quantize_gguf(tmp_path / "tiny-q8_0.gguf", "Q4_K_M")
