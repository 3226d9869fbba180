"""An APIView whose handlers are coroutines.

DRF's own dispatch is synchronous; under ASGI Django would then run every
view in one shared thread, so a request waiting on the model would block
all others. Here authentication and permissions still run DRF's sync code
(in a worker thread, as they touch the database) while the handler awaits
the engine on the event loop.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from rest_framework.views import APIView

from llmsite.db import pooled


class AsyncAPIView(APIView):
    view_is_async = True

    # DRF types dispatch as sync; Django calls an async view's dispatch and awaits it.
    async def dispatch(self, request, *args, **kwargs):  # type: ignore[override]
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(pooled(self.initial))(request, *args, **kwargs)
            if request.method.lower() in self.http_method_names:
                handler = getattr(self, request.method.lower(), self.http_method_not_allowed)
            else:
                handler = self.http_method_not_allowed
            response = handler(request, *args, **kwargs)
            if hasattr(response, "__await__"):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response
