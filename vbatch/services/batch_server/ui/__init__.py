"""The batch server's web page: its files (package data beside this module, served by
`batch_server.page`) and the paths that answer them.

Kept apart from `page` so that the API-key middleware can read `PUBLIC_PATHS` without loading
the rest of the batch server. The page is public: it holds no data, and every API call it makes
carries the key.
"""

#: The page's files and their content types: the only names ever served.
ASSETS = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}
UI_ROOT = "/ui/"
#: What answers without the API key: the redirects to the page (/ and /ui) and its files.
PUBLIC_PATHS = frozenset({"/", "/ui", UI_ROOT, *(UI_ROOT + name for name in ASSETS)})
