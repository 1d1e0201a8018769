"""Media types of the scoring server and the Content-Type / Accept negotiation.

Requests carry an image (`image/jpeg` in every SageMaker example; PNG and `application/x-image`
accepted too). Responses are an indexed PNG mask or the class probabilities as RecordIO-protobuf,
under either protobuf name: the docs say `application/x-recordio-protobuf`, the notebook sends
`application/x-protobuf`; both get the same bytes.
"""

from __future__ import annotations

from gluonseg.errors import NotAcceptable, UnsupportedMediaType

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
    """The request's media type when we decode it; UnsupportedMediaType (415) otherwise, a missing one included."""
    media = parse_content_type(content_type)
    if media not in REQUEST_TYPES:
        got = f"unsupported request Content-Type {content_type!r}" if media else "the request has no Content-Type"
        raise UnsupportedMediaType(f"{got}; send the image bytes with Content-Type one of: {', '.join(REQUEST_TYPES)}")
    return media


def _parse_accept(header: str) -> list[tuple[str, float]]:
    """(media range, q) per entry, in header order. A bad q counts as 1: being lenient beats a 406."""
    ranges = []
    for entry in header.split(","):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        if media == "*":  # Java's HttpURLConnection sends a bare "*"
            media = "*/*"
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        ranges.append((media, q))
    return ranges


def _match(media_range: str, media_type: str) -> int:
    """How specifically a range names a type: 2 exact, 1 `type/*`, 0 `*/*`, -1 no match."""
    if media_range == media_type:
        return 2
    if media_range == "*/*":
        return 0
    kind, _, sub = media_range.partition("/")
    if sub == "*" and media_type.startswith(kind + "/"):
        return 1
    return -1


def choose_accept(accept_header: str | None, default: str) -> str:
    """The response type to send for an Accept header.

    Missing, empty or `*/*` gives `default` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT or image/png).
    Otherwise each supported type takes the q of the most specific range that names it (RFC 9110);
    the highest q wins, then a type the client named exactly, then the earlier-listed range, then
    `default`. q=0 excludes a type. Nothing acceptable raises NotAcceptable (406).
    """
    default_type = parse_content_type(default)
    if default_type not in RESPONSE_TYPES:
        raise NotAcceptable(
            f"the default response type {default!r} (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT) is not supported; "
            f"use one of: {', '.join(RESPONSE_TYPES)}"
        )
    if accept_header is None or not accept_header.strip():
        return default_type
    ranges = _parse_accept(accept_header)
    best: tuple | None = None
    for order, media_type in enumerate(RESPONSE_TYPES):
        # (specificity, q, position) of the most specific range naming this type
        found = None
        for position, (media_range, q) in enumerate(ranges):
            specificity = _match(media_range, media_type)
            if specificity >= 0 and (found is None or specificity > found[0]):
                found = (specificity, q, position)
        if found is None or found[1] <= 0.0:
            continue
        specificity, q, position = found
        key = (q, specificity == 2, -position, media_type == default_type, -order)
        if best is None or key > best[0]:
            best = (key, media_type)
    if best is None:
        raise NotAcceptable(
            f"cannot answer with any type in Accept {accept_header!r}; supported response types: "
            f"{', '.join(RESPONSE_TYPES)}"
        )
    return best[1]
