from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference import ops_api
from llmsite import views

urlpatterns = [
    path("", views.playground, name="playground"),
    path("v1/", include("inference.urls")),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", ops_api.MetricsView.as_view(), name="metrics"),
    path("api/", include("accounts.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
]

handler404 = "llmsite.views.not_found"
handler500 = "llmsite.views.server_error"
