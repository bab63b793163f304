"""Arithmetic prompts outside the bank: "What is 17 + 25 * 2? Reply with the number."

Part of the provider test double. A prompt that is a simple arithmetic expression
(integers, ``+ - * /``, parentheses, unary signs), optionally asked as "What is ...?"
and followed by "Reply with the number.", gets its right answer computed by a small
recursive-descent parser (never ``eval``), so simulated models can answer it as they
answer bank questions. The attractive wrong answer reads the expression left to right,
ignoring operator precedence, as the bank's arithmetic questions do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Longer expressions are not "simple" and are left to the unknown-prompt reply; the
# bound also caps the parser's recursion depth and the size of the numbers.
MAX_EXPRESSION_CHARS = 200
# The question's words around the expression, each matched on its own (anchored, no
# nested repetition): one pattern with a lazy expression followed by optional spaces
# backtracked exponentially on long runs of spaces (a 200-space prompt took 47 s).
_ASKING = re.compile(r"(?i)\s*(?:what\s+is|what's|compute|calculate|evaluate)\b")
_REPLY_WITH = re.compile(
    r"(?i)(?:reply|answer|respond)\s+with\s+(?:just\s+|only\s+)?(?:the|a)\s+number\.?\s*$"
)
_EXPRESSION = re.compile(r"[\d\s+\-*/()]+")
_MAX_PROMPT_CHARS = MAX_EXPRESSION_CHARS + 100  # room for the question's own words
_TOKEN = re.compile(r"\s*(?:(\d{1,12})|([-+*/()]))")


def _expression_text(prompt: str) -> str | None:
    """The prompt without "What is" before and "= ?" or "Reply with the number." after,
    when what is left holds only digits, operators, parentheses and spaces."""
    if len(prompt) > _MAX_PROMPT_CHARS:
        return None
    text = prompt.strip()
    if (reply := _REPLY_WITH.search(text)) is not None:
        text = text[: reply.start()].rstrip()
    if (asking := _ASKING.match(text)) is not None:
        text = text[asking.end() :]
    text = text.strip().removesuffix("?").rstrip().removesuffix("=").strip()
    return text if text and _EXPRESSION.fullmatch(text) else None


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """A computed arithmetic prompt: the right answer and plausible wrong ones."""

    expression: str
    expected: str
    wrong_answers: tuple[str, ...]  # distinct from expected, the distractor first


def parse_arithmetic(prompt: str) -> Arithmetic | None:
    """The computed answer when the prompt is a simple arithmetic expression, else None."""
    text = _expression_text(prompt)
    if text is None:
        return None
    expression = " ".join(text.split())
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    tokens = _tokens(expression)
    if tokens is None:
        return None
    try:
        right, binary_ops = _Parser(tokens, precedence=True).run()
        left_to_right, _ = _Parser(tokens, precedence=False).run()
        if binary_ops == 0:  # a lone number is not a calculation
            return None
        expected = _render(right)
        wrong: list[str] = []
        for value in (left_to_right, right + 10, right - 1, right + 1):
            text = _render(value)
            if text != expected and text not in wrong:
                wrong.append(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return Arithmetic(expression, expected, tuple(wrong))


def _tokens(expression: str) -> list[str] | None:
    tokens: list[str] = []
    position = 0
    while position < len(expression):
        found = _TOKEN.match(expression, position)
        if found is None:
            return None
        tokens.append(found.group(1) or found.group(2))
        position = found.end()
    return tokens


def _render(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return repr(float(value))


class _Parser:
    """expression := term (("+" | "-") term)*; term := unary (("*" | "/") unary)*;
    unary := ("+" | "-") unary | integer | "(" expression ")". Without precedence every
    binary operator binds alike, left to right (parentheses still count)."""

    def __init__(self, tokens: list[str], *, precedence: bool) -> None:
        self.tokens = tokens
        self.position = 0
        self.precedence = precedence
        self.binary_ops = 0

    def run(self) -> tuple[Fraction, int]:
        value = self._expression()
        if self.position != len(self.tokens):
            raise ValueError("unexpected token")
        return value, self.binary_ops

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ValueError("unexpected end")
        self.position += 1
        return token

    def _expression(self) -> Fraction:
        operators = "+-" if self.precedence else "+-*/"
        operand = self._term if self.precedence else self._unary
        value = operand()
        while (token := self._peek()) is not None and token in operators:
            self._take()
            self.binary_ops += 1
            value = _apply(token, value, operand())
        return value

    def _term(self) -> Fraction:
        value = self._unary()
        while (token := self._peek()) is not None and token in "*/":
            self._take()
            self.binary_ops += 1
            value = _apply(token, value, self._unary())
        return value

    def _unary(self) -> Fraction:
        token = self._take()
        if token == "-":
            return -self._unary()
        if token == "+":
            return self._unary()
        if token == "(":
            value = self._expression()
            if self._take() != ")":
                raise ValueError("unbalanced parenthesis")
            return value
        if token.isdigit():
            return Fraction(int(token))
        raise ValueError(f"unexpected {token!r}")


def _apply(operator: str, left: Fraction, right: Fraction) -> Fraction:
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    return left / right  # ZeroDivisionError: not a question with an answer
