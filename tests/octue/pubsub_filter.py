"""Evaluate a Pub/Sub subscription filter against a message's attributes.

Role: a test-side stand-in for the server-side filtering that real Pub/Sub does
and the official emulator does not (the emulator stores a subscription's filter
but delivers every message of the topic to it). `ask.py` and `fake_service.py`
use it to drop the messages that real Pub/Sub would never have delivered.

Supported syntax (the subset of
https://cloud.google.com/pubsub/docs/subscription-message-filter that Octue and
Rouse use, and a little more):

    attributes.KEY = "value"        attributes.KEY != "value"
    attributes:KEY                  (the attribute is present)
    hasPrefix(attributes.KEY, "p")
    NOT expr    -expr    expr AND expr    expr OR expr    ( expr )

Anything else raises `FilterSyntaxError` rather than silently matching.
"""

import re

__all__ = ["FilterSyntaxError", "matches"]


class FilterSyntaxError(ValueError):
    """The filter uses syntax this evaluator does not understand."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>!=|=|:|\(|\)|,|-)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE,
)


def _tokenize(text):
    tokens = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise FilterSyntaxError(f"cannot parse filter {text!r} at offset {position}: {text[position:]!r}")
        position = match.end()
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, text, attributes):
        self.text = text
        self.tokens = _tokenize(text)
        self.position = 0
        self.attributes = attributes

    def _peek(self):
        return self.tokens[self.position] if self.position < len(self.tokens) else (None, None)

    def _take(self, kind=None, value=None):
        token = self._peek()
        if token == (None, None) or (kind and token[0] != kind) or (value and token[1] != value):
            raise FilterSyntaxError(f"unexpected token {token[1]!r} in filter {self.text!r}")
        self.position += 1
        return token[1]

    def parse(self):
        result = self._expression()
        if self.position != len(self.tokens):
            raise FilterSyntaxError(f"trailing tokens in filter {self.text!r}")
        return result

    def _expression(self):
        result = self._term()
        operator = None
        while self._peek() in (("word", "AND"), ("word", "OR")):
            this_operator = self._take()
            if operator and this_operator != operator:
                raise FilterSyntaxError(f"AND and OR need parentheses to be mixed: {self.text!r}")
            operator = this_operator
            right = self._term()
            result = (result and right) if operator == "AND" else (result or right)
        return result

    def _term(self):
        kind, value = self._peek()
        if (kind, value) in (("word", "NOT"), ("op", "-")):
            self._take()
            return not self._term()
        if (kind, value) == ("op", "("):
            self._take()
            result = self._expression()
            self._take("op", ")")
            return result
        if (kind, value) == ("word", "hasPrefix"):
            self._take()
            self._take("op", "(")
            key = self._attribute_key()
            self._take("op", ",")
            prefix = self._take("string")
            self._take("op", ")")
            return key in self.attributes and self.attributes[key].startswith(prefix)
        key = self._attribute_key(allow_colon=True)
        if isinstance(key, tuple):  # attributes:KEY
            return key[1] in self.attributes
        operator = self._take("op")
        if operator not in ("=", "!="):
            raise FilterSyntaxError(f"unsupported operator {operator!r} in filter {self.text!r}")
        expected = self._take("string")
        equal = self.attributes.get(key) == expected
        return equal if operator == "=" else (key in self.attributes and not equal)

    def _attribute_key(self, allow_colon=False):
        word = self._take("word")
        if word.startswith("attributes."):
            return word[len("attributes.") :]
        if allow_colon and word == "attributes" and self._peek() == ("op", ":"):
            self._take()
            kind, value = self._peek()
            if kind not in ("word", "string"):
                raise FilterSyntaxError(f"expected an attribute name after 'attributes:' in {self.text!r}")
            self._take()
            return ("has", value)
        raise FilterSyntaxError(f"expected attributes.KEY, got {word!r} in filter {self.text!r}")


def matches(filter_text, attributes):
    """Return True if a message with these attributes passes the subscription filter.

    An empty or missing filter matches everything, as on Pub/Sub.
    """
    if not filter_text:
        return True
    return bool(_Parser(filter_text, dict(attributes)).parse())
