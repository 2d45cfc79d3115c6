"""Errors raised by the :mod:`config` package.

Loading collects every problem it finds and raises one :class:`SettingsError`
that lists them all, each naming the settings key and where its value came
from, e.g.::

    settings key "port" (from environment DEEPSC_PORT): should be an integer
    1-65535, got "abc"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "SettingsError", "SettingsProblem"]


class ConfigError(Exception):
    """Base class of the config package's domain errors."""


@dataclass(frozen=True)
class SettingsProblem:
    """One invalid or unknown settings key.

    Parameters
    ----------
    key: str
        Dotted settings key, e.g. ``"port"`` or ``"selection.min_slices"``;
        for an unknown environment variable, the variable's name.
    source: str
        Where the value came from, e.g. ``"environment DEEPSC_PORT"``,
        ``"file /etc/deepsc-node.toml"``, ``"command line"``, ``"default"``.
    message: str
        What is wrong, e.g. ``'should be an integer 1-65535, got "abc"'``.
    """

    key: str
    source: str
    message: str

    def __str__(self) -> str:
        return f'settings key "{self.key}" (from {self.source}): {self.message}'


class SettingsError(ConfigError, ValueError):
    """The settings could not be loaded; :attr:`problems` says why.

    Parameters
    ----------
    problems: Sequence[SettingsProblem]
        Every problem found, at least one.

    Raises
    ------
    ValueError
        If `problems` is empty.
    """

    def __init__(self, problems: Sequence[SettingsProblem]) -> None:
        if not problems:
            raise ValueError('Argument "problems" should contain at least one problem.')
        self.problems: tuple[SettingsProblem, ...] = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} settings problems:\n" + "\n".join(
                f"  - {problem}" for problem in self.problems
            )
        super().__init__(text)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys at fault, in the order found."""
        return tuple(problem.key for problem in self.problems)
