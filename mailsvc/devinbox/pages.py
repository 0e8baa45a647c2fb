"""Browser pages of the dev inbox: list, message, its HTML frame, downloads, delete."""

from __future__ import annotations

from datetime import datetime

from quart import Blueprint, Response, abort, redirect, render_template, request, url_for

from ..pagesafety import IFRAME_SANDBOX, download, framed_html, same_origin, secure_page
from ..services import services
from .mailview import parse, part_data, rewrite_cids
from .store import InboxStore, StoredMessage

__all__ = ["PAGE_SIZE", "bp", "human_size", "when"]

bp = Blueprint("devinbox", __name__)
PAGE_SIZE = 50


def store() -> InboxStore:
    return services().inbox_store()


@bp.app_template_filter("filesize")
def human_size(n: int) -> str:
    """1234 -> '1.2 kB': sizes people read at a glance."""
    size = float(n)
    for unit in ("B", "kB", "MB"):
        if size < 1000 or unit == "MB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


@bp.app_template_filter("when")
def when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _page_number(raw: str | None) -> int:
    try:
        return max(1, int(raw or "1"))
    except ValueError:
        return 1


async def _message_or_404(id: int) -> StoredMessage:
    found = await store().get(id)
    if found is None:
        abort(404)
    return found


@bp.get("/inbox")
async def inbox() -> Response:
    q = request.args.get("q", "").strip()[:200]
    page = _page_number(request.args.get("page"))
    total, rows = await store().search(q, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    deleted = request.args.get("deleted")
    html = await render_template(
        "inbox.html",
        rows=rows,
        q=q,
        page=page,
        pages=pages,
        total=total,
        deleted=deleted if deleted and deleted.isdigit() else None,
    )
    return secure_page(Response(html))


@bp.get("/inbox/<int:id>")
async def show(id: int) -> Response:
    found = await _message_or_404(id)
    view = parse(found.raw)
    raw_text = found.raw[:256_000].decode("utf-8", errors="replace")
    html = await render_template(
        "inbox_message.html",
        m=found.summary,
        view=view,
        raw_text=raw_text,
        raw_truncated=len(found.raw) > 256_000,
        sandbox=IFRAME_SANDBOX,
    )
    return secure_page(Response(html))


@bp.get("/inbox/<int:id>/html")
async def html_frame(id: int) -> Response:
    found = await _message_or_404(id)
    view = parse(found.raw)
    if view.html is None:
        abort(404)
    urls = {p.index: url_for("devinbox.part", id=id, index=p.index) for p in view.parts}
    return framed_html(rewrite_cids(view.html, view.parts, urls))


@bp.get("/inbox/<int:id>/parts/<int:index>")
async def part(id: int, index: int) -> Response:
    found = await _message_or_404(id)
    got = part_data(found.raw, index)
    if got is None:
        abort(404)
    info, data = got
    return download(data, info.filename, info.content_type)


@bp.get("/inbox/<int:id>.eml")
async def eml(id: int) -> Response:
    found = await _message_or_404(id)
    return download(found.raw, f"message-{id}.eml", "message/rfc822")


@bp.post("/inbox/<int:id>/delete")
async def delete(id: int) -> Response:
    if not same_origin(request):
        abort(403)
    deleted = await store().delete(id)
    return redirect(url_for("devinbox.inbox", deleted=int(deleted)), 303)  # type: ignore[return-value]


@bp.post("/inbox/delete")
async def delete_all() -> Response:
    if not same_origin(request):
        abort(403)
    n = await store().delete_all()
    return redirect(url_for("devinbox.inbox", deleted=n), 303)  # type: ignore[return-value]
