"""Server-rendered worklist pages (inbox, task form, instance view, supervisor board).

Built on the same engine services as the API; the pages themselves arrive with the
worklist issue. For now the root page says where the API and its description are.
"""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    @app.get("/")
    def index() -> tuple[str, int, dict[str, str]]:
        body = (
            "<!doctype html><meta charset=utf-8><title>服务流程 BPM</title>"
            "<h1>证券客户服务流程 · Client-service BPM</h1>"
            "<p>REST API: <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a></p>"
            "<p>Sign in with <code>POST /api/v1/auth/login</code> and use the token as "
            "<code>Authorization: Bearer …</code>.</p>"
        )
        return body, 200, {"Content-Type": "text/html; charset=utf-8"}
