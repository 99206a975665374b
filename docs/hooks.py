"""MkDocs hook: show the docstrings' reStructuredText markup as plain Markdown would.

funcnn's docstrings are read as Google style with Markdown, but some use Sphinx roles
(``:func:`apply```, ``:class:`~funcnn.MLP```) and the ``::`` that introduces a literal
block. Rendered as they are, the roles show as ``:func:apply``; here they become inline
code (a ``~`` keeps only the last name) and a paragraph's closing ``::`` becomes ``:``.
Code blocks titled ``output`` are marked, so that printed output looks unlike code.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")
LITERAL_MARKER = re.compile(r"::(\s*</p>)")
OUTPUT_BLOCK = '<div class="highlight"><span class="filename">output'


def _code(match: re.Match) -> str:
    name = match[2].rsplit(".", 1)[-1] if match[1] else match[2]
    return f"<code>{name}</code>"


def on_page_content(html, page, config, files):
    html = LITERAL_MARKER.sub(r":\1", ROLE.sub(_code, html))
    # blocks titled "output" (what the code above printed) get their own look (extra.css)
    return html.replace(OUTPUT_BLOCK, OUTPUT_BLOCK.replace('"highlight"', '"highlight output"'))
