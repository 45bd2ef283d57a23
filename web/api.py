"""JSON API (SPEC §4). Placeholder: filled in by the web issue."""

from litestar import get

from runner import __version__


@get("/health", sync_to_thread=False)
def health() -> dict:
    return {"status": "ok", "version": __version__}


API_ROUTES = [health]
