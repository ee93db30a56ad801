"""The one request schema every loader and method shares (DESIGN.md "One request schema")."""
from __future__ import annotations

import dataclasses
from typing import Any

from kedit.errors import DataError, record_message

__all__ = ["EditRequest", "check_requests"]

Pair = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One fact (or one long free-text answer) to write into the model.

    ``prompt`` is a template with exactly one ``{}`` where ``subject`` goes, e.g.
    ``"The mother tongue of {} is"``.  Unstructured edits (a question answered by a long text)
    use ``subject=None`` and a prompt without ``{}``; their edit position is the last prompt token.

    Args:
        prompt: template with one ``{}`` (structured) or plain question text (``subject=None``).
        subject: the entity whose fact changes; must fill the ``{}`` of ``prompt``.
        target_new: the new object / answer (non-empty).
        target_true: the object the unedited model should know (for CounterFact scoring).
        rephrases: paraphrases of the full prompt text (subject filled in), scored like the prompt.
        locality: (prompt, answer) pairs whose answers must not change.
        portability: named groups of (prompt, answer) pairs that should follow from the edit.
        generation_prompts: prompts for free generation (fluency).
        id: a stable identifier (dataset case id) used in journals and manifests.
        domain: the benchmark's category of the record (EditEverything: math, poetry, code …).

    Example:
        >>> r = EditRequest(prompt="{} was born in", subject="Ada", target_new="Paris")
        >>> r.text
        'Ada was born in'
    """

    prompt: str
    subject: str | None
    target_new: str
    target_true: str | None = None
    rephrases: tuple[str, ...] = ()
    locality: tuple[Pair, ...] = ()
    portability: dict[str, tuple[Pair, ...]] = dataclasses.field(default_factory=dict)
    generation_prompts: tuple[str, ...] = ()
    id: str | int | None = None
    domain: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rephrases", tuple(self.rephrases))
        object.__setattr__(self, "locality", tuple(tuple(p) for p in self.locality))
        object.__setattr__(
            self, "portability", {k: tuple(tuple(p) for p in v) for k, v in dict(self.portability).items()}
        )
        object.__setattr__(self, "generation_prompts", tuple(self.generation_prompts))
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self, source: str = "EditRequest", index: int | None = None) -> None:
        """Raise DataError naming source, record and field when the request is malformed."""

        def fail(field_: str, problem: str) -> None:
            raise DataError(record_message(source, index, field_, problem))

        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str):
                fail(name, f"must be a string (got {type(value).__name__})")
        if not self.prompt.strip():
            fail("prompt", "must be non-empty")
        if not self.target_new.strip():
            fail("target_new", f"must be non-empty (prompt={self.prompt!r})")
        if self.target_true is not None and not isinstance(self.target_true, str):
            fail("target_true", f"must be a string or None (got {type(self.target_true).__name__})")
        if self.subject is None:
            if "{}" in self.prompt:
                fail("subject", f"is missing but 'prompt' has a '{{}}' slot (prompt={self.prompt!r})")
        else:
            if not isinstance(self.subject, str):
                fail("subject", f"must be a string (got {type(self.subject).__name__})")
            if not self.subject.strip():
                fail("subject", f"must be non-empty (prompt={self.prompt!r})")
            if self.prompt.count("{}") != 1:
                fail("prompt", f"must contain exactly one '{{}}' for the subject (prompt={self.prompt!r})")
        for i, text in enumerate(self.rephrases):
            if not isinstance(text, str) or not text.strip():
                fail(f"rephrases[{i}]", "must be a non-empty string")
        for i, pair in enumerate(self.locality):
            if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                fail(f"locality[{i}]", f"must be a (prompt, answer) pair of strings (got {pair!r})")
        for key, pairs in self.portability.items():
            for i, pair in enumerate(pairs):
                if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
                    fail(f"portability[{key!r}][{i}]", f"must be a (prompt, answer) pair of strings (got {pair!r})")

    # -- views ------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt if self.subject is None else self.prompt.replace("{}", self.subject)

    @classmethod
    def from_text(cls, text: str, subject: str, target_new: str, **kwargs: Any) -> "EditRequest":
        """Build from a full prompt that contains the subject verbatim (first occurrence is used).

        Raises DataError when the subject does not occur in the text.
        """
        source = kwargs.pop("_source", "EditRequest")
        index = kwargs.pop("_index", None)
        if not isinstance(text, str) or not isinstance(subject, str) or not subject or subject not in text:
            raise DataError(
                record_message(source, index, "subject", f"must occur in 'prompt' (subject={subject!r}, prompt={text!r})")
            )
        at = text.index(subject)
        template = text[:at] + "{}" + text[at + len(subject):]
        if template.count("{}") != 1:
            raise DataError(record_message(source, index, "prompt", f"must not contain '{{}}' itself (prompt={text!r})"))
        return cls(prompt=template, subject=subject, target_new=target_new, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rephrases"] = list(self.rephrases)
        d["locality"] = [list(p) for p in self.locality]
        d["portability"] = {k: [list(p) for p in v] for k, v in self.portability.items()}
        d["generation_prompts"] = list(self.generation_prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditRequest":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"EditRequest: unknown field(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)


def check_requests(requests, caller: str, *, hint: str = "") -> list[EditRequest]:
    """The one door check of public calls: a non-empty sequence of valid EditRequests (a single
    request is accepted as a list of one).  Raises DataError naming ``caller`` and the index."""
    if isinstance(requests, EditRequest):
        requests = [requests]
    requests = list(requests)
    if not requests:
        raise DataError(f"{caller}: 'requests' is empty; pass a non-empty list of EditRequest{hint}.")
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise DataError(f"{caller}: requests[{i}] must be an EditRequest. Got {type(r).__name__} instead.")
        r.validate(caller, i)
    return requests
