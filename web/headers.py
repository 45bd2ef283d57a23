"""Security headers sent with every answer (pages, API, and auth.py's refusals)."""

from __future__ import annotations

# Scripts only from our own files (htmx is vendored; so is dagre, which the graph's Web
# Worker loads: workers fall back to script-src), so a `<script>` that reaches a page as
# text can never run; inline style attributes draw the timeline bars and size the graph.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
RAW_SECURITY_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
