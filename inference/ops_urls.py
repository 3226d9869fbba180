"""Routes mounted at the site root: readiness, metrics, model loading (operators),
and tokenize/detokenize (where llama-server and vLLM serve them)."""

from django.urls import path

from inference import ops_api, tokenize_api

urlpatterns = [
    path("tokenize", tokenize_api.TokenizeView.as_view(), name="tokenize"),
    path("detokenize", tokenize_api.DetokenizeView.as_view(), name="detokenize"),
    path("ready", ops_api.ready, name="ready"),
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
]
