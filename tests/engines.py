"""Tests that apply to one engine only are parametrised on that engine alone,
so that nothing is skipped when both engines are up."""

import pytest


def only_on(engine: str, fixture: str = "database_url") -> pytest.MarkDecorator:
    """Give `fixture` (one parametrised over "sqlite" and "postgresql", as
    `database_url` is) the parameter `engine` alone for the test marked."""
    return pytest.mark.parametrize(fixture, [engine], indirect=True)
