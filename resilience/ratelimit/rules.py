"""Rules as values, and which of them apply to a request.

``Rule`` is the frozen value the limiter works on, whether it came from a ``RateLimitRule`` row,
from ``configure_endpoint`` / ``@rate_limit`` in code, or from the default limit in settings.

``RuleSet`` is an immutable snapshot of every rule in force and answers one question quickly:
which rules apply to ``(method, path)``? Precedence, in order:

1. Database rules win over code rules: a database rule (in any mode) on a path pattern replaces
   every code rule on exactly that pattern. Staff switch a code rule off by adding a database rule
   on its path with mode ``off``.
2. Rules in mode ``off`` are then dropped, as if deleted.
3. Rules whose ``methods`` exclude the request's method are ignored.
4. Of the remaining rules, those on the most specific matching pattern apply: an exact path beats
   any prefix, a longer prefix beats a shorter one. Every rule on that pattern applies (10 per
   second *and* 1,000 per hour) and the request is counted against all of them or none.
5. Nothing matched: the default limit (settings) applies, if any.

Answers are memoised per snapshot in a bounded table, including "no rule matches", so a warm
worker resolves a path with one dictionary lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from resilience.ratelimit.algorithms import MICROS, Limit

_NOT_SF_STRING = re.compile(r'[^\x20-\x7e]|["\\]')

ALGORITHMS = ("sliding_window", "fixed_window", "token_bucket")
MODES = ("enforce", "shadow", "off")
USER_KEYS = ("user", "user_or_ip")

# Memoised (method, path) answers per snapshot; paths come from clients, so the table is bounded.
MATCH_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit: ``calls`` per ``window_seconds`` for each client identified by ``key``.

    The fields after ``source`` are derived once, when the rule is made, because the request
    path reads them on every request.
    """

    name: str
    path: str
    calls: int
    window_seconds: int
    key: str = "ip"
    algorithm: str = "sliding_window"
    mode: str = "enforce"
    methods: frozenset[str] = frozenset()
    key_prefix: str = ""
    source: str = "code"  # "db", "code", "decorator" or "default"
    counter: str = field(init=False, repr=False, compare=False)
    key_suffix: str = field(init=False, repr=False, compare=False)
    quoted_name: str = field(init=False, repr=False, compare=False)
    policy_item: str = field(init=False, repr=False, compare=False)
    calls_text: str = field(init=False, repr=False, compare=False)
    limit: Limit = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The counter's name in storage keys: rules with the same key_prefix share it. Quoted so
        # it holds no ":", "{" or glob character, which keeps keys unambiguous and lets an admin
        # action find a rule's keys by pattern.
        counter = quote(self.key_prefix or f"{self.source}:{self.name}", safe="-_.~")
        if self.algorithm == "token_bucket":
            segment = f"tb{self.calls}per{self.window_seconds}"
        elif self.algorithm == "fixed_window":
            segment = f"fw{self.window_seconds}"
        else:
            segment = f"sw{self.window_seconds}"
        # A structured-field string for the RateLimit headers: printable ASCII only.
        quoted_name = '"' + _NOT_SF_STRING.sub("_", self.name) + '"'
        object.__setattr__(self, "limit", Limit(self.calls, self.window_seconds * MICROS))
        object.__setattr__(self, "counter", counter)
        object.__setattr__(self, "key_suffix", f"{counter}:{segment}")
        object.__setattr__(self, "quoted_name", quoted_name)
        object.__setattr__(
            self, "policy_item", f"{quoted_name};q={self.calls};w={self.window_seconds}"
        )
        object.__setattr__(self, "calls_text", str(self.calls))

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/*")

    @property
    def enforced(self) -> bool:
        return self.mode == "enforce"

    @property
    def rate_display(self) -> str:
        return f"{self.calls} per {self.window_seconds} s"

    def applies_to_method(self, method: str) -> bool:
        return not self.methods or method in self.methods


def parse_methods(methods: str | Iterable[str] | None) -> frozenset[str]:
    """The methods a rule limits; ``GET`` includes ``HEAD``, which Django serves with the GET
    view, so a GET-only limit cannot be escaped by asking for the same page with HEAD."""
    if not methods:
        return frozenset()
    if isinstance(methods, str):
        methods = methods.split(",")
    parsed = {m.strip().upper() for m in methods if m.strip()}
    if "GET" in parsed:
        parsed.add("HEAD")
    return frozenset(parsed)


@dataclass(frozen=True)
class RuleSet:
    """An immutable snapshot of the rules in force; see the module docstring for precedence."""

    rules: tuple[Rule, ...] = ()
    default: Rule | None = None
    generation: int = 0
    _exact: dict[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False)
    _prefixes: tuple[tuple[str, tuple[Rule, ...]], ...] = field(default=(), repr=False)
    _memo: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        db_rules: Iterable[Rule],
        code_rules: Iterable[Rule],
        default: Rule | None = None,
        generation: int = 0,
    ) -> RuleSet:
        db_rules = tuple(db_rules)
        db_paths = {rule.path for rule in db_rules}
        merged = db_rules + tuple(r for r in code_rules if r.path not in db_paths)
        active = tuple(r for r in merged if r.mode != "off")
        by_pattern: dict[str, list[Rule]] = {}
        for rule in active:
            by_pattern.setdefault(rule.path, []).append(rule)
        exact = {p: tuple(rs) for p, rs in by_pattern.items() if not p.endswith("/*")}
        prefixes = sorted(
            ((p[:-1], tuple(rs)) for p, rs in by_pattern.items() if p.endswith("/*")),
            key=lambda item: -len(item[0]),
        )
        return cls(active, default, generation, exact, tuple(prefixes))

    def match(self, method: str, path: str) -> tuple[Rule, ...]:
        """The rules that apply to a request: a pattern's rules, the default, or ``()``."""
        memo_key = (method, path)
        found = self._memo.get(memo_key)
        if found is not None:
            return found
        found = self._resolve(method, path)
        if len(self._memo) >= MATCH_CACHE_SIZE:
            self._memo.clear()
        self._memo[memo_key] = found
        return found

    def _resolve(self, method: str, path: str) -> tuple[Rule, ...]:
        candidates = self._exact.get(path, ())
        chosen = tuple(r for r in candidates if r.applies_to_method(method))
        if chosen:
            return chosen
        for prefix, rules in self._prefixes:
            if path.startswith(prefix) or path == prefix[:-1]:
                chosen = tuple(r for r in rules if r.applies_to_method(method))
                if chosen:
                    return chosen
        return (self.default,) if self.default is not None else ()

    def uses_user_keys(self) -> bool:
        return any(rule.key in USER_KEYS for rule in self.rules)
