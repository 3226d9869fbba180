from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference import ops_api, tokenize_api
from llmsite import views

urlpatterns = [
    path("", views.playground, name="playground"),
    path("v1/", include("inference.urls")),
    # llama-server and vLLM serve these at the root.
    path("tokenize", tokenize_api.TokenizeView.as_view(), name="tokenize"),
    path("detokenize", tokenize_api.DetokenizeView.as_view(), name="detokenize"),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", ops_api.MetricsView.as_view(), name="metrics"),
    path("api/admin/stats", ops_api.StatsView.as_view(), name="ops-stats"),
    path(
        "api/admin/models/<path:model_id>/load",
        ops_api.ModelLoadView.as_view(),
        name="ops-model-load",
    ),
    path(
        "api/admin/models/<path:model_id>/unload",
        ops_api.ModelUnloadView.as_view(),
        name="ops-model-unload",
    ),
    path(
        "api/admin/models/<path:model_id>/reload",
        ops_api.ModelReloadView.as_view(),
        name="ops-model-reload",
    ),
    path("api/", include("accounts.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
]

handler404 = "llmsite.views.not_found"
handler500 = "llmsite.views.server_error"
