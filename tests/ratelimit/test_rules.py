"""Which rules apply to a request, and rules declared in code."""

from __future__ import annotations

import pytest

from resilience.ratelimit.limiter import make_rule
from resilience.ratelimit.rules import Rule, RuleSet, parse_methods


def rule(name: str, path: str, source: str = "db", **kwargs) -> Rule:
    return Rule(name=name, path=path, calls=10, window_seconds=60, source=source, **kwargs)


def names(rules) -> list[str]:
    return sorted(r.name for r in rules)


def test_ruleset__exact_beats_prefix_and_longer_prefix_beats_shorter():
    rules = RuleSet.build(
        [rule("exact", "/v1/tasks"), rule("v1", "/v1/*"), rule("v1-tasks", "/v1/tasks/*")], []
    )
    assert names(rules.match("GET", "/v1/tasks")) == ["exact"]
    assert names(rules.match("GET", "/v1/tasks/42")) == ["v1-tasks"]
    assert names(rules.match("GET", "/v1/other")) == ["v1"]
    assert rules.match("GET", "/v2/other") == ()


def test_ruleset__every_rule_on_the_chosen_path_applies():
    rules = RuleSet.build([rule("per-second", "/v1/tasks"), rule("per-hour", "/v1/tasks")], [])
    assert names(rules.match("POST", "/v1/tasks")) == ["per-hour", "per-second"]


def test_ruleset__methods_filter_before_the_path_is_chosen():
    rules = RuleSet.build(
        [rule("writes", "/v1/tasks", methods=parse_methods("POST,PUT")), rule("all", "/v1/*")], []
    )
    assert names(rules.match("POST", "/v1/tasks")) == ["writes"]
    assert names(rules.match("GET", "/v1/tasks")) == ["all"]


def test_ruleset__database_rules_replace_code_rules_on_the_same_path():
    rules = RuleSet.build(
        [rule("staff", "/v1/tasks")],
        [rule("code-tasks", "/v1/tasks", source="code"), rule("code-v1", "/v1/*", source="code")],
    )
    assert names(rules.match("GET", "/v1/tasks")) == ["staff"]
    assert names(rules.match("GET", "/v1/x")) == ["code-v1"]


def test_ruleset__an_off_database_rule_switches_a_code_rule_off():
    rules = RuleSet.build(
        [rule("staff-off", "/v1/tasks", mode="off")],
        [rule("code-tasks", "/v1/tasks", source="code")],
        default=rule("default", "/*", source="default"),
    )
    assert names(rules.match("GET", "/v1/tasks")) == ["default"]


def test_ruleset__unmatched_paths_get_the_default_and_the_answer_is_memoised():
    default = rule("default", "/*", source="default")
    rules = RuleSet.build([rule("tasks", "/v1/tasks")], [], default=default)
    assert rules.match("GET", "/elsewhere") == (default,)
    assert ("GET", "/elsewhere") in rules._memo
    assert RuleSet.build([], []).match("GET", "/elsewhere") == ()


def test_rule__counter_is_shared_by_key_prefix_and_safe_in_keys():
    a = rule("a", "/v1/a", key_prefix="create-task:")
    b = rule("b", "/v1/b", key_prefix="create-task:")
    assert a.counter == b.counter == "create-task%3A"
    assert rule("x*{y}", "/v1/c").counter == "db%3Ax%2A%7By%7D"


def test_make_rule__names_the_bad_argument():
    with pytest.raises(ValueError, match="calls must be a positive integer"):
        make_rule(path="/v1/tasks", calls=0, window_seconds=60)
    with pytest.raises(ValueError, match="window_seconds must be a positive integer"):
        make_rule(path="/v1/tasks", calls=5, window_seconds=-1)
    with pytest.raises(ValueError, match="not a path"):
        make_rule(path="v1/tasks", calls=5, window_seconds=60)
    with pytest.raises(ValueError, match="Unknown key bogus"):
        make_rule(path="/v1/tasks", calls=5, window_seconds=60, key="bogus")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        make_rule(path="/v1/tasks", calls=5, window_seconds=60, algorithm="leaky")
    with pytest.raises(ValueError, match="Unknown HTTP method"):
        make_rule(path="/v1/tasks", calls=5, window_seconds=60, methods="FETCH")
