"""Treadle's web layer: the Litestar app, JSON API and HTMX dashboard."""
