from __future__ import annotations

from pathlib import Path

from notifier.api.errors import PROBLEM_TYPES, ProblemType


def test_the_problem_types_are_those_the_readme_lists() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert set(PROBLEM_TYPES) == set(ProblemType)
    for kind, spec in PROBLEM_TYPES.items():
        status = "any" if spec.status is None else str(spec.status)
        assert f"| `{kind.value}` | {status} | {spec.meaning} |" in readme, kind
