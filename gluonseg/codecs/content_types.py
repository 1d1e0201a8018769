"""Media types of the scoring server and the Content-Type / Accept negotiation.

Requests carry an image (`image/jpeg` in every SageMaker example; PNG and `application/x-image`
accepted too). Responses are an indexed PNG mask or the class probabilities as RecordIO-protobuf,
under either protobuf name: the docs say `application/x-recordio-protobuf`, the notebook sends
`application/x-protobuf`; both get the same bytes.
"""

from __future__ import annotations

import math

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_list_header, parse_options_header

from gluonseg.errors import NotAcceptable, UnsupportedContentType

PNG = "image/png"
JPEG = "image/jpeg"
X_IMAGE = "application/x-image"
RECORDIO_PROTOBUF = "application/x-recordio-protobuf"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

REQUEST_TYPES: tuple[str, ...] = (JPEG, PNG, X_IMAGE)
# Order matters only to break ties between equally acceptable types that the client named alike.
RESPONSE_TYPES: tuple[str, ...] = (PNG, RECORDIO_PROTOBUF, PROTOBUF)
PROTOBUF_TYPES: tuple[str, ...] = (RECORDIO_PROTOBUF, PROTOBUF)


def parse_content_type(header: str | None) -> str:
    """The media type of a Content-Type/Accept value, lowercased, without parameters ('' when missing)."""
    if not header:
        return ""
    return header.split(";", 1)[0].strip().lower()


def check_request_type(content_type: str | None) -> str:
    """The request's media type when we decode it; UnsupportedContentType otherwise, a missing one included."""
    media = parse_content_type(content_type)
    if media not in REQUEST_TYPES:
        got = f"unsupported request Content-Type {content_type!r}" if media else "the request has no Content-Type"
        raise UnsupportedContentType(
            f"{got}; send the image bytes with Content-Type one of: {', '.join(REQUEST_TYPES)}"
        )
    return media


def _accept_ranges(header: str) -> list[tuple[str, float]]:
    """(media range, q) per entry, parameters other than q dropped, a range named twice kept once (the
    first). Lenient where Werkzeug's own parser is strict: a bad q counts as 1 (being lenient beats a
    406), a bare `*` means `*/*`."""
    ranges: dict[str, float] = {}
    for entry in parse_list_header(header):
        media, params = parse_options_header(entry)
        media = media.strip().lower()
        if media == "*":  # Java's HttpURLConnection sends a bare "*"
            media = "*/*"
        if not media or media in ranges:
            continue
        try:
            q = float(params.get("q", "1").strip())
        except ValueError:
            q = 1.0
        ranges[media] = min(max(q, 0.0), 1.0) if math.isfinite(q) else 1.0
    return list(ranges.items())


def choose_accept(accept_header: str | None, default: str) -> str:
    """The response type to send for an Accept header.

    Missing, empty or `*/*` gives `default` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT or image/png).
    Otherwise each supported type takes the q of the most specific range that names it (RFC 9110);
    the highest q wins, then the type named most specifically, then the one whose range is listed
    first, then `default`. q=0 excludes a type. Nothing acceptable raises NotAcceptable.
    """
    default_type = parse_content_type(default)
    if default_type not in RESPONSE_TYPES:
        raise NotAcceptable(
            f"the default response type {default!r} (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) is not supported; "
            f"use one of: {', '.join(RESPONSE_TYPES)}"
        )
    if accept_header is None or not accept_header.strip():
        return default_type
    accept = MIMEAccept(_accept_ranges(accept_header))
    # best_match settles q and specificity; equal ones go to the earlier candidate. MIMEAccept keeps the
    # ranges sorted by (specificity, q), header order within, so `find` orders the candidates by the
    # position of the range that names each, then the default first, then RESPONSE_TYPES' order.
    candidates = sorted(RESPONSE_TYPES, key=lambda media: (accept.find(media), media != default_type))
    best = accept.best_match(candidates)
    if best is None:
        raise NotAcceptable(
            f"cannot answer with any type in Accept {accept_header!r}; supported response types: "
            f"{', '.join(RESPONSE_TYPES)}"
        )
    return best
