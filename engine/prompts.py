"""Prompt strings of jina-embeddings-v4: text prefixes per task and role, and the image prompt.

Text gets no chat template and no BOS: just "{Prefix}: {text}". text-matching is symmetric, so it
uses the query prefix for passages too (as the reference implementation silently does).
"""

from __future__ import annotations

QUERY, PASSAGE = "query", "passage"
IMAGE_PAD = "<|image_pad|>"
IMAGE_PROMPT = "<|im_start|>user\n<|vision_start|>" + IMAGE_PAD + "<|vision_end|>Describe the image.<|im_end|>\n"
_PREFIX = {QUERY: "Query: ", PASSAGE: "Passage: "}
_SYMMETRIC_TASKS = frozenset({"text-matching"})


def prefix_for(task: str, role: str) -> str:
    """The string prepended to a text of ``role`` ("query" or "passage") under ``task``."""
    if role not in _PREFIX:
        raise ValueError(f"role must be 'query' or 'passage', got {role!r}")
    if task in _SYMMETRIC_TASKS:
        return _PREFIX[QUERY]
    return _PREFIX[role]


def text_prompt(task: str, role: str, text: str) -> str:
    return prefix_for(task, role) + text


def prefixes(task: str) -> dict[str, str]:
    """For the identity: the exact prefixes this task applies."""
    return {QUERY: prefix_for(task, QUERY), PASSAGE: prefix_for(task, PASSAGE), "image": IMAGE_PROMPT}


def image_prompt(num_image_tokens: int) -> str:
    """The image prompt with its single pad expanded to the merged patch count."""
    return IMAGE_PROMPT.replace(IMAGE_PAD, IMAGE_PAD * num_image_tokens)
