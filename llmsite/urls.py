"""The root URLconf. Apps are mounted by dotted path: this base package imports none."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from llmsite import views

urlpatterns = [
    path("", views.playground, name="playground"),
    path("v1/", include("inference.urls")),
    path("health", views.health, name="health"),
    path("", include("inference.ops_urls")),
    path("api/", include("accounts.urls")),
    path("api/", include("billing.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    # Throttled like /api/auth/token/; ahead of admin.site.urls, which has the same path.
    path("admin/", include("accounts.admin_urls")),
    path("admin/", admin.site.urls),
]

handler404 = "llmsite.views.not_found"
handler500 = "llmsite.views.server_error"
