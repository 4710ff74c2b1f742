"""Checks that the Swagger UI page loads with everything it references.

usage: python check_docs.py http://127.0.0.1:PORT/docs

Fetches the page (following redirects), requires 200 and text/html, then
fetches every script and stylesheet the HTML references (resolved against
the final URL): each must answer 200 with a non-empty body. One of the
fetched documents must point Swagger UI at the OpenAPI document, and that
URL must answer 200 with JSON. Prints one line per finding; exits 1 on the
first failure. Standard library only.
"""

import json
import re
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append(a["src"])
        elif tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or ""):
            self.refs.append(a["href"])


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.geturl(), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), url, e.read()


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    url = sys.argv[1]
    status, ctype, final, body = fetch(url)
    path = urlparse(url).path
    if status != 200:
        fail(f"GET {path} answered {status}")
    if not ctype.startswith("text/html"):
        fail(f"GET {path}: content-type {ctype!r}, expected text/html")
    html = body.decode("utf-8", "replace")
    if "swagger" not in html.lower():
        fail(f"GET {path}: the page does not look like Swagger UI")
    moved = urlparse(final).path
    print(f"GET {path} -> 200 text/html" + (f" (redirected to {moved})" if moved != path else ""))
    parser = Refs()
    parser.feed(html)
    if not parser.refs:
        fail(f"{moved} references no script or stylesheet")
    texts = [html]
    loaded = []
    for ref in parser.refs:
        asset = urljoin(final, ref)
        status, ctype, _, data = fetch(asset)
        if status != 200 or not data:
            fail(f"{moved} references {ref}: GET {urlparse(asset).path} answered {status} with {len(data)} bytes")
        loaded.append(f"{urlparse(asset).path} ({len(data) // 1024} KiB)")
        if len(data) < 200_000:
            texts.append(data.decode("utf-8", "replace"))
    print(f"Swagger UI assets answer 200: {', '.join(loaded)}")
    spec = None
    for text in texts:
        m = re.search(r"""["'`]([^"'`]*openapi[^"'`]*\.json)["'`]""", text)
        if m:
            spec = m.group(1)
            break
    if spec is None:
        fail("no fetched document points Swagger UI at an openapi .json URL")
    status, _, _, data = fetch(urljoin(final, spec))
    if status != 200:
        fail(f"Swagger UI's spec URL {spec} answered {status}")
    json.loads(data)
    print(f"Swagger UI is configured with {spec}, which answers 200 JSON")


if __name__ == "__main__":
    main()
