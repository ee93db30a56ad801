"""Question/answer token layout for unstructured edits (methods.md §9 "Chat templates", §13).

Long-form edits put the question in the model's own chat template (when the tokenizer has one)
and append EOS to the answer, as UnKE/AnyEdit/μKE do.  The reference prepends a second BOS when
the template already starts with one; here the templated text is encoded without adding special
tokens whenever it already begins with the BOS string, so there is exactly one.
"""
from __future__ import annotations

import dataclasses

from kedit.errors import DataError

__all__ = ["QAEncoding", "format_question", "encode_question", "encode_qa", "encode_request", "uses_chat"]


@dataclasses.dataclass(frozen=True)
class QAEncoding:
    """``ids`` = question tokens followed by answer tokens; the answer starts at ``n_prompt``."""

    ids: list[int]
    n_prompt: int

    @property
    def answer(self) -> list[int]:
        return self.ids[self.n_prompt:]

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


def format_question(tokenizer, question: str, *, chat: bool = True) -> str:
    """The question as the model sees it: its chat template with the generation prompt, or as is."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return question


def encode_question(tokenizer, question: str, *, chat: bool = True) -> list[int]:
    """Token ids of the formatted question with exactly one BOS (none added if the text has it)."""
    text = format_question(tokenizer, question, chat=chat)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    if not ids:
        raise DataError(f"question {question!r} encodes to no tokens")
    return ids


def encode_qa(tokenizer, question: str, answer: str, *, chat: bool = True, eos: bool = True,
              max_answer_tokens: int | None = None) -> QAEncoding:
    """Question ids + answer ids (+ EOS).  ``max_answer_tokens`` truncates long answers."""
    prompt = encode_question(tokenizer, question, chat=chat)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise DataError(f"answer {answer[:60]!r} encodes to no tokens (question={question[:60]!r})")
    if max_answer_tokens is not None:
        answer_ids = answer_ids[:max_answer_tokens]
    if eos and tokenizer.eos_token_id is not None and (not answer_ids or answer_ids[-1] != tokenizer.eos_token_id):
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    return QAEncoding(prompt + answer_ids, len(prompt))


def uses_chat(tokenizer, request, chat: str | bool = "auto") -> bool:
    """``"auto"``: the chat template for unstructured requests (a question, ``subject=None``) when the
    tokenizer has one; structured facts keep their plain cloze prompt, as their metrics score it."""
    if chat == "auto":
        return request.subject is None and bool(getattr(tokenizer, "chat_template", None))
    return bool(chat)


def encode_request(tokenizer, request, *, chat: str | bool = "auto", max_answer_tokens: int | None = None
                   ) -> QAEncoding:
    """The edit sequence of a request: formatted prompt + target tokens.

    Unstructured requests get EOS after the answer (UnKE/AnyEdit/μKE); structured facts get the
    target with a leading space and no EOS, like every other preset (§1.3).
    """
    if request.subject is None:
        return encode_qa(tokenizer, request.text, request.target_new, chat=uses_chat(tokenizer, request, chat),
                         max_answer_tokens=max_answer_tokens)
    from kedit.stages.tokens import target_ids

    prompt = encode_question(tokenizer, request.text, chat=uses_chat(tokenizer, request, chat))
    answer = target_ids(tokenizer, request.target_new)[:max_answer_tokens]
    return QAEncoding(prompt + answer, len(prompt))
