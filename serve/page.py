"""`GET /`: a small self-contained page to try the served model (no CDN, no build step, no other requests).

Pick or drop a picture: the page posts it to this server's /invocations (`Accept: image/png`), draws the
indexed mask over the picture, and lists the classes present with each one's share of the pixels, the time
the request took and the backend that ran. The server fills in what the mask alone cannot say: the model's
class names and palette (to map the mask's colours back to classes), its algorithm, backend and precision.
GLUONSEG_PAGE=false turns it off (404). SageMaker routes only /ping and /invocations to a container, so there
the page is never reached.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("page.html")
PLACEHOLDER = "/*CONFIG*/"


@lru_cache(maxsize=1)
def _template() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def page_html(config: dict[str, Any]) -> str:
    """The page with `config` (class_names, palette, algorithm, backend, precision) inlined as JSON."""
    data = json.dumps(config, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert inside <script>
    return _template().replace(PLACEHOLDER, data)
