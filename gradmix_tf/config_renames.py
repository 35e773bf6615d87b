"""Names a config has changed since work directories were written, in one table.

A `config.json` written before a rename is read in today's names (`upgrade`), so that
an old work directory resumes, is evaluated again and is compared with a new config
(`gradmix_tf.workdir.stored_config`); an audit's stored settings likewise. Each row
says what trains the same thing now:

| before                                   | now                                   |
| ---------------------------------------- | ------------------------------------- |
| group `gradmix.*`                        | `step.*` (options of every rule)      |
| `gradmix.mixing`                         | `step.rule`                           |
| rule `gradmix`                           | `closed_form`                         |
| `gradmix.weight_solver="lookahead"`      | `step.rule="lookahead"`               |
| `gradmix.weight_solver="closed_form"`    | (the rule `closed_form` itself)       |
| method `gradmix_closed_form`             | `closed_form`                         |
| method `gradmix_global`                  | `closed_form_global`                  |
| method `gradmix_no_adaptive_lr`          | `closed_form_no_adaptive_lr`          |
| method `gradmix_no_pseudo_labels`        | `closed_form_no_pseudo_labels`        |
| method `gradmix_cosine_gate`             | `closed_form_cosine_gate`             |
| method `gradmix_persistent`              | `persistent_pseudo_labels`            |
| method `gradmix_persistent_no_pseudo_labels` | `persistent`                      |

Config fields added since are in `gradmix_tf.workdir.ADDED_FIELDS`, with the value
that trains what an older directory trained.
"""

from __future__ import annotations

import copy

RENAMED_GROUPS = {"gradmix": "step"}
RENAMED_FIELDS = {("step", "mixing"): "rule"}
RENAMED_RULES = {"gradmix": "closed_form"}
RENAMED_METHODS = {
    "gradmix_closed_form": "closed_form",
    "gradmix_global": "closed_form_global",
    "gradmix_no_adaptive_lr": "closed_form_no_adaptive_lr",
    "gradmix_no_pseudo_labels": "closed_form_no_pseudo_labels",
    "gradmix_cosine_gate": "closed_form_cosine_gate",
    "gradmix_persistent": "persistent_pseudo_labels",
    "gradmix_persistent_no_pseudo_labels": "persistent",
}


def method_name(name: str) -> str:
    """Today's name of a method (`name` when it was not renamed)."""
    return RENAMED_METHODS.get(name, name)


def old_method_names(name: str) -> list[str]:
    """The names method `name` had before (none when it was not renamed)."""
    return [old for old, new in RENAMED_METHODS.items() if new == name]


def upgrade(stored: dict) -> dict:
    """A stored config (`config.json` as a dict) in today's names; a copy."""
    config = copy.deepcopy(stored)
    for old, new in RENAMED_GROUPS.items():
        if old in config and new not in config:
            config = {(new if key == old else key): value for key, value in config.items()}
    for (group, old), new in RENAMED_FIELDS.items():
        fields = config.get(group)
        if isinstance(fields, dict) and old in fields and new not in fields:
            config[group] = {(new if key == old else key): v for key, v in fields.items()}
    step = config.get("step")
    if isinstance(step, dict):
        if step.get("rule") in RENAMED_RULES:
            step["rule"] = RENAMED_RULES[step["rule"]]
        solver = step.pop("weight_solver", None)
        if solver == "lookahead" and step.get("rule") == "closed_form":
            step["rule"] = "lookahead"
    if isinstance(config.get("method"), str):
        config["method"] = method_name(config["method"])
    benchmark = config.get("benchmark")
    if isinstance(benchmark, dict) and isinstance(benchmark.get("methods"), list):
        benchmark["methods"] = [method_name(name) for name in benchmark["methods"]]
    return config
