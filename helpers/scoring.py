"""Scoring replies: the three header fields a reply must get right (task accuracy), or chrF on other data."""

from __future__ import annotations

import re

from sacrebleu.metrics import CHRF

REPLY_FIELDS = ("category", "order", "product")
TASK_ACCURACY, CHRF_METRIC = "task accuracy", "chrF"  # what score_any's "metric" says
_HEADER_LINE = re.compile(r"^\s*(category|order|product)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_reply(text: str) -> dict:
    """A reply's category/order/product header values, as written ("none" stays "none"); missing → None."""
    fields = dict.fromkeys(REPLY_FIELDS)
    for line in text.splitlines():
        match = _HEADER_LINE.match(line)
        if match:
            key = match.group(1).lower()
            if fields[key] is None:
                fields[key] = match.group(2)
    return fields


def _check_pairs(scorer: str, predictions: list[str], references: list[str]) -> None:
    """Raise ValueError unless there is one prediction per reference, and at least one."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{scorer} got {len(predictions)} predictions but {len(references)} references. "
            "Pass one prediction per reference, in the same order."
        )
    if not references:
        raise ValueError(f"{scorer} got no predictions. Expected at least one prediction and reference.")


def _has_reply_fields(text: str) -> bool:
    """Whether a reply has all three header lines (category, order and product)."""
    return None not in parse_reply(text).values()


def score_replies(predictions: list[str], references: list[str]) -> dict:
    """Accuracy over n replies of the three header fields together (`accuracy`) and each; each reply's 0/1."""
    _check_pairs("score_replies", predictions, references)
    correct = dict.fromkeys(REPLY_FIELDS, 0)
    per_reply = []  # 1 where all three fields are right: the outcome a paired test compares
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        expected = parse_reply(reference)
        missing = [key for key, value in expected.items() if value is None]
        if missing:
            raise ValueError(
                f"reference {index} has no line for {missing}. References must start with "
                "'category: ...', 'order: ...' and 'product: ...' lines."
            )
        got = parse_reply(prediction)
        matches = [got[key] == expected[key] for key in REPLY_FIELDS]
        for key, match in zip(REPLY_FIELDS, matches, strict=True):
            correct[key] += match
        per_reply.append(int(all(matches)))
    n = len(references)
    return {
        "n": n,
        "accuracy": sum(per_reply) / n,
        **{key: correct[key] / n for key in REPLY_FIELDS},
        "per_reply": per_reply,
    }


def chrf_scores(predictions: list[str], references: list[str]) -> dict:
    """chrF (sacrebleu's character n-gram F-score, 0-100) over the replies as a corpus; its mean per reply."""
    _check_pairs("chrf_scores", predictions, references)
    chrf = CHRF()
    per_reply = [chrf.sentence_score(p, [r]).score for p, r in zip(predictions, references, strict=True)]
    corpus = chrf.corpus_score(list(predictions), [list(references)]).score
    return {
        "metric": CHRF_METRIC,
        "n": len(references),
        "chrF": corpus,
        "chrF_mean": sum(per_reply) / len(per_reply),
        "per_reply": per_reply,
    }


def score_any(predictions: list[str], references: list[str]) -> dict:
    """Task accuracy per field if every reference has the header lines, else chrF; "metric" says which."""
    if all(_has_reply_fields(reference) for reference in references):
        return {"metric": TASK_ACCURACY, **score_replies(predictions, references)}
    return chrf_scores(predictions, references)


def headline(scores: dict) -> float:
    """The one number of score_any's scores: accuracy (0 to 1) for task accuracy, else chrF (0 to 100)."""
    return scores["accuracy"] if scores["metric"] == TASK_ACCURACY else scores["chrF"]
