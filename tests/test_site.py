"""The built documentation site works opened from disk, offline: search included.

The site is built once (``mkdocs build --strict``, as CI does) into a temporary folder.
A page opened as ``file://`` cannot start the Web Worker that searches, so the site ships
its own stand-in (``docs/javascripts/iframe-worker.js``), and the search index is inlined
into a script (``search/search_index.js``), since such a page cannot fetch JSON either.
Nothing a page loads may come from another host: without a network it would not load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the site needs the docs extra: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the site needs the docs extra: pip install -e '.[docs]'")

pytestmark = pytest.mark.slow  # builds the whole site: a few seconds

ROOT = Path(__file__).resolve().parents[1]
REMOTE = re.compile(r"""(?:https?:)?//[^\s"'`)<>]+""")
ABSOLUTE_URL = re.compile(r"""https?://[^\s"'`)<>\\]*""")

# Absolute URLs inside mkdocs-material's JavaScript, and why none is fetched by this site.
# A new one (after a theme upgrade, say) fails the test until someone checks what it loads.
THEME_URLS = {
    "http://www.w3.org/": "an XML namespace (of SVG icons), a name and never fetched",
    "https://unpkg.com/mermaid": "loaded only by a page with a Mermaid diagram (none, tested)",
    "https://unpkg.com/resize-observer-polyfill": "loaded only by browsers without "
    "ResizeObserver (all current ones have it)",
    "https://api.github.com/": "repository facts, fetched only with repo_url (none, tested)",
    "http://lunrjs.com": "a licence comment",
    "http://tartarus.org/": "a licence comment (the Porter stemmer)",
    "https://clipboardjs.com/": "a licence comment",
    "https://bit.ly/": "a link printed in a console warning about a bad search query",
}


class Loads(HTMLParser):
    """What a page loads: ``(tag, attribute, url)`` of every resource, and inline scripts."""

    def __init__(self):
        super().__init__()
        self.resources: list[tuple[str, str, str]] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "srcset", "data", "poster"):
            if attrs.get(name):
                self.resources.append((tag, name, attrs[name]))
        if tag == "link" and attrs.get("href"):  # stylesheets, icons, preloads
            self.resources.append((tag, "href", attrs["href"]))
        self._in_inline_script = tag == "script" and not attrs.get("src")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data):
        if self._in_inline_script:
            self.inline_scripts.append(data)


def loads(page: Path) -> Loads:
    parser = Loads()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def pages(site) -> list[Path]:
    found = sorted(site.rglob("*.html"))
    assert len(found) > 20, f"only {len(found)} pages built"
    return found


def test_the_search_index_is_in_the_site_as_a_script(site):
    """A file:// page loads the index with a <script> tag: ``var __index = {...}``."""
    script = (site / "search" / "search_index.js").read_text(encoding="utf-8")
    prefix = "var __index = "
    assert script.startswith(prefix), f"search_index.js starts {script[:40]!r}"
    index = json.loads(script[len(prefix):])
    locations = {doc["location"].split("#")[0] for doc in index["docs"]}
    for page in ("index.html", "training-loop.html", "api/optim.html"):
        assert page in locations, f"{page} is not in the search index"
    text = " ".join(doc["text"] for doc in index["docs"])
    assert "sgd_update" in text and "learning rate" in text


def test_every_page_starts_the_offline_worker_before_the_theme(site, pages):
    """The stand-in must replace ``Worker`` before the theme's bundle creates the search worker."""
    shim = site / "javascripts" / "iframe-worker.js"
    assert "window.Worker = IframeWorker" in shim.read_text(encoding="utf-8")
    for page in pages:
        scripts = [url for tag, _, url in loads(page).resources if tag == "script"]
        names = [url.rsplit("/", 1)[-1] for url in scripts]
        bundle = next((i for i, n in enumerate(names) if n.startswith("bundle.")), None)
        assert bundle is not None, f"{page.name}: no theme bundle among {names}"
        assert "iframe-worker.js" in names[:bundle], f"{page.name}: scripts in order {names}"
        if page.name == "404.html":
            continue  # a server's page, with URLs from the site's root; never opened from disk
        for url in scripts:  # relative URLs that resolve to files of the site
            target = (page.parent / url).resolve()
            assert target.is_file(), f"{page.relative_to(site)} loads {url}: no such file"


def test_nothing_a_page_loads_comes_from_another_host(site, pages):
    for page in pages:
        found = loads(page)
        remote = [r for r in found.resources if REMOTE.match(r[2])]
        assert not remote, f"{page.relative_to(site)} loads from another host: {remote}"
        for script in found.inline_scripts:
            assert not ABSOLUTE_URL.search(script), (
                f"{page.relative_to(site)}: an inline script names "
                f"{ABSOLUTE_URL.search(script)[0]}")


def test_stylesheets_load_nothing_from_another_host(site):
    sheets = sorted(site.rglob("*.css"))
    assert sheets, "no stylesheet in the site"
    for sheet in sheets:
        css = sheet.read_text(encoding="utf-8")
        bad = re.findall(r"""(?:url\(\s*['"]?|@import\s+['"]?)((?:https?:)?//[^'")\s]+)""", css)
        assert not bad, f"{sheet.relative_to(site)} loads {bad}"


def scripts_run(site: Path, pages: list[Path]) -> set[Path]:
    """The script files the pages load, and the search worker named in the theme's config."""
    found = set()
    for page in pages:
        if page.name == "404.html":
            continue  # URLs from the site's root, checked on every other page
        parsed = loads(page)
        found |= {(page.parent / url).resolve()
                  for tag, _, url in parsed.resources if tag == "script"}
        config = json.loads(next(s for s in parsed.inline_scripts if '"search":' in s))
        found.add((page.parent / config["search"]).resolve())  # relative to the page
    return found


def test_the_scripts_fetch_nothing_from_another_host(site, pages):
    """Every absolute URL in the scripts that run is a known one that this site never fetches.

    (The worker loads lunr's language files only for a language other than English.)
    """
    scripts = scripts_run(site, pages)
    assert {s.name.split(".")[0] for s in scripts} == {"iframe-worker", "bundle", "search"}
    for script in scripts:
        for url in set(ABSOLUTE_URL.findall(script.read_text(encoding="utf-8"))):
            if url in ("http://", "https://") or url.startswith("https://${"):
                continue  # a scheme being tested, or the template of a GitLab host's API
            assert any(url.startswith(known) for known in THEME_URLS), (
                f"{script.relative_to(site)} names {url}: check whether it is fetched, "
                "then vendor it or list it in THEME_URLS with the reason it is not")
    # the conditions under which the theme would fetch some of THEME_URLS do not hold
    for page in pages:
        assert 'class="mermaid"' not in page.read_text(encoding="utf-8"), page.name
    config = (ROOT / "mkdocs.yml").read_text()
    assert not re.search(r"^repo_url:", config, re.M), "repo_url makes the theme fetch facts"
    assert not re.search(r"^\s+lang:", config, re.M), "search in English only"
