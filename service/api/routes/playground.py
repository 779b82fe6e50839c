"""The playground at `/`: a page that builds a request from a preset and toggles, runs it and
shows the verdict, the plot and a row per layer. Its script and style are static files
under /static/playground; it calls only this origin's API."""

from fastapi import APIRouter
from starlette.responses import FileResponse

from service.api.docs import STATIC_DIR

PAGE = STATIC_DIR / "playground" / "index.html"

# Only this origin: no other host can be reached from the page, even by a bug; the plots are
# shown from blob: URLs of the SVG the page fetched.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(
        PAGE, media_type="text/html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
    )
