from django.urls import path

from inference.consumers import ChatConsumer

# Tokens authenticate WebSockets (never cookies), so there is no cross-site
# request to guard against with an Origin check; non-browser clients send none.
websocket_urlpatterns = [
    path("v1/realtime/chat", ChatConsumer.as_asgi()),
]
