"""A page that renders offline: the static check of `lockstep mismatch --html` pages the tests
share (tests/conftest.py's folder is on sys.path in every test session)."""

import base64
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser


class PageCheck(HTMLParser):
    """Every src/href of the page, every <img> source, and how many tags could fetch something
    (script, link, iframe, object)."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe", "object"):
            self.scripts += 1


def check_self_contained(page: str) -> int:
    """No fetch of anything (src/href to a URL, scripts, stylesheets), every <img> a data URI
    that decodes, every <svg> well-formed XML. Returns the number of charts."""
    parser = PageCheck()
    parser.feed(page)
    assert parser.scripts == 0
    assert not [u for u in parser.links if re.match(r"\s*(https?:)?//", u)], parser.links
    assert "url(" not in page and "@import" not in page
    for src in parser.images:
        head, _, data = src.partition(",")
        assert head.startswith("data:image/") and head.endswith(";base64")
        base64.b64decode(data, validate=True)
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    for svg in svgs:
        ET.fromstring(svg)
    return len(svgs) + len(parser.images)
