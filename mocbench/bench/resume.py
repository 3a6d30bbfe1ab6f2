"""Which cells a re-run measures: the resume policy shared by every writer of a result store.

A cell is measured again when its row is missing or unfinished, when it failed or was skipped and
the user asked to retry those, or when its row was measured in another environment (code
fingerprint, device model, torch version or threads differ; see :mod:`mocbench.bench.env`) — a row
copied from another machine or commit is never reused silently. ``reuse_foreign`` keeps such rows;
reports then mark them (:func:`mocbench.bench.tables.with_derived`). One notice line per group of
foreign rows says which happened and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mocbench.bench.env import environment_difference
from mocbench.bench.store import ResultStore


@dataclass(frozen=True)
class ResumePolicy:
    retry_failed: bool = False  # re-measure rows whose status is failed
    retry_skipped: bool = False  # re-measure rows whose status is skipped (e.g. a package installed since)
    reuse_foreign: bool = False  # keep finished rows measured in another environment


def needs_run(store: ResultStore, key: str, policy: ResumePolicy, env: dict[str, str]) -> bool:
    """Whether the cell ``key`` must be (re-)measured by a process whose comparable environment is ``env``."""
    if not store.done(key, retry_failed=policy.retry_failed, retry_skipped=policy.retry_skipped):
        return True
    return not policy.reuse_foreign and bool(environment_difference(store.rows[key], env))


def foreign_notices(store: ResultStore, keys: list[str], policy: ResumePolicy,
                    env_of: Callable[[str], dict[str, str]]) -> list[str]:
    """One line per group of finished rows (among ``keys``) measured in another environment."""
    groups: Counter = Counter()
    for key in keys:
        if store.done(key, retry_failed=policy.retry_failed, retry_skipped=policy.retry_skipped):
            diff = environment_difference(store.rows[key], env_of(key))
            if diff:
                groups[tuple(sorted(diff.items()))] += 1
    verb = "keeping (--reuse-foreign; reports mark them)" if policy.reuse_foreign else "re-measuring"
    hint = "" if policy.reuse_foreign else "; --reuse-foreign keeps them"
    return [f"{verb} {n} row(s) of {store.path} measured in another environment: "
            + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in diff) + hint
            for diff, n in groups.items()]
