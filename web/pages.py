"""Dashboard pages (SPEC §5). Placeholder: filled in by the web issue."""

from jinja2 import Environment

PAGE_ROUTES: list = []


def register_template_helpers(env: Environment) -> None:
    """Filters and globals the page templates use."""
